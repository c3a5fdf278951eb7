"""Parameter-efficient tuning: CLIP-Adapter, Ladder Side-Tuning, freezing strategies, variants, and the
official str_adapter checkpoint layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip4str.checkpoints import convert_str_adapter, is_str_adapter_state_dict
from clip4str.config import ConfigError
from clip4str.errors import CheckpointError
from clip4str.model.clip4str import CLIP4STR
from clip4str.model.peft import ClipAdapter, LadderSideAdapter, build_image_adapter, trainable_parameter_names
from clip4str.presets import model_preset, variant_names

LABELS = ["ab1", "c2", "abc", "3a"]


@pytest.fixture(autouse=True)
def bpe_env(bpe_path, monkeypatch):
    monkeypatch.setenv("CLIP4STR_BPE_PATH", str(bpe_path))


def tiny(*variants: str, **overrides):
    """The tiny preset on 64x64 images (patch 16: 16 patches + CLS), a 13-character charset."""
    base = dict(
        clip={"vision": {"image_size": 64, "patch_size": 16}},
        preprocess={"image_size": [64, 64]},
        charset_train="0123456789abc",
        max_label_length=6,
        perm_num=2,
    )
    base.update(overrides)
    return model_preset("tiny", *variants, **base)


def train_steps(model: CLIP4STR, steps: int = 3) -> None:
    model.train()
    model.perm_rng = np.random.default_rng(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    x = torch.randn(len(LABELS), 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        loss = model.training_loss(x, LABELS)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("variant", ["clip-adapter", "ladder"])
def test_peft_variant_trains_only_adapter_and_decoders(variant):
    torch.manual_seed(0)
    model = CLIP4STR(tiny(variant))
    trainable = trainable_parameter_names(model)
    assert any(n.startswith("image_adapter.") for n in trainable)
    assert all(n.startswith(("image_adapter.", "visual_decoder.", "cross_decoder.")) for n in trainable)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model)
    after = model.state_dict()
    clip_keys = [k for k in before if k.startswith("clip_model.")]
    assert clip_keys and all(torch.equal(before[k], after[k]) for k in clip_keys)  # bit-identical CLIP
    assert all(p.grad is None for p in model.clip_model.parameters())  # no gradient reached CLIP at all
    for name in trainable:
        if name.startswith("image_adapter."):
            assert not torch.equal(before[name], after[name]), f"{name} did not train"
    for prefix in ("visual_decoder.head.weight", "cross_decoder.head.weight"):
        assert not torch.equal(before[prefix], after[prefix])


@pytest.mark.parametrize("variant", ["clip-adapter", "ladder"])
def test_peft_model_save_load_round_trip(variant, tmp_path):
    from clip4str.checkpoints import load_model, save_model

    torch.manual_seed(0)
    model = CLIP4STR(tiny(variant))
    train_steps(model, steps=1)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    loaded = load_model(save_model(model, tmp_path / variant))
    assert loaded.config.adapter == model.config.adapter
    for k, v in model.state_dict().items():
        if k.startswith("image_adapter."):
            assert torch.equal(loaded.state_dict()[k], v), k
    assert trainable_parameter_names(loaded) == trainable_parameter_names(model)  # freezing re-applied
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected)


def test_clip_adapter_formula_and_keys():
    torch.manual_seed(0)
    adapter = ClipAdapter(32, reduction=4, ratio=0.2)
    assert {k: tuple(v.shape) for k, v in adapter.state_dict().items()} == {
        "fc.0.weight": (8, 32),
        "fc.2.weight": (32, 8),
    }
    x = torch.randn(2, 5, 32)
    w1, w2 = adapter.fc[0].weight, adapter.fc[2].weight
    expected = 0.2 * F.relu(F.relu(x @ w1.T) @ w2.T) + 0.8 * x
    torch.testing.assert_close(adapter.adapt(x), expected)
    # ratio 0: the model's memory is CLIP's own
    model = CLIP4STR(tiny("clip-adapter", adapter={"kind": "clip-adapter", "ratio": 0.0, "reduction": 4}))
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model.encode(images), model.clip_model.encode_image_tokens(images))


def test_ladder_wiring_and_gates():
    torch.manual_seed(0)
    cfg = tiny("ladder")
    model = CLIP4STR(cfg).eval()
    ladder = model.image_adapter
    assert isinstance(ladder, LadderSideAdapter)
    assert ladder.block_ids == [0, 1] and ladder.side_width == 16  # every block, width 64 / 4
    images = torch.randn(2, 3, 64, 64)
    clip_memory = model.clip_model.encode_image_tokens(images)
    with torch.no_grad():
        assert torch.allclose(ladder.gates(), torch.full((2,), 0.5))
        out = model.encode(images)
        assert out.shape == clip_memory.shape
        assert not torch.allclose(out, clip_memory)
        ladder.alpha[0] = 10.0  # gate 0 -> 1: CLIP's memory alone
        torch.testing.assert_close(model.encode(images), clip_memory)
        ladder.alpha[0] = -10.0  # gate 0 -> 0: the side network alone, which depends on the taps
        side_only = model.encode(images)
        blocks = model.clip_model.visual.transformer.resblocks
        blocks[1].mlp.c_fc.bias.add_(1.0)  # the side network taps block inputs: block 1's output is unused
        torch.testing.assert_close(model.encode(images), side_only)
        blocks[0].mlp.c_fc.bias.add_(1.0)  # block 0's output is block 1's input, a tap
        assert not torch.allclose(model.encode(images), side_only)


def test_ladder_full_width_copy_of_backbone_reproduces_clip():
    """Reduction 1 initialised from the backbone (the official 'ladder'): with every feed gate open the side
    network recomputes the ViT exactly, so the memory equals CLIP's whatever gate 0 is."""
    torch.manual_seed(0)
    model = CLIP4STR(tiny("ladder", adapter={"kind": "ladder", "reduction": 1, "options": {}})).eval()
    ladder = model.image_adapter
    assert all(isinstance(d, torch.nn.Identity) for d in ladder.down)
    ladder.init_from_backbone(model.clip_model.visual)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ladder.alpha[1:] = 10.0
        ladder.alpha[0] = -3.0
        torch.testing.assert_close(
            model.encode(images), model.clip_model.encode_image_tokens(images), atol=1e-5, rtol=1e-5
        )
    reduced = CLIP4STR(tiny("ladder")).image_adapter
    with pytest.raises(ConfigError, match="reduction=1"):
        reduced.init_from_backbone(model.clip_model.visual)


