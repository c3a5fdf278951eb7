"""Freezing strategies of the model config (official default, partial and whole towers)."""

from __future__ import annotations

from clip4str.model.clip4str import CLIP4STR
from clip4str.presets import model_preset


def trainable(**overrides) -> dict[str, bool]:
    cfg = model_preset("tiny", **overrides)
    return {k: p.requires_grad for k, p in CLIP4STR(cfg).named_parameters()}


def test_official_default_freezes_the_first_text_layers_and_embeddings():
    t = trainable(text_freeze_layers=1)
    assert not t["clip_model.token_embedding.weight"] and not t["clip_model.positional_embedding"]
    assert not t["clip_model.transformer.resblocks.0.attn.in_proj_weight"]
    assert t["clip_model.ln_final.weight"] and t["clip_model.text_projection"]
    assert not t["clip_model.logit_scale"]
    assert all(v for k, v in t.items() if k.startswith("clip_model.visual."))


def test_partial_image_freeze_keeps_patch_embedding_training_as_official():
    t = trainable(image_freeze_layers=1)
    assert not t["clip_model.visual.class_embedding"] and not t["clip_model.visual.positional_embedding"]
    assert not t["clip_model.visual.transformer.resblocks.0.mlp.c_fc.weight"]
    assert t["clip_model.visual.conv1.weight"] and t["clip_model.visual.ln_pre.weight"]
    assert t["clip_model.visual.proj"]


def test_whole_towers_and_token_embeddings_only():
    t = trainable(text_freeze_layers=-1, image_freeze_layers=-1)
    assert not any(v for k, v in t.items() if k.startswith("clip_model."))
    assert all(v for k, v in t.items() if k.startswith(("visual_decoder.", "cross_decoder.")))
    t = trainable(text_freeze_layers=0, freeze_token_embeddings=True)
    frozen = sorted(k for k, v in t.items() if not v)
    assert frozen == ["clip_model.logit_scale", "clip_model.token_embedding.weight"]
