"""Checkpoint formats: official .ckpt/.pt, own safetensors format, real-size manifests, bad files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from clip4str.checkpoints import (
    config_from_official,
    load_model,
    load_state_dict_strict,
    read_checkpoint,
    save_model,
)
from clip4str.config import ModelConfig
from clip4str.errors import CheckpointError
from clip4str.model.clip4str import CLIP4STR


@pytest.fixture(scope="module")
def golden_sd(golden_dir):
    return torch.load(golden_dir / "clip4str_tiny.ckpt", weights_only=True)["state_dict"]


def assert_same_weights(model: CLIP4STR, state_dict: dict) -> None:
    own = model.state_dict()
    assert set(own) == set(state_dict)
    for key, value in state_dict.items():
        assert torch.equal(own[key], value.float()), key


def test_lightning_ckpt_loads_with_config_from_hyper_parameters(golden_dir, golden_sd):
    model = load_model(golden_dir / "clip4str_tiny.ckpt")
    cfg = model.config
    assert cfg.decoder.num_heads == 4 and cfg.decoder.depth == 1
    assert cfg.clip.vision.heads == 2 and cfg.clip.text.heads == 1 and cfg.clip.activation == "quick_gelu"
    assert cfg.clip.embed_dim == 32 and cfg.max_label_length == 25 and cfg.caption_length == 16
    assert len(cfg.charset_train) == 94 and cfg.preprocess.mean == (0.5, 0.5, 0.5)
    assert not model.training
    assert_same_weights(model, golden_sd)


def test_plain_pt_state_dict_loads_with_an_override_for_heads(golden_dir, golden_sd):
    # The .pt holds no hyper-parameters: the released models' 8 decoder heads are the default, so the tiny
    # model (4 heads) needs the override the official loader also needs (dec_num_heads=4).
    model = load_model(golden_dir / "clip4str_tiny.pt", overrides={"decoder.num_heads": 4})
    assert model.config.decoder.num_heads == 4
    assert_same_weights(model, golden_sd)  # fp16 values are exactly representable
    default = load_model(golden_dir / "clip4str_tiny.pt")
    assert default.config.decoder.num_heads == 8
    # As the official loader for .pt files (configs/main.yaml): captions restricted to 36 lowercase chars.
    assert default.config.charset_test == "0123456789abcdefghijklmnopqrstuvwxyz"


def test_wrapped_state_dict_pt_loads(golden_dir, golden_sd, tmp_path):
    path = tmp_path / "clip4str_large_3c9d881b88.pt"
    torch.save({"state_dict": golden_sd}, path)
    model = load_model(path, overrides=["decoder.num_heads=4"])
    assert_same_weights(model, golden_sd)


def test_format_is_told_from_content_not_name(golden_dir, golden_sd, tmp_path):
    misleading = tmp_path / "weights.safetensors"
    shutil.copy(golden_dir / "clip4str_tiny.ckpt", misleading)
    assert_same_weights(load_model(misleading), golden_sd)


def test_own_format_round_trip(golden_dir, tmp_path):
    model = load_model(golden_dir / "clip4str_tiny.ckpt", overrides={"decoding.refine_iters": 2})
    out = save_model(model, tmp_path / "model")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    again = load_model(out)
    assert again.config == model.config and again.config.decoding.refine_iters == 2
    assert_same_weights(again, model.state_dict())
    # The safetensors file alone describes itself.
    alone = tmp_path / "elsewhere.safetensors"
    shutil.copy(out / "model.safetensors", alone)
    assert load_model(alone).config == model.config
    assert json.loads((out / "config.json").read_text())["decoder"]["num_heads"] == 4


def test_omegaconf_like_hyper_parameters_are_read_without_running_code(
    golden_dir, golden_sd, tmp_path, capfd
):
    """A Lightning file whose hyper-parameters are pickled objects loads; their classes are never imported."""
    ckpt = torch.load(golden_dir / "clip4str_tiny.ckpt", weights_only=True)

    class Sneaky:  # pickled by reference: loading must not import or call it
        def __reduce__(self):
            return (print, ("code ran",))

    ckpt["callbacks"] = {"x": Sneaky()}
    path = tmp_path / "objects.ckpt"
    torch.save(ckpt, path)
    sd, hparams, config = read_checkpoint(path)
    assert hparams["dec_num_heads"] == 4 and config is None
    assert set(sd) == set(golden_sd)
    assert "code ran" not in capfd.readouterr().out


@pytest.mark.parametrize(
    "manifest", ["ViT-B-16_openai", "ViT-B-32_openai", "ViT-L-14_openai", "OpenCLIP-ViT-H-14"]
)
def test_real_size_manifests_build_and_load(golden_dir, manifest):
    """Every official real-size key set maps onto our model with the same shapes and trainable flags."""
    m = json.loads((golden_dir / "manifests" / f"{manifest}.json").read_text())
    entries = m["state_dict"]
    shapes = {k: torch.empty(v["shape"], device="meta") for k, v in entries.items()}
    cfg = config_from_official(shapes, None)
    inferred = m["inferred_by_build_model"]
    assert cfg.clip.vision.heads == inferred["vision_heads"]
    assert cfg.clip.text.heads == inferred["text_heads"]
    assert cfg.clip.vision.layers == inferred["vision_layers"]
    assert cfg.clip.embed_dim == m["decoder_dim"]
    with torch.device("meta"):
        model = CLIP4STR(cfg)
    own = model.state_dict()
    assert {k: list(v.shape) for k, v in own.items()} == {k: v["shape"] for k, v in entries.items()}
    trainable = {k: p.requires_grad for k, p in model.named_parameters()}
    assert trainable == {k: v["requires_grad"] for k, v in entries.items()}
    assert sum(p.numel() for p in model.parameters()) == m["num_params_total"]


# ------------------------------------------------------------------------------------------ bad files
def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.ckpt")


def test_truncated_file(golden_dir, tmp_path):
    data = (golden_dir / "clip4str_tiny.ckpt").read_bytes()
    path = tmp_path / "cut.ckpt"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="cut.ckpt"):
        load_model(path)


def test_truncated_safetensors(golden_dir, tmp_path):
    model = load_model(golden_dir / "clip4str_tiny.ckpt")
    out = save_model(model, tmp_path / "m")
    blob = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(blob[:-1000])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(out)


@pytest.mark.parametrize("content", [b"", b"hello, I am text\n", b"\x89PNG\r\n\x1a\n" + b"\0" * 64])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_model(path)


def test_wrong_keys_and_shapes_are_named(golden_sd, tmp_path):
    sd = dict(golden_sd)
    sd.pop("cross_decoder.norm.bias")
    sd["visual_decoder.extra"] = torch.zeros(1)
    path = tmp_path / "keys.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_model(path, overrides={"decoder.num_heads": 4})
    assert "cross_decoder.norm.bias" in str(err.value) and "visual_decoder.extra" in str(err.value)

    cfg = config_from_official(golden_sd, {"dec_num_heads": 4})
    model = CLIP4STR(cfg)
    bad = dict(golden_sd)
    bad["cross_decoder.layers.0.linear1.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError, match=r"cross_decoder\.layers\.0\.linear1\.bias.*\(7,\)"):
        load_state_dict_strict(model, bad)


def test_bare_clip_file_is_not_a_clip4str_checkpoint(golden_dir):
    with pytest.raises(CheckpointError, match="visual_decoder"):
        load_model(golden_dir / "tiny_clip_state_dict.pt")


def test_torchscript_archive_is_rejected_without_running_it(golden_dir):
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_model(golden_dir / "tiny_clip_jit.pt")


def test_head_size_without_charset_gives_a_clear_error(golden_sd):
    sd = dict(golden_sd)
    for branch in ("visual_decoder", "cross_decoder"):
        sd[f"{branch}.head.weight"] = torch.zeros(50, 32)
    with pytest.raises(CheckpointError, match="50 classes"):
        config_from_official(sd, None)


def test_bad_override_names_the_key(golden_dir):
    with pytest.raises(CheckpointError, match="decoder.heads"):
        load_model(golden_dir / "clip4str_tiny.ckpt", overrides=["decoder.heads=4"])


def test_config_json_round_trip_and_errors():
    cfg = ModelConfig()
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown config key"):
        ModelConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError, match="decoder.depth"):
        ModelConfig.from_dict({"decoder": {"depth": "two"}})