@pytest.mark.parametrize(
    ("variant", "frozen", "trainable"),
    [
        ("frozen-image", "clip_model.visual.", "clip_model.transformer."),
        ("frozen-text", "clip_model.transformer.", "clip_model.visual."),
    ],
)
def test_freezing_strategies(variant, frozen, trainable):
    model = CLIP4STR(tiny(variant))
    params = dict(model.named_parameters())
    assert all(not p.requires_grad for n, p in params.items() if n.startswith(frozen))
    assert all(p.requires_grad for n, p in params.items() if n.startswith(trainable))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model, steps=1)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(frozen))


def test_freeze_token_embeddings_only():
    model = CLIP4STR(tiny("frozen-token-embeddings"))
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    assert frozen == ["clip_model.logit_scale", "clip_model.token_embedding.weight"]
    before = model.clip_model.token_embedding.weight.clone()
    train_steps(model, steps=1)
    assert torch.equal(before, model.clip_model.token_embedding.weight)


def test_variants_and_config_errors(tmp_path):
    assert {"clip-adapter", "ladder", "frozen-image", "frozen-text", "vietnamese"} <= set(variant_names())
    cfg = model_preset("vit-b16", "ladder", "vietnamese")
    assert cfg.adapter.kind == "ladder" and cfg.image_freeze_layers == -1 and len(cfg.charset_train) == 228
    with pytest.raises(ConfigError, match="unknown model variant 'lora'.*clip-adapter"):
        model_preset("tiny", "lora")
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"adapter": {"kindd": "ladder"}}}')
    with pytest.raises(ConfigError, match="adapter.kindd"):
        model_preset("tiny", str(bad))
    with pytest.raises(
        ConfigError, match="adapter.kind must be one of none, clip-adapter, ladder, got 'lora'"
    ):
        build_image_adapter(tiny(adapter={"kind": "lora"}))
    with pytest.raises(ConfigError, match="block_ids must be increasing.*0..1.*\\[0, 5\\]"):
        build_image_adapter(tiny(adapter={"kind": "ladder", "options": {"block_ids": [0, 5]}}))
    with pytest.raises(ConfigError, match="reduction=3 must be >= 1 and divide the ViT width 64"):
        build_image_adapter(tiny(adapter={"kind": "ladder", "reduction": 3}))
    with pytest.raises(ConfigError, match="unknown key.*tempreature.*for kind 'ladder'"):
        build_image_adapter(tiny(adapter={"kind": "ladder", "options": {"tempreature": 1}}))
    with pytest.raises(ConfigError, match="adapter.ratio must be in \\[0, 1\\], got 1.5"):
        build_image_adapter(tiny(adapter={"kind": "clip-adapter", "ratio": 1.5}))


