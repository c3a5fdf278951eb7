"""CLIP BPE tokenizer: golden ids of the official ``clip.tokenize``, file formats, vocabulary search."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import offline_env

import clip4str
from clip4str.clip import tokenizer as tok_module
from clip4str.clip.tokenizer import (
    EOT_ID,
    NUM_MERGES,
    SOT_ID,
    ClipTokenizer,
    clean_text,
    clip_tokenize,
    find_bpe_vocab,
)


@pytest.fixture(scope="module")
def tok(bpe_path) -> ClipTokenizer:
    return ClipTokenizer(bpe_path)


@pytest.fixture(scope="module")
def golden_bpe(golden_dir) -> list[dict]:
    entries = json.loads((golden_dir / "golden_tokenizer.json").read_text(encoding="utf-8"))["clip_bpe"]
    assert len(entries) == 64
    return entries


@pytest.fixture
def default_tokenizer_reset():
    saved = tok_module._DEFAULT
    tok_module._DEFAULT = None
    yield
    tok_module._DEFAULT = saved


def test_golden_ids_of_all_64_strings(tok, golden_bpe):
    for entry in golden_bpe:
        text = entry["text"]
        assert clean_text(text) == entry["cleaned"], text
        assert tok.encode(text) == entry["bpe_ids"], text
        assert [tok.decoder[i] for i in entry["bpe_ids"]] == entry["bpe_tokens"], text
        ctx16 = tok(text, context_length=16, truncate=True)
        assert ctx16.dtype == torch.int32 and str(ctx16.dtype) == entry["dtype"]
        assert ctx16[0].tolist() == entry["tokenize_ctx16_trunc"], text
        assert tok(text)[0].tolist() == entry["tokenize_ctx77_trunc"], text
        assert tok.decode(entry["bpe_ids"]) == entry["decoded_back"], text


def test_batch_equals_rows_and_truncation_flags(tok, golden_bpe):
    texts = [e["text"] for e in golden_bpe]
    batch = tok(texts, context_length=16)
    assert batch.shape == (64, 16)
    assert batch.tolist() == [e["tokenize_ctx16_trunc"] for e in golden_bpe]
    for entry, row in zip(golden_bpe, batch):
        truncated = len(entry["bpe_ids"]) + 2 > 16
        assert truncated == entry["ctx16_truncated"]
        if truncated:
            assert row[-1].item() == EOT_ID and row[0].item() == SOT_ID


def test_special_cases(tok):
    assert tok("")[0, :3].tolist() == [SOT_ID, EOT_ID, 0]
    assert tok.encode("<|endoftext|>") == [EOT_ID]
    assert len(tok.encode("Chicken")) == 1  # BPE merges across characters: one token for the word
    assert tok.encode("2024") == [tok.encoder[d + "</w>"] for d in "2024"]  # every digit alone
    assert tok.vocab_size == 49408


def test_no_truncation_raises_naming_the_text(tok):
    long_text = "1234567890123456789012345"
    with pytest.raises(ValueError, match=long_text):
        tok(long_text, context_length=16, truncate=False)
    assert tok(long_text, context_length=77, truncate=False).shape == (1, 77)
    with pytest.raises(ValueError, match="context_length"):
        tok("a", context_length=1)


def test_cache_returns_fresh_lists(tok):
    first = tok.encode("SceneText")
    first.append(-1)
    assert tok.encode("SceneText") == first[:-1]
    with pytest.raises(TypeError, match="str"):
        tok.encode(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list"):
        tok(["ok", ["nested"]])  # type: ignore[list-item]
    assert tok([], context_length=16).shape == (0, 16)


def test_decode_rejects_unknown_ids(tok):
    with pytest.raises(ValueError, match="49408"):
        tok.decode([320, 49408])


def _write_hf_format(tok: ClipTokenizer, bpe_path, folder):
    lines = gzip.decompress(bpe_path.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : NUM_MERGES + 1]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "vocab.json").write_text(json.dumps(tok.encoder, ensure_ascii=False), encoding="utf-8")
    return folder / "merges.txt"


def test_hugging_face_merges_format_gives_the_same_ids(tok, bpe_path, golden_bpe, tmp_path):
    merges = _write_hf_format(tok, bpe_path, tmp_path / "hf")
    hf = ClipTokenizer(merges)
    assert hf.encoder == tok.encoder
    for entry in golden_bpe:
        assert hf(entry["text"], context_length=16)[0].tolist() == entry["tokenize_ctx16_trunc"]
    # a vocab.json from another tokenizer is caught
    vocab = json.loads((tmp_path / "hf" / "vocab.json").read_text(encoding="utf-8"))
    vocab["a</w>"], vocab["b</w>"] = vocab["b</w>"], vocab["a</w>"]
    (tmp_path / "hf" / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(ValueError, match="vocab.json"):
        ClipTokenizer(merges)


def test_format_is_read_from_content_not_name(bpe_path, tmp_path, golden_bpe):
    plain = tmp_path / "vocab.gz"  # plain text under a gzip-looking name
    plain.write_bytes(gzip.decompress(bpe_path.read_bytes()))
    gz = tmp_path / "vocab.txt"  # gzip under a text name
    shutil.copy(bpe_path, gz)
    for path in (plain, gz):
        t = ClipTokenizer(path)
        assert t.encode(golden_bpe[4]["text"]) == golden_bpe[4]["bpe_ids"]


def test_bad_vocabulary_files(bpe_path, tmp_path):
    lines = gzip.decompress(bpe_path.read_bytes()).decode("utf-8").split("\n")
    short = tmp_path / "short.txt"
    short.write_text("\n".join(lines[:1000]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"999 BPE merges.*48894"):
        ClipTokenizer(short)
    png = tmp_path / "vocab.txt.gz"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(ValueError, match="not a CLIP BPE vocabulary"):
        ClipTokenizer(png)
    damaged = tmp_path / "damaged.gz"
    damaged.write_bytes(bpe_path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="damaged gzip"):
        ClipTokenizer(damaged)
    text = tmp_path / "notes.txt"
    text.write_text("hello\nworld\n", encoding="utf-8")
    with pytest.raises(ValueError, match="#version"):
        ClipTokenizer(text)
    with pytest.raises(FileNotFoundError, match="missing.gz"):
        ClipTokenizer(tmp_path / "missing.gz")


def test_search_order(bpe_path, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP4STR_BPE_PATH", str(bpe_path))
    assert find_bpe_vocab() == bpe_path
    other = tmp_path / "explicit.txt.gz"
    shutil.copy(bpe_path, other)
    assert find_bpe_vocab(other) == other  # the argument wins over the environment
    monkeypatch.setenv("CLIP4STR_BPE_PATH", str(tmp_path / "nope.gz"))
    with pytest.raises(FileNotFoundError, match="CLIP4STR_BPE_PATH"):
        find_bpe_vocab()
    monkeypatch.delenv("CLIP4STR_BPE_PATH")
    assert find_bpe_vocab() == tok_module.shipped_bpe_path()


def test_the_shipped_vocabulary_is_openais_file(bpe_path):
    shipped = tok_module.shipped_bpe_path()
    assert shipped.read_bytes() == bpe_path.read_bytes()


def test_offline_machine_reads_with_the_shipped_vocabulary(tmp_path):
    """No network, no cache, no variable: the tokenizer still works from the installed package."""
    env = offline_env(tmp_path)
    code = "from clip4str import clip_tokenize\nprint(clip_tokenize(['hello world'])[0, :4].tolist())\n"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[49406, 3306, 1002, 49407]"


def test_clip_tokenize_and_package_reexport(bpe_path, monkeypatch, default_tokenizer_reset, golden_bpe):
    monkeypatch.setenv("CLIP4STR_BPE_PATH", str(bpe_path))
    entry = golden_bpe[10]
    assert clip_tokenize(entry["text"], context_length=16)[0].tolist() == entry["tokenize_ctx16_trunc"]
    assert clip4str.clip_tokenize is clip_tokenize
    assert tok_module.get_tokenizer() is tok_module.get_tokenizer()
