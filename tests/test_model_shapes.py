"""Rectangular inputs and patches (32x128 images, 4x8 patches) and the convolutional stem: config, model,
checkpoints, training and the fast decoding path."""

from __future__ import annotations

import pytest
import torch

from clip4str.charset import CHARSET_36
from clip4str.checkpoints import load_model, save_model
from clip4str.config import ConfigError, ModelConfig, VisionConfig
from clip4str.model.clip4str import CLIP4STR, DecodeTrace, SpeedOptions
from clip4str.presets import model_preset


def _small(stem: str = "patch") -> CLIP4STR:
    """The shipped model's widths with one layer per tower (fast), on PARSeq's 4x8 patches (a 2D 8x16 grid)."""
    torch.manual_seed(0)
    cfg = model_preset(
        "small",
        charset_train=CHARSET_36,
        max_label_length=8,
        clip={"vision": {"layers": 1, "stem": stem, "patch_size": [4, 8]}, "text": {"layers": 1}},
    )
    return CLIP4STR(cfg).eval()


def test_rectangular_sizes_round_trip_through_json() -> None:
    shipped = model_preset("small").clip.vision
    assert shipped.image_hw == (32, 128) and shipped.patch_hw == (32, 4) and shipped.grid_hw == (1, 32)
    assert shipped.num_tokens == 32 + 1 and shipped.stem == "conv"
    cfg = model_preset("small", clip={"vision": {"patch_size": [4, 8]}})
    vision = cfg.clip.vision
    assert vision.image_hw == (32, 128) and vision.patch_hw == (4, 8) and vision.grid_hw == (8, 16)
    assert vision.num_tokens == 8 * 16 + 1
    again = ModelConfig.from_json(cfg.to_json())
    assert again == cfg and again.clip.vision.image_hw == (32, 128)
    assert VisionConfig(image_size=224, patch_size=16).grid_hw == (14, 14)  # square sizes unchanged


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"image_size": [32, 100], "patch_size": [4, 8]}, "not a multiple of patch_size"),
        ({"image_size": [32, 128, 3]}, "must be an int or [H, W]"),
        ({"patch_size": [4, 0], "image_size": [32, 128]}, "must be >= 1"),
        ({"stem": "resnet"}, "clip.vision.stem must be 'patch' or 'conv'"),
    ],
)
def test_bad_shapes_name_the_value(values, needle) -> None:
    with pytest.raises(ConfigError) as err:
        VisionConfig(**values)
    assert needle in str(err.value)


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_memory_has_one_token_per_patch_and_wrong_sizes_are_named(stem) -> None:
    model = _small(stem)
    with torch.no_grad():
        assert model.encode(torch.rand(2, 3, 32, 128)).shape == (2, 129, 192)
        with pytest.raises(ValueError, match="32x128 images"):
            model.encode(torch.rand(2, 3, 224, 224))


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_fast_decoding_equals_the_plain_computation(stem) -> None:
    model = _small(stem)
    images = torch.rand(3, 3, 32, 128) * 2 - 1
    with torch.no_grad():
        fast = model.decode(images, refine_iters=1)
        model.speed = SpeedOptions(kv_cache=False, reuse_memory_kv=False, reuse_text=False)
        plain = model.decode(images, refine_iters=1)
    assert torch.allclose(fast, plain, atol=1e-5)


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_checkpoint_round_trip_keeps_shapes_and_logits(stem, tmp_path) -> None:
    model = _small(stem)
    images = torch.rand(2, 3, 32, 128)
    loaded = load_model(save_model(model, tmp_path / "m"))
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded.decode(images), model.decode(images))


def test_training_reaches_the_convolutional_stem() -> None:
    model = _small("conv").train()
    loss = model.training_loss(torch.rand(4, 3, 32, 128), ["ab", "cde", "f1", "9z"])
    loss.backward()
    assert torch.isfinite(loss)
    stem_grads = [p.grad for p in model.clip_model.visual.stem.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in stem_grads)


