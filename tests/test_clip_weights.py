"""CLIP weight files: every supported format, told apart by content, and clear errors for everything else."""

from __future__ import annotations

import shutil
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from clip4str.clip.model import CLIP, infer_clip_config, round_like_official_fp16
from clip4str.clip.weights import load_clip_model, load_clip_state_dict, read_tensor_file, sniff_format
from clip4str.config import CLIPConfig, TextConfig, VisionConfig
from clip4str.errors import CheckpointError


@pytest.fixture(scope="module")
def reference(golden_dir) -> dict[str, torch.Tensor]:
    sd = torch.load(golden_dir / "tiny_clip_state_dict.pt", weights_only=True)
    assert len(sd) == 62
    return sd


def assert_same_state_dict(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert torch.equal(got[key], want[key]), key


def small_fp32_state_dict() -> dict[str, torch.Tensor]:
    cfg = CLIPConfig(
        embed_dim=16,
        vision=VisionConfig(width=64, layers=1, heads=1, patch_size=8, image_size=32),
        text=TextConfig(width=64, layers=1, heads=1, context_length=12, vocab_size=50),
    )
    torch.manual_seed(0)
    model = CLIP(cfg)
    return {k: v + 1e-4 * torch.rand_like(v) for k, v in model.state_dict().items()}  # not fp16-exact


def test_torchscript_archive(golden_dir, reference):
    path = golden_dir / "tiny_clip_jit.pt"
    assert sniff_format(path) == "torchscript"
    raw = read_tensor_file(path)
    assert {"input_resolution", "context_length", "vocab_size"} <= raw.keys()
    assert_same_state_dict(load_clip_state_dict(path), reference)


def test_plain_state_dict_file(golden_dir, reference):
    path = golden_dir / "tiny_clip_state_dict.pt"
    assert sniff_format(path) == "pickle"
    assert_same_state_dict(load_clip_state_dict(path), reference)


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: {"model": sd}, id="openai-model"),
        pytest.param(lambda sd: {"state_dict": sd, "epoch": 3}, id="state_dict"),
        pytest.param(lambda sd: {"module." + k: v for k, v in sd.items()}, id="module-prefix"),
        pytest.param(lambda sd: {**sd, "attn_mask": torch.zeros(77, 77)}, id="attn-mask-extra"),
        pytest.param(lambda sd: {**sd, "input_resolution": torch.tensor(224)}, id="int-extra"),
    ],
)
def test_wrapped_torch_save_files(reference, tmp_path, wrap):
    path = tmp_path / "weights.bin"
    torch.save(wrap(reference), path)
    assert sniff_format(path) == "pickle"
    assert_same_state_dict(load_clip_state_dict(path), reference)


def test_legacy_pickle_and_safetensors(reference, tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": reference}, legacy, _use_new_zipfile_serialization=False)
    assert sniff_format(legacy) == "pickle"
    assert_same_state_dict(load_clip_state_dict(legacy), reference)
    st = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.items()}, str(st))
    assert sniff_format(st) == "safetensors"
    assert_same_state_dict(load_clip_state_dict(st), reference)


def test_misleading_extensions_are_ignored(golden_dir, reference, tmp_path):
    jit_as_st = tmp_path / "clip.safetensors"
    shutil.copy(golden_dir / "tiny_clip_jit.pt", jit_as_st)
    st_as_pt = tmp_path / "ViT-B-16.pt"
    save_file({k: v.contiguous() for k, v in reference.items()}, str(st_as_pt))
    pickle_as_json = tmp_path / "config.json"
    shutil.copy(golden_dir / "tiny_clip_state_dict.pt", pickle_as_json)
    pickle_as_st = tmp_path / "model.safetensors"
    shutil.copy(golden_dir / "tiny_clip_state_dict.pt", pickle_as_st)
    paths = (jit_as_st, st_as_pt, pickle_as_json, pickle_as_st)
    assert [sniff_format(p) for p in paths] == ["torchscript", "safetensors", "pickle", "pickle"]
    for path in paths:
        assert_same_state_dict(load_clip_state_dict(path), reference)


