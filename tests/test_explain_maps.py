"""Attention maps: same readings as ``read`` in every decoding mode, maps over the (possibly rectangular)
patch grid, nothing recorded on the plain read path, the figure, and ``clip4str explain``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clip4str
from clip4str.api import Recognizer
from clip4str.cli import main
from clip4str.explain import decode, explain_pixels
from clip4str.model.clip4str import CLIP4STR
from clip4str.model.decoder import MultiheadAttention
from clip4str.presets import model_preset

EXPECTED = ["Chicken", "STOP", "x7-Zq!", "a", "2024", "SceneText", "", "a"]


@pytest.fixture(autouse=True)
def _bpe(bpe_path, monkeypatch):
    monkeypatch.setenv("CLIP4STR_BPE_PATH", str(bpe_path))


@pytest.fixture(scope="module")
def ckpt(golden_dir):
    return golden_dir / "clip4str_tiny.ckpt"


@pytest.fixture(scope="module")
def image_paths(golden_dir):
    return sorted((golden_dir / "inputs").glob("*.png"))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"refine_iters": 0},
        {"mode": "nar", "refine_iters": 0},
        {"mode": "nar", "refine_iters": 2},
        {"visual_only": True},
    ],
)
def test_explain_reads_exactly_what_read_reads(ckpt, image_paths, options):
    reader = clip4str.load(ckpt, **options)
    preds = reader.read(image_paths)
    explained = reader.explain(image_paths, figure=False)
    assert [e.text for e in explained] == [p.text for p in preds]
    assert [e.confidence for e in explained] == [p.confidence for p in preds]
    if not options:
        assert [e.text for e in explained] == EXPECTED
    for e in explained:
        assert e.attention.shape == (len(e.text), 14, 14) and e.attention.dtype == np.float32
        assert np.allclose(e.attention.sum(axis=(1, 2)), 1.0, atol=1e-5)
        assert (e.attention >= 0).all() and all(0.0 < s <= 1.0 + 1e-6 for s in e.image_share)
    decoder = reader.model.visual_decoder if options.get("visual_only") else reader.model.cross_decoder
    assert decoder.layers[-1].cross_attn.record is None  # recording is switched off again


def test_the_read_path_computes_no_attention_weights(ckpt, image_paths, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("attention weights computed on the read path")

    monkeypatch.setattr(MultiheadAttention, "probabilities", forbidden)
    assert [p.text for p in clip4str.load(ckpt).read(image_paths)] == EXPECTED


def test_probabilities_are_the_weights_attend_uses():
    torch.manual_seed(0)
    attn = MultiheadAttention(32, 4).eval()
    q, k, v = (torch.randn(2, 4, n, 8) for n in (5, 7, 7))
    mask = torch.zeros(5, 7).masked_fill(torch.rand(5, 7) > 0.7, float("-inf"))
    mask[:, 0] = 0  # every query sees at least one key
    p = attn.probabilities(q, k, mask)
    assert p.shape == (2, 4, 5, 7)
    torch.testing.assert_close(p @ v, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_maps_cover_a_rectangular_patch_grid():
    torch.manual_seed(0)
    cfg = model_preset(
        "tiny",
        clip={"vision": {"image_size": [32, 128], "patch_size": [8, 16]}},
        preprocess={"image_size": [32, 128]},
    )
    assert cfg.clip.vision.grid_hw == (4, 8)
    reader = Recognizer(CLIP4STR(cfg))
    pixels = torch.randn(3, 3, 32, 128)
    logits, weights = decode(reader, pixels, attention=True)
    assert weights is not None and weights.shape[:2] == logits.shape[:2]
    assert weights.shape[2] == 1 + 4 * 8 + cfg.caption_length  # class token, patches, caption tokens
    explained = explain_pixels(reader, pixels)
    row = max(range(3), key=lambda i: len(explained[i].text))
    e = explained[row]
    assert len(e.text) > 0 and e.grid_hw == (4, 8) and e.attention.shape == (len(e.text), 4, 8)
    patches = weights[row, : len(e.text), 1:33]
    expected = (patches / patches.sum(-1, keepdim=True)).reshape(-1, 4, 8)  # row-major over the grid
    np.testing.assert_allclose(e.attention, expected.numpy(), rtol=1e-5, atol=1e-7)
    image = Image.new("RGB", (200, 50), "white")
    e.image, e.figure = image, None
    from clip4str.explain import attention_figure

    fig = attention_figure(image, e)
    assert fig.mode == "RGB" and fig.size[0] >= 160 and fig.size[1] > 2 * 40


def test_figure_of_a_reading(ckpt, image_paths):
    e = clip4str.load(ckpt).explain(image_paths[5])[0]
    assert e.text == "SceneText" and isinstance(e.figure, Image.Image)
    w, h = e.figure.size
    assert w > 4 * 160 and h > 3 * 40  # the input and 9 tiles, 4 per row
    assert e.to_dict()["grid_hw"] == [14, 14] and len(e.to_dict()["attention"]) == 9


def test_cli_explain_writes_the_figure(ckpt, image_paths, tmp_path, capsys):
    out = tmp_path / "maps" / "map.png"
    assert main(["explain", str(image_paths[0]), "--model", str(ckpt), "--out", str(out)]) == 0
    assert capsys.readouterr().out.split("\t")[1] == "Chicken"
    assert Image.open(out).format == "PNG"
    assert main(["explain", str(image_paths[1]), "--model", str(ckpt), "--json", "--decode", "nar"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["text"] == "STOP" and np.array(record["attention"]).shape == (4, 14, 14)
    assert main(["explain", str(tmp_path / "missing.png"), "--model", str(ckpt)]) == 1
    assert "missing.png" in capsys.readouterr().err
