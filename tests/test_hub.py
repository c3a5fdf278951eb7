"""Release names, downloads, cache and offline behaviour (hub.py); presets; hubconf; `clip4str models`.

No test touches the network: every test runs with an empty temporary Hugging Face cache, and the two
download functions are replaced by fakes that fail unless a test installs its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import urllib.error
import warnings
from pathlib import Path

import huggingface_hub
import pytest
import torch
from conftest import PROJECT_ROOT, require_shared

from clip4str import hub
from clip4str.config import ConfigError, DecoderConfig, ModelConfig
from clip4str.errors import ModelNotFoundError
from clip4str.presets import MODEL_PRESETS, PRESET_ALIASES, model_preset

MANIFESTS = {
    "vit-b16": "ViT-B-16_openai.json",
    "vit-b32": "ViT-B-32_openai.json",
    "vit-l14": "ViT-L-14_openai.json",
    "vit-h14": "OpenCLIP-ViT-H-14.json",
    "tiny-golden": "tiny_golden.json",
}


def _manifest(preset: str) -> dict:
    return json.loads(require_shared(f"golden/manifests/{MANIFESTS[preset]}").read_text())


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Empty HF cache under tmp_path, online by default, downloads fail loudly unless a test fakes them."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError(f"test tried to download: {args}")

    monkeypatch.setattr(hub, "_open_url", no_network)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(hub, "_unreachable", lambda host: None)  # the quick reachability check passes
    return home / "hub"


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, length: int | None = None) -> None:
        super().__init__(data)
        self.headers = {} if length is None else {"Content-Length": str(length)}


# ------------------------------------------------------------------------------------------- presets
@pytest.mark.parametrize("preset", list(MANIFESTS))
def test_preset_matches_official_build(preset):
    m = _manifest(preset)
    inferred, official = m["inferred_by_build_model"], m["vl4str_config"]
    cfg = model_preset(preset)
    v, t = cfg.clip.vision, cfg.clip.text
    assert (v.width, v.layers, v.heads, v.patch_size, v.image_size) == (
        inferred["vision_width"],
        inferred["vision_layers"],
        inferred["vision_heads"],
        inferred["vision_patch_size"],
        inferred["image_resolution"],
    )
    assert (t.width, t.layers, t.heads, t.context_length, t.vocab_size) == (
        inferred["text_width"],
        inferred["text_layers"],
        inferred["text_heads"],
        inferred["context_length_positional_embedding"],
        inferred["vocab_size"],
    )
    assert cfg.clip.embed_dim == inferred["embed_dim"] == m["decoder_dim"]
    assert cfg.clip.activation == "quick_gelu"
    assert [v.patch_size] * 2 == official["patch_size"] and [v.image_size] * 2 == official["img_size"]
    assert (cfg.decoder.num_heads, cfg.decoder.depth, cfg.decoder.mlp_ratio) == (
        official["dec_num_heads"],
        official["dec_depth"],
        official["dec_mlp_ratio"],
    )
    assert cfg.max_label_length == official["max_label_length"]
    assert cfg.caption_length == official["context_length"]
    assert cfg.perm_num == official["perm_num"]


@pytest.mark.parametrize("preset", list(MANIFESTS))
def test_preset_builds_the_official_state_dict(preset):
    """Every key, shape and parameter count of the official VL4STR (built on the meta device: no memory)."""
    from clip4str.clip.model import CLIP
    from clip4str.model.clip4str import CLIP4STR

    m = _manifest(preset)
    cfg = model_preset(preset)
    with torch.device("meta"):
        clip = CLIP(cfg.clip)
        model = CLIP4STR(cfg)
    assert {k: list(v.shape) for k, v in clip.state_dict().items()} == m["clip_state_dict_shapes"]
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == {
        k: v["shape"] for k, v in m["state_dict"].items()
    }
    assert sum(p.numel() for p in model.parameters()) == m["num_params_total"]
    if preset != "tiny-golden":  # the golden tiny model was built with a different freeze config
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable == m["num_params_trainable"]


def test_tiny_preset_runs_a_forward_pass(monkeypatch, bpe_path):
    from clip4str.model.clip4str import CLIP4STR

    monkeypatch.setenv("CLIP4STR_BPE_PATH", str(bpe_path))  # the cross branch tokenizes captions

    cfg = model_preset("tiny")
    assert cfg.clip.vision.num_tokens == 50
    model = CLIP4STR(cfg).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        memory = model.encode(torch.randn(2, 3, 224, 224))
        logits = model(torch.randn(2, 3, 224, 224), max_length=5)
    assert memory.shape == (2, 50, 32)
    assert logits.shape[0] == 2 and logits.shape[-1] == len(cfg.charset_train) + 1
    assert torch.isfinite(logits).all()


def test_preset_names_aliases_and_overrides():
    assert model_preset("ViT-B/16") == model_preset("vit_b16") == model_preset("vl4str")
    assert model_preset("vl4str-large").clip.vision.patch_size == 14
    assert set(PRESET_ALIASES.values()) <= set(MODEL_PRESETS)
    cfg = model_preset("tiny", decoder={"num_heads": 4}, charset_train="0123456789")
    assert cfg.decoder.num_heads == 4 and cfg.decoder.depth == 1  # merged, not replaced
    assert cfg.charset_train == "0123456789"
    cfg = model_preset("vit-b16", clip={"vision": {"image_size": 384}}, decoder=DecoderConfig(depth=2))
    assert cfg.clip.vision.image_size == 384 and cfg.clip.vision.width == 768
    assert cfg.decoder.depth == 2
    assert isinstance(cfg, ModelConfig) and model_preset("vit-b16").clip.vision.image_size == 224


def test_preset_errors_name_the_problem():
    with pytest.raises(ConfigError, match=r"unknown model preset 'vit-b61'.*Did you mean 'vit-b16'.*tiny"):
        model_preset("vit-b61")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\): decoder\.heads.*num_heads"):
        model_preset("tiny", decoder={"heads": 3})
    with pytest.raises(ConfigError, match=r"num_heads=5 does not divide"):
        model_preset("tiny", decoder={"num_heads": 5})
    with pytest.raises(ConfigError, match=r"decoder\.depth: expected an integer"):
        model_preset("tiny", decoder={"depth": "two"})


# ------------------------------------------------------------------------------------------ registry
def test_every_release_builds_from_a_preset_of_its_backbone():
    files = [r for r in hub.list_models(include_aliases=False) if r.source != "package"]
    assert len({r.filename for r in files}) == len(files)  # a file name finds one release
    for rel in files:
        assert rel.filename in rel.url and rel.name_hash in rel.filename
        assert MODEL_PRESETS[rel.preset]().clip.vision.patch_size == int(rel.backbone.split("/")[1])


def test_friendly_names_pick_the_best_release_of_each_size():
    by_backbone: dict[str, list[hub.Release]] = {}
    for rel in hub.list_models(include_aliases=False):
        if rel.source == "package":
            continue
        by_backbone.setdefault(rel.backbone, []).append(rel)
    for friendly, backbone in [
        ("clip4str-base", "ViT-B/16"),
        ("clip4str-large", "ViT-L/14"),
        ("clip4str-huge", "ViT-H/14"),
    ]:
        best = max(by_backbone[backbone], key=lambda r: r.weighted_accuracy())
        alias = hub.RELEASES[friendly]
        assert alias.alias_of == best.name and alias.filename == best.filename
    assert (
        hub.DEFAULT_MODEL == "clip4str-small" and hub.cached_path(hub.SMALL_MODEL) is not None
    )  # reads offline


def test_the_small_model_is_listed_only_when_its_weights_are_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "shipped_model_dir", lambda name: tmp_path / "weights" / name)
    assert "clip4str-small" not in [r.name for r in hub.list_models()]
    with pytest.raises(ModelNotFoundError, match=r"clip4str train --config small"):
        hub.resolve_model("clip4str-small")
    folder = tmp_path / "weights" / "clip4str-small"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(hub, "shipped_model_dir", lambda name: tmp_path / "weights" / name)
    assert hub.list_models()[0].name == "clip4str-small"
    assert hub.resolve_model("clip4str-small") == folder


@pytest.mark.parametrize(
    "spelling",
    [
        "clip4str-base16-openai-real",
        "CLIP4STR_BASE16_OPENAI_REAL",
        "clip4str_base16x16_d70bde1f2d.ckpt",
        "clip4str_base16x16_d70bde1f2d",
        " clip4str-base16x16-d70bde1f2d ",
    ],
)
def test_release_aliases(spelling):
    assert hub.get_release(spelling) is hub.RELEASES["clip4str-base16-openai-real"]


# ------------------------------------------------------------------------------------ paths and names
def test_existing_paths_are_returned_as_is(tmp_path):
    ckpt = tmp_path / "my.ckpt"
    ckpt.write_bytes(b"x")
    assert hub.resolve_model(ckpt) == ckpt
    assert hub.resolve_model(str(ckpt)) == ckpt
    model_dir = tmp_path / "own"
    model_dir.mkdir()
    with pytest.raises(ModelNotFoundError, match=r"own is not a clip4str model: expected config\.json"):
        hub.resolve_model(model_dir)
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"x")
    assert hub.resolve_model(model_dir) == model_dir


def test_existing_file_named_like_a_release_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("clip4str_base_6e9fe947ac.pt").write_bytes(b"local copy")
    assert hub.resolve_model("clip4str_base_6e9fe947ac.pt") == Path("clip4str_base_6e9fe947ac.pt")


def test_missing_paths_and_unknown_names(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"model file not found: .*nothere\.ckpt"):
        hub.resolve_model(tmp_path / "nothere.ckpt")
    with pytest.raises(ModelNotFoundError, match=r"pass its name 'clip4str-base16-datacomp-rbu'"):
        hub.resolve_model(tmp_path / "clip4str_base_6e9fe947ac.pt")
    with pytest.raises(ModelNotFoundError) as info:
        hub.resolve_model("clip4str-bsae")
    message = str(info.value)
    assert "Did you mean 'clip4str-base'" in message
    assert all(r.name in message for r in hub.list_models())
    assert "clip4str models" in message
    with pytest.raises(ModelNotFoundError, match=r"clip4str-large14-openai-real"):
        hub.resolve_model("clip4str-large14-openai-rael")


# ------------------------------------------------------------------------------------ offline and cache
@pytest.mark.parametrize(
    "name", ["clip4str-base", "clip4str-base16-openai-synth", "clip4str-large14-openai-real"]
)
def test_offline_without_cache_gives_one_clear_message(name, monkeypatch, _isolated_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rel = hub.RELEASES[name]
    with pytest.raises(ModelNotFoundError) as info:
        hub.resolve_model(name)
    message = str(info.value)
    assert "\n" not in message
    assert "HF_HUB_OFFLINE=1" in message
    assert rel.url in message  # what to download, from where
    assert str(_isolated_cache / "clip4str" / rel.filename) in message  # where to put it
    assert f"clip4str read --model /path/to/{rel.filename}" in message  # how to pass a path
    assert f"clip4str.load('/path/to/{rel.filename}')" in message
    # offline=True gives the same answer without the environment variable
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ModelNotFoundError, match=r"offline=True"):
        hub.resolve_model(name, offline=True)


def test_file_put_where_the_message_says_is_found_offline(monkeypatch, _isolated_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("clip4str-base", "clip4str-large14-openai-synth"):
        rel = hub.RELEASES[name]
        target = _isolated_cache / "clip4str" / rel.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"weights")
        assert hub.resolve_model(name) == target
        assert hub.cached_path(rel) == target


def _fake_hf_cache(root: Path, rel: hub.Release, blob_name: str, data: bytes = b"pt") -> Path:
    """The layout huggingface_hub writes: blobs/<etag>, snapshots/<commit>/<file> -> blob, refs/main."""
    repo = root / ("models--" + rel.location.replace("/", "--"))
    commit = "a" * 40
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / blob_name).write_bytes(data)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit / rel.filename
    snapshot.parent.mkdir(parents=True)
    os.symlink(os.path.relpath(repo / "blobs" / blob_name, snapshot.parent), snapshot)
    return snapshot


def test_hugging_face_cache_entry_is_used_offline(monkeypatch, _isolated_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rel = hub.RELEASES["clip4str-base"]
    snapshot = _fake_hf_cache(_isolated_cache, rel, rel.sha256)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hub.resolve_model("clip4str-base") == snapshot
    assert hub.resolve_model("clip4str_base_6e9fe947ac.pt", offline=True) == snapshot


def test_replaced_hugging_face_file_warns(monkeypatch, _isolated_cache):
    rel = hub.RELEASES["clip4str-huge14-laion-rbu"]
    snapshot = _fake_hf_cache(_isolated_cache, rel, "0" * 64)
    with pytest.warns(UserWarning, match=r"replaced upstream"):
        assert hub.resolve_model(rel.name, offline=True) == snapshot


# ------------------------------------------------------------------------------------------ downloads
def test_hugging_face_download_goes_through_hf_hub_download(monkeypatch, _isolated_cache):
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs))
        path = Path(kwargs["cache_dir"]) / "downloaded" / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"pt")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    out = hub.resolve_model("clip4str-large", progress=False)
    assert out.read_bytes() == b"pt" and out.name == "clip4str_large_3c9d881b88.pt"
    (repo_id, filename, kwargs), *_ = calls
    assert (repo_id, filename) == ("mzhaoshuai/CLIP4STR", "clip4str_large_3c9d881b88.pt")
    assert Path(kwargs["cache_dir"]) == _isolated_cache
    assert kwargs["tqdm_class"](total=1).disable  # progress=False silences the hub's bar


def test_hugging_face_download_failure_is_a_clear_error(monkeypatch):
    def failing(*args, **kwargs):
        raise OSError("Connection refused")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", failing)
    with pytest.raises(ModelNotFoundError, match=r"download failed: OSError: Connection refused") as info:
        hub.resolve_model("clip4str-huge")
    assert "https://huggingface.co/mzhaoshuai/CLIP4STR/resolve/main/clip4str_huge_3e942729b1.pt" in str(
        info.value
    )
    assert isinstance(info.value.__cause__, OSError)


def test_url_download_once_into_the_cache(monkeypatch, _isolated_cache, capsys):
    data = os.urandom(3 << 20)  # three read chunks
    opened = []

    def fake_open(url, timeout=30.0):
        opened.append(url)
        return FakeResponse(data, len(data))

    monkeypatch.setattr(hub, "_open_url", fake_open)
    rel = hub.RELEASES["clip4str-base16-openai-real"]
    with warnings.catch_warnings():
        # The name's hash is not the file's sha256 (docs/models.md): a mismatch is not warned about.
        warnings.simplefilter("error")
        out = hub.resolve_model(rel.name, progress=True)
    assert out == _isolated_cache / "clip4str" / rel.filename
    assert out.read_bytes() == data
    assert opened == [rel.url]
    assert rel.filename in capsys.readouterr().err  # tqdm progress bar on stderr
    assert [p.name for p in out.parent.iterdir()] == [rel.filename]  # no temp file left
    # second time: from the cache, no network, no warning; also offline
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hub.resolve_model(rel.name) == out
        assert hub.resolve_model(rel.filename, offline=True) == out
    assert len(opened) == 1


def test_url_download_checks_the_known_sha256(monkeypatch, _isolated_cache):
    data = b"checkpoint bytes"
    sha = hashlib.sha256(data).hexdigest()
    monkeypatch.setattr(hub, "_open_url", lambda url, timeout=30.0: FakeResponse(data, len(data)))
    base = hub.RELEASES["clip4str-large14-openai-synth"]
    dest = _isolated_cache / "clip4str" / base.filename
    matching = dataclasses.replace(base, name_hash=sha[:10])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hub._download_url(matching, dest, progress=False).read_bytes() == data
    dest.unlink()
    wrong = dataclasses.replace(base, sha256="f" * 64)
    with pytest.raises(OSError, match=r"sha256 mismatch .* expected f{64}, got " + sha):
        hub._download_url(wrong, dest, progress=False)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_truncated_download_keeps_nothing(monkeypatch, _isolated_cache):
    monkeypatch.setattr(hub, "_open_url", lambda url, timeout=30.0: FakeResponse(b"short", 1000))
    with pytest.raises(ModelNotFoundError, match=r"incomplete download .* got 5 of 1000 bytes"):
        hub.resolve_model("clip4str-base16-openai-synth", progress=False)
    assert list((_isolated_cache / "clip4str").iterdir()) == []


def test_network_error_says_what_to_download(monkeypatch, _isolated_cache):
    def unreachable(url, timeout=30.0):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(hub, "_open_url", unreachable)
    rel = hub.RELEASES["clip4str-large14-openai-real"]
    with pytest.raises(ModelNotFoundError) as info:
        hub.resolve_model(rel.name, progress=False)
    message = str(info.value)
    assert (
        "download failed: URLError" in message
        and rel.url in message
        and "zenodo.org/records/8369439" in message
    )
    assert "clip4str read --model" in message
    assert isinstance(info.value.__cause__, urllib.error.URLError)
    assert list((_isolated_cache / "clip4str").iterdir()) == []


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hubcache"))
    assert hub.cache_root() == tmp_path / "hubcache"
    assert hub.cache_root(tmp_path / "mine") == tmp_path / "mine"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_root() == tmp_path / "xdg" / "huggingface" / "hub"
    for value, expected in [("1", True), ("TRUE", True), ("on", True), ("0", False), ("", False)]:
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert hub.is_offline() is expected


# ------------------------------------------------------------------------------------------------ CLI
def test_models_command_lists_and_marks_cached(monkeypatch, capsys, _isolated_cache):
    from clip4str.cli import main

    rel = hub.RELEASES["clip4str-base16-openai-synth"]
    (_isolated_cache / "clip4str").mkdir(parents=True)
    (_isolated_cache / "clip4str" / rel.filename).write_bytes(b"x")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("clip4str-")}
    assert set(lines) == {r.name for r in hub.list_models()}
    assert re.search(r"\byes\b", lines[rel.name]) and re.search(r"\bno\b", lines["clip4str-base"])
    assert "(default)" in lines[hub.DEFAULT_MODEL] and "github" in lines[rel.name]
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    cached = {r["name"]: r["path"] for r in rows}
    assert cached[rel.name] == str(_isolated_cache / "clip4str" / rel.filename)


def test_models_download_command(monkeypatch, capsys, tmp_path):
    from clip4str.cli import main

    seen = []

    def fake_resolve(name, cache_dir=None, offline=None, progress=True):
        seen.append((name, cache_dir, progress))
        return tmp_path / f"{name}.pt"

    monkeypatch.setattr(hub, "resolve_model", fake_resolve)
    assert main(["models", "--download", "clip4str-base", "--download", "clip4str-huge", "--quiet"]) == 0
    assert capsys.readouterr().out.split() == [
        str(tmp_path / "clip4str-base.pt"),
        str(tmp_path / "clip4str-huge.pt"),
    ]
    assert seen == [("clip4str-base", None, False), ("clip4str-huge", None, False)]


def test_models_download_offline_is_one_error_line(monkeypatch, capsys):
    from clip4str.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models", "--download", "clip4str-base"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("clip4str models: error: model 'clip4str-base' needs the file") and "\n" not in err


# ------------------------------------------------------------------------------------------- hubconf
def _hub_load(entry: str, *args, **kwargs):
    return torch.hub.load(str(PROJECT_ROOT), entry, *args, source="local", **kwargs)


def test_hubconf_has_one_entry_per_name():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf_under_test", PROJECT_ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entries = {n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")}
    assert entries == {n.replace("-", "_") for n in hub.RELEASES} | {"recognizer"}
    assert all(importlib.util.find_spec(dep) for dep in module.dependencies)


@pytest.mark.parametrize("name", [n for n, r in hub.RELEASES.items() if r.source != "package"])
def test_hubconf_untrained_models_have_the_official_architecture(name):
    rel = hub.RELEASES[name]
    m = _manifest(rel.preset)
    with torch.device("meta"):
        model = _hub_load(name.replace("-", "_"), pretrained=False)
    assert type(model).__name__ == "CLIP4STR"
    assert sum(p.numel() for p in model.parameters()) == m["num_params_total"]


def test_hubconf_untrained_model_takes_config_overrides():
    model = _hub_load(
        "clip4str_base", pretrained=False, clip={"vision": {"layers": 1}, "text": {"layers": 1}}
    )
    assert len(model.clip_model.visual.transformer.resblocks) == 1
    assert model.config.clip.vision.width == 768


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    from clip4str.checkpoints import save_model
    from clip4str.model.clip4str import CLIP4STR

    torch.manual_seed(0)
    return save_model(CLIP4STR(model_preset("tiny")), tmp_path / "tiny_model")


def test_hubconf_pretrained_resolves_and_loads(monkeypatch, tiny_checkpoint):
    from safetensors.torch import load_file

    seen = []

    def fake_resolve(name, cache_dir=None, offline=None, progress=True):
        seen.append((name, cache_dir, progress))
        return tiny_checkpoint

    monkeypatch.setattr(hub, "resolve_model", fake_resolve)
    model = _hub_load("clip4str_huge", overrides={"decoding.refine_iters": 2}, cache_dir="/somewhere")
    assert seen == [("clip4str-huge", "/somewhere", True)]
    assert not model.training and model.config.decoding.refine_iters == 2
    saved = load_file(str(tiny_checkpoint / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"overrides": {"decoding.refine_iters": 2, "decoding.mode": "nar"}},
        {"overrides": ["decoding.refine_iters=2", "decoding.mode=nar"]},
        {"decoding": {"refine_iters": 2, "mode": "nar"}},
    ],
)
def test_hubconf_passes_config_overrides_in_every_form(monkeypatch, tiny_checkpoint, kwargs):
    monkeypatch.setattr(hub, "resolve_model", lambda name, *a, **k: tiny_checkpoint)
    model = _hub_load("clip4str_base", **kwargs)
    assert (model.config.decoding.mode, model.config.decoding.refine_iters) == ("nar", 2)


def test_hubconf_pretrained_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"clip4str_huge_5eef9f86e2\.pt.*clip4str read --model"):
        _hub_load("clip4str_huge14_laion_rbu")


def test_hubconf_recognizer_entry(monkeypatch, tiny_checkpoint, bpe_path):
    monkeypatch.setenv("CLIP4STR_BPE_PATH", str(bpe_path))
    monkeypatch.setattr(hub, "resolve_model", lambda name, *a, **k: tiny_checkpoint)
    reader = _hub_load("recognizer", "clip4str-base")
    image = (torch.rand(32, 100, 3) * 255).to(torch.uint8).numpy()
    predictions = reader.read([image])
    assert len(predictions) == 1 and isinstance(predictions[0].text, str)