def test_convolutional_stem_needs_power_of_two_patches() -> None:
    with pytest.raises(ValueError, match="power-of-two"):
        CLIP4STR(
            model_preset(
                "small", clip={"vision": {"stem": "conv", "patch_size": [4, 6], "image_size": [32, 126]}}
            )
        )


def test_context_free_loss_term_is_the_non_autoregressive_reading() -> None:
    """The extra training term equals the cross-entropy of both branches' non-autoregressive decoding
    (each position read from [B] and the image alone), added to the unchanged PSM loss."""
    import torch.nn.functional as F

    model = _small()
    images, labels = torch.rand(3, 3, 32, 128), ["ab1", "cde", "z"]
    perms = torch.tensor([[0, 1, 2, 3, 4], [0, 4, 3, 2, 1]])
    with torch.no_grad():
        psm = model.training_loss(images, labels, perms=perms)
        model.config.context_free_loss_weight = 0.5
        both = model.training_loss(images, labels, perms=perms)
        trace = DecodeTrace()
        model.decode(images, mode="nar", refine_iters=0, max_length=3, trace=trace)
    targets = model.tokenizer.encode(labels)[:, 1:]
    pad = model.tokenizer.pad_id
    expected = sum(
        F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad)
        for logits in (trace.visual_initial, trace.cross_initial)
    )
    assert both.item() == pytest.approx(psm.item() + 0.5 * expected.item(), rel=1e-5)


def test_context_free_loss_weight_is_checked_and_off_by_default() -> None:
    assert ModelConfig().context_free_loss_weight == 0.0
    with pytest.raises(ConfigError, match="context_free_loss_weight"):
        ModelConfig(context_free_loss_weight=-1.0)


def test_a_fresh_convolutional_stem_passes_the_image_on_and_positions_start_distinct() -> None:
    """From scratch, the stem's output must vary with the image (PyTorch's default conv init left it nearly
    constant), and every token starts with its own sine-cosine position, the class token with none."""
    from clip4str.clip.model import sincos_positions

    vit = _small("conv").clip_model.visual
    images = torch.rand(2, 3, 32, 128) * 2 - 1
    with torch.no_grad():
        features = vit.stem(images)  # (2, W, rows, cols)
    assert features.std(dim=-1).mean() > 0.05
    table = vit.positional_embedding.detach()
    assert torch.equal(table, sincos_positions(vit.grid_hw, table.shape[1]))
    assert torch.count_nonzero(table[0]) == 0
    distinct = torch.cdist(table[1:], table[1:]) + torch.eye(table.shape[0] - 1)
    assert distinct.min() > 0.1


def test_ctc_training_aid_is_off_by_default_and_trains_a_head_when_on() -> None:
    """``ctc_loss_weight`` > 0 adds a per-column CTC term (a head the official model does not have); it is
    finite even for a label longer than the columns, and its head is saved and loaded with the model."""
    import tempfile

    assert CLIP4STR(model_preset("tiny")).ctc_head is None
    cfg = model_preset(
        "small",
        charset_train=CHARSET_36,
        max_label_length=40,
        ctc_loss_weight=0.5,
        clip={"vision": {"layers": 1, "stem": "conv", "patch_size": [32, 4]}, "text": {"layers": 1}},
    )
    torch.manual_seed(0)
    model = CLIP4STR(cfg).train()
    images, labels = torch.rand(2, 3, 32, 128), ["ab", "x" * 33]  # 33 characters > 32 columns
    perms = torch.arange(35)[None]
    with_ctc = model.training_loss(images, labels, perms=perms)
    with_ctc.backward()
    assert torch.isfinite(with_ctc)
    assert model.ctc_head.weight.grad.abs().sum() > 0
    model.config.ctc_loss_weight = 0.0
    torch.manual_seed(1)
    model.eval()
    without = model.training_loss(images, labels, perms=perms)
    model.config.ctc_loss_weight = 0.5
    assert model.training_loss(images, labels, perms=perms).item() > without.item()
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, tmp)
        loaded = load_model(tmp)
    assert torch.equal(loaded.ctc_head.weight, model.ctc_head.weight)
