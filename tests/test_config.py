"""Typed configs: JSON round trip, overrides, clear errors."""

from __future__ import annotations

import pytest

from clip4str.config import ConfigError, ModelConfig, apply_overrides, merge_dict, to_dict


def test_overrides_are_typed_and_nested():
    cfg = apply_overrides(
        ModelConfig(), ["decoder.depth=2", "decoding.mode=nar", "preprocess.mean=[0.1,0.2,0.3]"]
    )
    assert cfg.decoder.depth == 2 and cfg.decoding.mode == "nar" and cfg.preprocess.mean == (0.1, 0.2, 0.3)
    assert ModelConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("decoder.heads=4", "decoder.heads"),
        ("decoder.depth=two", "decoder.depth"),
        ("decoding.mode=beam", "decoding.mode"),
        ("nothing", "key=value"),
        ("clip.vision=3", "clip.vision"),
        ("decoder.num_heads=7", "num_heads"),
    ],
)
def test_bad_overrides_name_the_value(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(ModelConfig(), [override])


def test_free_form_mappings_take_new_keys_and_are_replaced_whole():
    cfg = apply_overrides(
        ModelConfig(), ['text_encoder_options.model="M-CLIP/x"', "adapter.options.block_ids=[0,2]"]
    )
    assert cfg.text_encoder_options == {"model": "M-CLIP/x"} and cfg.adapter.options == {"block_ids": [0, 2]}
    data = to_dict(cfg)
    merge_dict(ModelConfig, data, {"adapter": {"kind": "clip-adapter", "options": {"other": 1}}})
    merged = ModelConfig.from_dict(data)
    assert merged.adapter.kind == "clip-adapter" and merged.adapter.options == {"other": 1}
    with pytest.raises(ConfigError, match="adapter.nope"):
        merge_dict(ModelConfig, data, {"adapter": {"nope": 1}})
