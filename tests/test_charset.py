"""Charsets, the character tokenizer and the charset adapter against the official behaviour."""

from __future__ import annotations

import json

import pytest
import torch

from clip4str.charset import (
    CHARSET_36,
    CHARSET_62,
    CHARSET_94,
    CHARSET_VIETNAMESE,
    CharsetAdapter,
    CharTokenizer,
    resolve_charset,
)


@pytest.fixture(scope="module")
def golden(golden_dir):
    return json.loads((golden_dir / "golden_tokenizer.json").read_text())


def test_presets_and_ids_match_the_official_tokenizer(golden):
    g = golden["char_tokenizer"]
    assert CHARSET_94 == g["charset"]
    assert CHARSET_36 == CHARSET_94[:36] and CHARSET_62 == CHARSET_94[:62]
    tok = CharTokenizer(CHARSET_94)
    assert list(tok.itos) == g["itos"] and len(tok) == g["len"]
    assert (tok.eos_id, tok.bos_id, tok.pad_id, tok.num_classes) == (
        g["eos_id"],
        g["bos_id"],
        g["pad_id"],
        g["num_classes_head"],
    )
    ids = tok.encode(g["encode_labels"])
    expected = torch.tensor(g["encode_ids"])
    assert torch.equal(ids, expected[:, : ids.shape[1]])
    assert (expected[:, ids.shape[1] :] == tok.pad_id).all()


@pytest.mark.parametrize("name", ["36", "62", "94"])
def test_charset_adapter_matches_official(golden, name):
    g = golden["charset_adapter"][name]
    adapter = CharsetAdapter(g["charset"])
    assert adapter.lowercase_only == g["lowercase_only"] and adapter.uppercase_only == g["uppercase_only"]
    for text, adapted in g["outputs"].items():
        assert adapter(text) == adapted, text


def test_caption_cut_and_decode_match_official(golden):
    tok = CharTokenizer(CHARSET_94)
    adapter36 = CharsetAdapter(CHARSET_36)
    for case in golden["decode_vs_decode_fast"]:
        ids = torch.tensor([case["ids"]])
        caption = tok.decode_caption(ids)[0]
        assert caption == case["decode_fast_no_adapter"], case["case"]
        assert adapter36(caption) == case["decode_fast_adapter36"], case["case"]
        probs = torch.nn.functional.one_hot(ids, 95).float()
        texts, row_probs = tok.decode(probs)
        assert texts[0] == case["decode"], case["case"]
        assert len(row_probs[0]) == case["decode_probs_len"], case["case"]


def test_any_unicode_charset_from_string_or_file(tmp_path):
    assert resolve_charset("94") == CHARSET_94 and resolve_charset("vietnamese") == CHARSET_VIETNAMESE
    path = tmp_path / "chars.txt"
    path.write_text("日本語\nかな\n", encoding="utf-8")
    assert resolve_charset(str(path)) == "日本語かな"
    # Decomposed input is stored precomposed (NFC) so labels and charset agree.
    assert resolve_charset("e\u0301a") == "éa"
    tok = CharTokenizer("日本語かな")
    ids = tok.encode(["本かな"])
    texts, _ = tok.decode(
        torch.nn.functional.one_hot(ids[:, 1:], tok.num_classes + 2).float()[..., : tok.num_classes]
    )
    assert texts == ["本かな"]
    assert len(set(CHARSET_VIETNAMESE)) == len(CHARSET_VIETNAMESE) == 94 + 2 * 67


def test_bad_charsets_and_labels(tmp_path):
    with pytest.raises(ValueError, match="repeats"):
        resolve_charset("abca")
    with pytest.raises(ValueError, match="empty"):
        resolve_charset("")
    with pytest.raises(FileNotFoundError):
        resolve_charset("@" + str(tmp_path / "missing.txt"))
    with pytest.raises(KeyError, match="outside the charset"):
        CharTokenizer(CHARSET_36).encode(["ABC"])
