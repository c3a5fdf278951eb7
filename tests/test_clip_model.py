"""CLIP towers: OpenAI key layout, sizes from shapes, golden memory, TorchScript equality, fp16 rounding."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from clip4str.clip.model import (
    CLIP,
    LayerNorm,
    MultiheadSelfAttention,
    ResidualAttentionBlock,
    infer_clip_config,
    round_like_official_fp16,
)
from clip4str.config import CLIPConfig, TextConfig, VisionConfig
from clip4str.errors import CheckpointError

MANIFESTS = ["tiny_golden", "ViT-B-16_openai", "ViT-B-32_openai", "ViT-L-14_openai", "OpenCLIP-ViT-H-14"]
TORCHSCRIPT_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def tiny_config(activation: str = "quick_gelu") -> CLIPConfig:
    return CLIPConfig(
        embed_dim=16,
        vision=VisionConfig(width=32, layers=2, heads=2, patch_size=8, image_size=32),
        text=TextConfig(width=32, layers=2, heads=2, context_length=20, vocab_size=100),
        activation=activation,
    )


def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give LayerNorms and biases non-trivial values so that every path matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("ln_"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def golden(golden_dir):
    ckpt = torch.load(golden_dir / "clip4str_tiny.ckpt", weights_only=True)["state_dict"]
    infer = torch.load(golden_dir / "golden_infer.pt", weights_only=True)
    images = torch.load(golden_dir / "inputs" / "inputs.pt", weights_only=True)["images_norm05"]
    return ckpt, infer, images


def clip_from_checkpoint(ckpt: dict, activation: str = "quick_gelu") -> CLIP:
    model = CLIP(infer_clip_config(ckpt, activation=activation, prefix="clip_model."))
    sd = {k[len("clip_model.") :]: v for k, v in ckpt.items() if k.startswith("clip_model.")}
    model.load_state_dict(sd)  # strict: every key matches
    return model.eval()


@pytest.mark.parametrize("variant", MANIFESTS)
def test_infer_config_and_key_layout_match_official_sizes(golden_dir, variant):
    manifest = json.loads((golden_dir / "manifests" / f"{variant}.json").read_text())
    shapes = manifest["clip_state_dict_shapes"]
    fake = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    cfg = infer_clip_config(fake)
    want = manifest["inferred_by_build_model"]
    got = {
        "vision_width": cfg.vision.width,
        "vision_layers": cfg.vision.layers,
        "vision_heads": cfg.vision.heads,
        "vision_patch_size": cfg.vision.patch_size,
        "image_resolution": cfg.vision.image_size,
        "embed_dim": cfg.embed_dim,
        "text_width": cfg.text.width,
        "text_layers": cfg.text.layers,
        "text_heads": cfg.text.heads,
        "context_length_positional_embedding": cfg.text.context_length,
        "vocab_size": cfg.text.vocab_size,
    }
    assert got == {k: want[k] for k in got}
    with torch.device("meta"):
        model = CLIP(cfg)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == shapes  # same keys, same shapes, no buffers
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params_clip"]


def test_infer_config_with_prefix_on_a_clip4str_state_dict(golden):
    ckpt, _, _ = golden
    cfg = infer_clip_config(ckpt, prefix="clip_model.")
    assert (cfg.vision.width, cfg.vision.heads, cfg.text.heads, cfg.embed_dim) == (128, 2, 1, 32)
    assert cfg.vision.num_tokens == 197 and cfg.text.context_length == 77
    assert infer_clip_config(ckpt, prefix="clip_model.", activation="gelu").activation == "gelu"
    assert infer_clip_config(ckpt, prefix="clip_model.", head_width=32).vision.heads == 4


def test_encode_image_tokens_matches_golden_memory(golden):
    ckpt, infer, images = golden
    model = clip_from_checkpoint(ckpt)
    with torch.no_grad():
        memory = model.encode_image_tokens(images)
    assert memory.shape == (8, 197, 32)
    torch.testing.assert_close(memory, infer["memory"], rtol=1e-4, atol=1e-4)


def test_encode_text_tokens_matches_golden_cross_text_features(golden):
    ckpt, infer, _ = golden
    model = clip_from_checkpoint(ckpt)
    for setting in ("ar_refine1", "ar_refine1_charset36"):
        cross = infer["settings"][setting]["cross_init"]
        with torch.no_grad():
            features = model.encode_text_tokens(cross["text_ids"])
        assert features.shape == (8, 16, 32)
        torch.testing.assert_close(features, cross["cross_text_features"], rtol=1e-4, atol=1e-4)


def test_gelu_instead_of_quick_gelu_changes_the_memory(golden):
    ckpt, infer, images = golden
    model = clip_from_checkpoint(ckpt, activation="gelu")
    with torch.no_grad():
        memory = model.encode_image_tokens(images[:2])
    assert (memory - infer["memory"][:2]).abs().max() > 1e-3


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:DeprecationWarning")
def test_matches_torchscript_archive(golden_dir, golden):
    _, infer, images = golden
    jit = torch.jit.load(str(golden_dir / "tiny_clip_jit.pt"), map_location="cpu").float()
    sd = {k: v for k, v in jit.state_dict().items() if k not in TORCHSCRIPT_EXTRAS}
    model = CLIP(infer_clip_config(sd))
    model.load_state_dict(sd)
    model.eval()
    x = images[:3]
    ids = torch.zeros(3, 77, dtype=torch.int32)  # the archive was traced with 77 positions
    ids[:, :16] = infer["settings"]["ar_refine1"]["cross_init"]["text_ids"][:3]
    with torch.no_grad():
        # The traced CLIP4STR CLIP returns every token from encode_image/encode_text.
        torch.testing.assert_close(model.encode_image_tokens(x), jit.encode_image(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.encode_text_tokens(ids), jit.encode_text(ids), rtol=1e-5, atol=1e-5)
        ours = model(x, ids)
        theirs = jit(x, ids)  # pooled CLS and EOT features, like OpenAI's CLIP.forward
        torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours[1], theirs[1], rtol=1e-5, atol=1e-5)
        assert model.encode_image(x).shape == (3, 32) and model.encode_text(ids).shape == (3, 32)


def test_encode_text_pools_at_the_eot_position():
    model = perturbed(CLIP(tiny_config())).eval()
    ids = torch.tensor([[98, 5, 7, 99, 0, 0], [98, 99, 0, 0, 0, 0]])
    with torch.no_grad():
        tokens = model.encode_text_tokens(ids)
        pooled = model.encode_text(ids)
        assert torch.equal(pooled[0], tokens[0, 3]) and torch.equal(pooled[1], tokens[1, 1])
        # causal: a later token cannot change earlier features
        other = ids.clone()
        other[0, 5] = 42
        torch.testing.assert_close(model.encode_text_tokens(other)[0, :5], tokens[0, :5])
        assert not torch.allclose(model.encode_text_tokens(other)[0, 5], tokens[0, 5])
        # padding positions are kept and computed (no padding mask)
        assert tokens.shape == (2, 6, 16)


@pytest.mark.parametrize("mask_kind", ["none", "causal", "additive"])
def test_attention_equals_torch_multihead_attention(mask_kind):
    torch.manual_seed(0)
    width, heads, length = 48, 3, 7
    ours = MultiheadSelfAttention(width, heads)
    ref = nn.MultiheadAttention(width, heads, batch_first=True)
    with torch.no_grad():
        ours.in_proj_bias.normal_()
        ours.out_proj.bias.normal_()
        ref.in_proj_weight.copy_(ours.in_proj_weight)
        ref.in_proj_bias.copy_(ours.in_proj_bias)
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(2, length, width)
    causal = torch.full((length, length), float("-inf")).triu(1)
    mask = {"none": None, "causal": causal, "additive": torch.randn(length, length)}[mask_kind]
    expected, _ = ref(x, x, x, attn_mask=mask, need_weights=False)
    if mask_kind == "causal":
        got = ours(x, causal=True)
        torch.testing.assert_close(ours(x, attn_mask=causal), expected, rtol=1e-5, atol=1e-6)
    else:
        got = ours(x, attn_mask=mask)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_attention_rejects_heads_that_do_not_divide_width():
    with pytest.raises(ValueError, match="heads=5"):
        MultiheadSelfAttention(32, 5)


def test_layernorm_runs_in_fp32_and_returns_input_dtype():
    ln = LayerNorm(64)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = 100 + torch.randn(4, 64)  # large offset: a bf16 LayerNorm would lose most of the signal
    y = ln(x.bfloat16())
    assert y.dtype == torch.bfloat16
    expected = ln(x.bfloat16().float())
    torch.testing.assert_close(y.float(), expected, rtol=1e-2, atol=2e-2)
    y16 = LayerNorm(64).half()(x.half())
    assert y16.dtype == torch.float16 and torch.isfinite(y16).all()


def test_half_precision_model_runs_and_stays_close():
    model = perturbed(CLIP(tiny_config())).eval()
    images = torch.randn(2, 3, 32, 32)
    ids = torch.randint(0, 100, (2, 10))
    with torch.no_grad():
        ref = model.encode_image_tokens(images)
        text_ref = model.encode_text_tokens(ids)
        model.to(torch.bfloat16)
        out = model.encode_image_tokens(images)  # float images are cast to the weights' dtype
        text = model.encode_text_tokens(ids)
    assert out.dtype == torch.bfloat16 and text.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)
    torch.testing.assert_close(text.float(), text_ref, rtol=0.1, atol=0.1)


def test_state_dict_round_trip_and_layer_access():
    model = perturbed(CLIP(tiny_config()))
    sd = model.state_dict()
    assert not any("mask" in k for k in sd)
    assert "visual.conv1.bias" not in sd and "visual.conv1.weight" in sd
    assert isinstance(model.visual.transformer.resblocks, nn.ModuleList)
    assert isinstance(model.transformer.resblocks, nn.ModuleList)
    assert len(model.transformer.resblocks) == 2
    clone = CLIP(infer_clip_config(sd, head_width=16))
    assert clone.config == tiny_config()
    clone.load_state_dict(sd)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(clone.eval().encode_image_tokens(images), model.eval().encode_image_tokens(images))


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = perturbed(CLIP(tiny_config()))
    images = torch.randn(2, 3, 32, 32)
    ids = torch.randint(0, 100, (2, 8))

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        loss = model.encode_image_tokens(images).square().sum() + model.encode_text_tokens(ids).square().sum()
        loss.backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=1e-5, atol=1e-6)


def test_bad_inputs_give_clear_errors():
    model = CLIP(tiny_config()).eval()
    with pytest.raises(ValueError, match="32x32"):
        model.encode_image_tokens(torch.zeros(1, 3, 48, 48))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model.encode_image_tokens(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="context length 20"):
        model.encode_text_tokens(torch.zeros(1, 21, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        model.encode_text_tokens(torch.zeros(1, 5))


def test_infer_config_errors_name_the_problem():
    sd = CLIP(tiny_config()).state_dict()
    broken = {k: v for k, v in sd.items() if k != "visual.proj"}
    with pytest.raises(CheckpointError, match="'visual.proj'"):
        infer_clip_config(broken, head_width=16)
    with pytest.raises(CheckpointError, match="'clip_model.visual.conv1.weight'"):
        infer_clip_config(sd, prefix="clip_model.")
    prefixed = {"clip_model." + k: v for k, v in sd.items()}
    with pytest.raises(CheckpointError, match="CLIP4STR checkpoint"):
        infer_clip_config(prefixed)
    resnet = dict(
        sd,
        **{"visual.layer1.0.conv1.weight": torch.zeros(1), "visual.attnpool.c_proj.weight": torch.zeros(1)},
    )
    with pytest.raises(CheckpointError, match="ResNet"):
        infer_clip_config(resnet)
    hf = {"vision_model.encoder.layers.0.self_attn.k_proj.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="Hugging Face"):
        infer_clip_config(hf)
    with pytest.raises(CheckpointError, match="head_width"):
        infer_clip_config(sd)  # width 32 < 64 heads of the default width
    bad_grid = dict(sd, **{"visual.positional_embedding": torch.zeros(20, 32)})
    with pytest.raises(CheckpointError, match="20 rows"):
        infer_clip_config(bad_grid, head_width=16)
    gap = {
        k.replace("visual.transformer.resblocks.1.", "visual.transformer.resblocks.3."): v
        for k, v in sd.items()
    }
    with pytest.raises(CheckpointError, match="contiguous"):
        infer_clip_config(gap, head_width=16)


def test_round_like_official_fp16_rounds_exactly_the_converted_tensors():
    model = perturbed(CLIP(tiny_config()))
    sd = {k: v + 1e-4 * torch.rand_like(v) for k, v in model.state_dict().items()}  # not fp16-exact
    rounded = round_like_official_fp16(sd)
    assert rounded.keys() == sd.keys()
    changed = {k for k in sd if not torch.equal(rounded[k], sd[k])}
    for key, value in rounded.items():
        assert value.dtype == torch.float32
        if key in changed:
            assert torch.equal(value, sd[key].half().float()), key
    expected = {
        k
        for k in sd
        if k in ("visual.conv1.weight", "visual.proj", "text_projection")
        or any(part in k for part in (".attn.in_proj_", ".attn.out_proj.", ".mlp.c_fc.", ".mlp.c_proj."))
    }
    assert changed == expected
    # LayerNorms, embeddings and logit_scale keep their exact values
    for key in (
        "ln_final.weight",
        "visual.ln_pre.bias",
        "token_embedding.weight",
        "positional_embedding",
        "visual.class_embedding",
        "visual.positional_embedding",
        "logit_scale",
    ):
        assert torch.equal(rounded[key], sd[key])
    # fp16 sources (OpenAI files) are unchanged in value
    half = {k: v.half() for k, v in sd.items()}
    assert all(torch.equal(v, half[k].float()) for k, v in round_like_official_fp16(half).items())


def test_default_init_is_sane():
    model = CLIP(tiny_config())
    assert math.isclose(model.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    with torch.no_grad():
        out = model.eval().encode_image_tokens(torch.randn(2, 3, 32, 32))
    assert torch.isfinite(out).all() and out.std() > 0


@pytest.mark.parametrize("grad", [False, True])
def test_folded_quick_gelu_mlp_equals_the_plain_one(grad):
    torch.manual_seed(0)
    block = perturbed(ResidualAttentionBlock(64, 2, "quick_gelu"))
    x = torch.randn(3, 50, 64, requires_grad=grad)  # 150 tokens > 2 x width: the folded path
    with torch.set_grad_enabled(grad):
        folded = block.feed_forward(x)
        plain = block.mlp(x)
    torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-6)
    if grad:
        (g_folded,) = torch.autograd.grad(folded.sum(), x)
        (g_plain,) = torch.autograd.grad(plain.sum(), x)
        torch.testing.assert_close(g_folded, g_plain, rtol=1e-5, atol=1e-6)