@pytest.mark.parametrize("source", ["tiny_clip_jit.pt", "tiny_clip_state_dict.pt", "safetensors", "legacy"])
def test_truncated_files_raise_naming_the_file(golden_dir, reference, tmp_path, source):
    if source == "safetensors":
        full = tmp_path / "full.safetensors"
        save_file({k: v.contiguous() for k, v in reference.items()}, str(full))
    elif source == "legacy":
        full = tmp_path / "full.pt"
        torch.save(reference, full, _use_new_zipfile_serialization=False)
    else:
        full = golden_dir / source
    data = full.read_bytes()
    for keep in (len(data) // 2, len(data) - 100):
        cut = tmp_path / f"cut_{keep}.pt"
        cut.write_bytes(data[:keep])
        with pytest.raises(CheckpointError, match=f"cut_{keep}.pt") as info:
            load_clip_state_dict(cut)
        assert any(word in str(info.value) for word in ("truncated", "damaged", "cannot read")), str(
            info.value
        )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "PNG image"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "Git LFS pointer"),
        (b"<!DOCTYPE html><html><body>404</body></html>", "HTML page"),
        (b"just some notes\n", "text file"),
        (bytes(range(200, 256)) * 4, "no known format"),
    ],
)
def test_not_a_weights_file(tmp_path, content, expected):
    path = tmp_path / "ViT-B-16.pt"
    path.write_bytes(content)
    assert sniff_format(path) == "unknown"
    with pytest.raises(CheckpointError, match=expected) as info:
        load_clip_state_dict(path)
    assert str(path) in str(info.value)


def test_zip_that_is_not_a_pytorch_file(tmp_path):
    path = tmp_path / "weights.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert sniff_format(path) == "unknown"
    with pytest.raises(CheckpointError, match="zip archive without PyTorch data"):
        load_clip_state_dict(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="nothere.pt.*does not exist"):
        load_clip_state_dict(tmp_path / "nothere.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        sniff_format(tmp_path)


def test_dicts_that_are_not_clip(tmp_path, golden_dir):
    other = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="missing key 'visual.conv1.weight'.*expected keys such as"):
        load_clip_state_dict(other)
    hf = tmp_path / "pytorch_model.bin"
    torch.save({"vision_model.encoder.layers.0.mlp.fc1.weight": torch.zeros(2)}, hf)
    with pytest.raises(CheckpointError, match="Hugging Face transformers"):
        load_clip_state_dict(hf)
    resnet = tmp_path / "RN50.pt"
    torch.save({"visual.layer1.0.conv1.weight": torch.zeros(2)}, resnet)
    with pytest.raises(CheckpointError, match="ResNet"):
        load_clip_state_dict(resnet)
    not_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_dict)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_clip_state_dict(not_dict)


def test_clip4str_checkpoint_is_recognised_and_prefix_extracts_its_clip(golden_dir):
    ckpt = golden_dir / "clip4str_tiny.ckpt"
    with pytest.raises(CheckpointError, match="CLIP4STR checkpoint"):
        load_clip_state_dict(ckpt)
    sd = load_clip_state_dict(ckpt, prefix="clip_model.")
    full = torch.load(ckpt, weights_only=True)["state_dict"]
    assert len(sd) == 62
    assert torch.equal(sd["visual.proj"], full["clip_model.visual.proj"])
    with pytest.raises(CheckpointError, match="prefix 'nope.'"):
        load_clip_state_dict(ckpt, prefix="nope.")


def test_unsafe_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"model": {"visual.proj": Evil()}}, path)
    with pytest.raises(CheckpointError, match="refuses to unpickle") as info:
        load_clip_state_dict(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_non_tensor_entry_is_named(reference, tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({**reference, "visual.note": "hello"}, path)
    with pytest.raises(CheckpointError, match="'visual.note' is a str"):
        load_clip_state_dict(path)


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:DeprecationWarning")
def test_load_clip_model_from_torchscript_matches_the_archive(golden_dir):
    model = load_clip_model(golden_dir / "tiny_clip_jit.pt").eval()
    assert all(
        p.dtype == torch.float32 and p.requires_grad and p.device.type == "cpu" for p in model.parameters()
    )
    jit = torch.jit.load(str(golden_dir / "tiny_clip_jit.pt"), map_location="cpu").float()
    images = torch.load(golden_dir / "inputs" / "inputs.pt", weights_only=True)["images_norm05"][:2]
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_image_tokens(images), jit.encode_image(images), rtol=1e-5, atol=1e-5
        )


def test_load_clip_model_rounds_fp32_files_like_the_original(tmp_path):
    sd = small_fp32_state_dict()
    path = tmp_path / "open_clip_model.safetensors"
    save_file(sd, str(path))
    rounded = load_clip_model(path, head_width=64).state_dict()
    exact = load_clip_model(path, head_width=64, official_fp16_rounding=False).state_dict()
    expected = round_like_official_fp16(sd)
    for key in sd:
        assert torch.equal(rounded[key], expected[key]), key
        assert torch.equal(exact[key], sd[key]), key
    assert not torch.equal(rounded["visual.proj"], sd["visual.proj"])
    assert torch.equal(rounded["ln_final.weight"], sd["ln_final.weight"])
    model = load_clip_model(path, activation="gelu", head_width=32)
    assert model.config.activation == "gelu" and model.config.vision.heads == 2
    assert model.config == infer_clip_config(sd, activation="gelu", head_width=32)