# ------------------------------------------------------------------------------------------ official files
def official_layout(model: CLIP4STR) -> dict[str, torch.Tensor]:
    """The keys the official STRAdapter saves (strhub/models/str_adapter/system.py), from our model."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("clip_model."):
            out[key] = value.clone()
        elif key.startswith("image_adapter."):
            out["adapter." + key[len("image_adapter.") :]] = value.clone()
        elif key.startswith("visual_decoder."):
            rest = key[len("visual_decoder.") :]
            top = rest.startswith(("head.", "text_embed.")) or rest == "pos_queries"
            out[rest if top else "decoder." + rest] = value.clone()
    return out


@pytest.mark.parametrize(
    ("adapter", "hparams"),
    [
        ({"kind": "clip-adapter", "ratio": 0.2, "reduction": 2}, {"adapter_type": "linear"}),
        (
            {"kind": "ladder", "reduction": 1, "options": {"block_ids": [1]}},
            {"adapter_type": "ladder", "block_ids": [1]},
        ),
    ],
)
def test_official_str_adapter_checkpoint_converts(adapter, hparams, tmp_path):
    from clip4str.checkpoints import load_state_dict_strict, read_checkpoint

    torch.manual_seed(0)
    # Official files carry no head counts: they are width // 64, so the towers here are 64 wide.
    clip = {"vision": {"image_size": 64, "patch_size": 16}, "text": {"width": 64, "heads": 1}}
    source = CLIP4STR(
        tiny(adapter=adapter, clip=clip, decoder={"num_heads": 2}, image_freeze_layers=-1)
    ).eval()
    hp = {
        "charset_train": source.config.charset_train,
        "charset_test": source.config.charset_train,
        "dec_num_heads": 2,
        "img_size": [64, 64],
        "freeze_backbone": True,
        **hparams,
    }
    path = tmp_path / "str_adapter.ckpt"
    torch.save({"state_dict": official_layout(source), "hyper_parameters": hp}, path)
    sd, read_hp, _ = read_checkpoint(path)
    assert is_str_adapter_state_dict(sd)
    config, converted = convert_str_adapter(sd, read_hp)
    assert config.adapter.kind == adapter["kind"] and config.decoding.visual_only
    assert config.image_freeze_layers == -1 and config.text_freeze_layers == -1
    model = CLIP4STR(config).eval()
    load_state_dict_strict(model, converted, str(path))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(images), source.decode(images, visual_only=True))


def test_official_str_adapter_errors():
    torch.manual_seed(0)
    source = CLIP4STR(
        tiny("ladder", adapter={"kind": "ladder", "reduction": 1, "options": {"block_ids": [1]}})
    )
    sd = official_layout(source)
    with pytest.raises(CheckpointError, match="adapter_type='ladder_pruning' is not supported"):
        convert_str_adapter(sd, {"adapter_type": "ladder_pruning"})
    with pytest.raises(CheckpointError, match="1 side blocks but block_ids=\\[0, 4, 8, 11\\]"):
        convert_str_adapter(sd, {"adapter_type": "ladder", "charset_train": "0123456789abc"})
    assert not is_str_adapter_state_dict(source.state_dict())
