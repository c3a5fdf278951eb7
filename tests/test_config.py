"""Typed configs: JSON round trip, overrides, clear errors."""

from __future__ import annotations

import pytest

from clip4str.charset import CHARSET_36
from clip4str.config import ConfigError, ModelConfig, apply_overrides, merge_into, to_dict


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
    merge_into(ModelConfig, data, {"adapter": {"kind": "clip-adapter", "options": {"other": 1}}})
    merged = ModelConfig.from_dict(data)
    assert merged.adapter.kind == "clip-adapter" and merged.adapter.options == {"other": 1}
    with pytest.raises(ConfigError, match="adapter.nope"):
        merge_into(ModelConfig, data, {"adapter": {"nope": 1}})


def test_strings_dotted_keys_and_nested_mappings_are_one_override():
    as_text = apply_overrides(ModelConfig(), ["decoding.refine_iters=2", 'decoder={"depth": 2}'])
    as_dotted = apply_overrides(ModelConfig(), {"decoding.refine_iters": 2, "decoder.depth": 2})
    as_nested = apply_overrides(ModelConfig(), {"decoding": {"refine_iters": 2}, "decoder": {"depth": 2}})
    assert as_text == as_dotted == as_nested
    assert as_nested.decoder.num_heads == ModelConfig().decoder.num_heads  # merged, not replaced


def test_charset_names_are_resolved_where_configs_merge():
    cfg = apply_overrides(ModelConfig(), {"charset_train": "36", "charset_test": "0123"})
    assert cfg.charset_train == CHARSET_36 and cfg.charset_test == "0123"
    with pytest.raises(ConfigError, match="charset_train: .*repeats"):
        apply_overrides(ModelConfig(), {"charset_train": "aab"})
