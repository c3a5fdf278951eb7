"""Synthetic word renderer: determinism, readable LMDB output with the right labels, fonts, effects."""

from __future__ import annotations

import io
import json

import lmdb
import numpy as np
import pytest
from conftest import IN_CI
from PIL import Image

from clip4str.charset import CHARSET_36, CHARSET_94, CHARSET_VIETNAMESE
from clip4str.data import synth as S
from clip4str.data.lmdb_dataset import LmdbDataset


@pytest.fixture(scope="module")
def fonts() -> list[str]:
    found = [str(f) for f in S.find_fonts()]
    dejavu = [f for f in found if "DejaVuSans" in f]
    if not found:
        if IN_CI:
            pytest.fail("no fonts: neither system fonts nor matplotlib's bundled DejaVu were found")
        pytest.skip("no fonts installed")
    return dejavu[:3] or found[:3]


def test_falls_back_to_bundled_fonts_without_system_fonts(monkeypatch):
    monkeypatch.setattr(S, "FONT_DIRS", ())
    monkeypatch.setattr(S.shutil, "which", lambda name: None)
    fonts = S.find_fonts()
    assert fonts and all(f.name.startswith("DejaVu") and f.is_file() for f in fonts)


def test_render_is_deterministic_per_seed_and_index(fonts):
    cfg = S.SynthConfig(fonts=fonts, words=["hello", "World"], seed=3)
    a = [S.render_sample(i, cfg) for i in range(6)]
    b = [S.render_sample(i, cfg) for i in reversed(range(6))][::-1]
    assert a == b  # independent of order
    other = [
        S.render_sample(i, S.SynthConfig(fonts=fonts, words=["hello", "World"], seed=4)) for i in range(6)
    ]
    assert [x[0] for x in a] != [x[0] for x in other]
    for data, label in a:
        img = Image.open(io.BytesIO(data))
        img.load()
        assert img.mode == "RGB" and img.height >= 8 and img.width >= 8
        assert label and set(label) <= set(CHARSET_94)


def test_vocabulary_case_variants_and_random_strings(fonts):
    cfg = S.SynthConfig(fonts=fonts, words=["Parking"], random_ratio=0.0)
    labels = {S.render_sample(i, cfg)[1] for i in range(40)}
    assert labels <= {"Parking", "parking", "PARKING"} and len(labels) >= 2
    rnd = S.SynthConfig(fonts=fonts, charset=CHARSET_36, min_length=2, max_length=6)
    labels = [S.render_sample(i, rnd)[1] for i in range(40)]
    assert all(2 <= len(s) <= 6 and set(s) <= set(CHARSET_36) for s in labels)
    assert len(set(labels)) > 30
    filtered = S.SynthConfig(fonts=fonts, charset=CHARSET_36, words=["ok", "not ok!", "x" * 40])
    assert filtered.words == ["ok"]  # words the charset or length limits cannot hold are left out
    lower_only = S.SynthConfig(fonts=fonts, charset=CHARSET_36, words=["Hello"], random_ratio=0.0)
    assert {S.render_sample(i, lower_only)[1] for i in range(8)} == {"hello"}


def test_generate_lmdb_is_readable_and_worker_independent(fonts, tmp_path):
    cfg = S.SynthConfig(fonts=fonts, words=["alpha", "beta", "gamma"], seed=11)
    expected = [S.render_sample(i, cfg) for i in range(20)]
    S.generate_lmdb(tmp_path / "one", 20, cfg, workers=1, progress=False)
    S.generate_lmdb(tmp_path / "two", 20, cfg, workers=2, progress=False, chunk=3)  # 7 chunks, 2 processes
    for name in ("one", "two"):
        env = lmdb.open(str(tmp_path / name), readonly=True, lock=False)
        with env.begin() as txn:
            assert txn.get(b"num-samples") == b"20"
            stored = [
                (txn.get(f"image-{i:09d}".encode()), txn.get(f"label-{i:09d}".encode()).decode())
                for i in range(1, 21)
            ]
            meta = json.loads(txn.get(b"synth-config"))
        env.close()
        assert stored == expected
        assert meta["seed"] == 11 and meta["num_words"] == 3
    ds = LmdbDataset(tmp_path / "two", CHARSET_94)
    assert len(ds) == 20 and ds.labels == [label for _, label in expected]
    assert ds[5][0].mode == "RGB" and ds.corrupt_count == 0


def test_non_latin_charset_renders_and_glyph_coverage(fonts):
    font = fonts[0]
    assert S.font_supports(font, "Tiếng Việt")
    assert not S.font_supports(font, "中")  # DejaVu has no CJK glyphs
    cfg = S.SynthConfig(
        fonts=fonts, charset=CHARSET_VIETNAMESE, words=["Tiếng", "Việt", "đường"], random_ratio=0
    )
    labels = {S.render_sample(i, cfg)[1] for i in range(10)}
    assert labels & {"Tiếng", "tiếng", "TIẾNG", "Việt", "việt", "VIỆT", "đường", "ĐƯỜNG"}
    nocover = S.SynthConfig(fonts=fonts, charset="中文")
    with pytest.raises(ValueError, match="none of the .* fonts"):
        S.render_sample(0, nocover)
    with pytest.raises(ValueError, match="no fonts"):
        S.render_sample(0, S.SynthConfig())


def test_curve_and_perspective_keep_the_text(fonts):
    font = S._font(fonts[0], 40)
    fill, _ = S._render_line("STOP", font, 0.0, 0)
    layer = Image.new("RGBA", fill.size, (0, 0, 0, 0))
    layer.putalpha(fill)
    ink = np.asarray(fill, dtype=float).sum()
    for seed in range(25):
        for op in (S._curve, S._perspective):
            out = op(layer, np.random.default_rng(seed))
            ratio = np.asarray(out.getchannel("A"), dtype=float).sum() / ink
            assert 0.7 < ratio < 1.35, (op.__name__, seed, ratio)
    # an arc really bends the baseline: the ink centre of the middle differs from the ends
    out = np.asarray(S._curve(layer, np.random.default_rng(1)).getchannel("A"), dtype=float)
    cols = np.arange(out.shape[0])[:, None]
    centre = (out * cols).sum(0) / np.maximum(out.sum(0), 1)
    w = out.shape[1]
    inked = out.sum(0) > 0
    ends = np.r_[centre[: w // 5][inked[: w // 5]], centre[-w // 5 :][inked[-w // 5 :]]]
    assert abs(centre[w // 2 - 3 : w // 2 + 3].mean() - ends.mean()) > 2


def test_perspective_coeffs_map_corners():
    src = [(0, 0), (100, 0), (100, 30), (0, 30)]
    dst = [(3, 5), (97, 0), (100, 33), (0, 28)]
    a, b, c, d, e, f, g, h = S.perspective_coeffs(src, dst)
    for (u, v), (x, y) in zip(src, dst):
        den = g * x + h * y + 1
        assert (a * x + b * y + c) / den == pytest.approx(u) and (d * x + e * y + f) / den == pytest.approx(v)


def test_find_fonts_in_given_folder(tmp_path, fonts):
    import shutil

    shutil.copy(fonts[0], tmp_path / "A.ttf")
    (tmp_path / "SomeMath.ttf").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert S.find_fonts([tmp_path]) == [tmp_path / "A.ttf"]
    assert S.find_fonts([tmp_path / "empty-does-not-exist"]) == []


def _font_variant(src: str, out, caps_only: bool = False, flavor: str | None = None) -> str:
    """A copy of ``src`` (optionally drawing lowercase letters with the capitals' glyphs) as .ttf/.woff/.woff2."""
    from fontTools.ttLib import TTFont

    font = TTFont(src)
    if caps_only:
        for table in font["cmap"].tables:
            for c in "abcdefghijklmnopqrstuvwxyz":
                if ord(c.upper()) in table.cmap:
                    table.cmap[ord(c)] = table.cmap[ord(c.upper())]
    font.flavor = flavor
    font.save(str(out))
    return str(out)


def test_woff_and_woff2_fonts_are_found_and_render(tmp_path, fonts):
    _font_variant(fonts[0], tmp_path / "A.woff", flavor="woff")
    _font_variant(fonts[0], tmp_path / "B.woff2", flavor="woff2")
    found = S.find_fonts([tmp_path])
    assert [f.name for f in found] == ["A.woff", "B.woff2"]
    for f in found:
        cfg = S.SynthConfig(fonts=[str(f)], words=["Parking"], random_ratio=0.0)
        data, label = S.render_sample(0, cfg)
        assert label.lower() == "parking" and Image.open(io.BytesIO(data)).width > 20


def test_caps_only_font_renders_and_labels_capitals(tmp_path, fonts):
    caps = _font_variant(fonts[0], tmp_path / "Caps.ttf", caps_only=True)
    assert S.font_is_caps_only(caps) and not S.font_is_caps_only(fonts[0])
    cfg = S.SynthConfig(fonts=[caps], words=["parking"], random_ratio=0.0)
    labels = {S.render_sample(i, cfg)[1] for i in range(8)}
    assert labels == {"PARKING"}  # whatever case was drawn from the vocabulary, the font shows capitals
    plain = S.SynthConfig(fonts=[fonts[0]], words=["parking"], random_ratio=0.0)
    assert "parking" in {S.render_sample(i, plain)[1] for i in range(8)}


def test_cut_letters_widen_the_crop_and_sign_colours_apply(fonts):
    base = dict(
        fonts=fonts[:1], words=["station"], random_ratio=0.0, p_perspective=0.0, p_curve=0.0, p_neighbour=0.0
    )
    widths = []
    for p in (0.0, 1.0):
        cfg = S.SynthConfig(**base, p_cut_letters=p, p_jpeg=0.0)
        widths.append(np.mean([S.render_image(i, cfg)[0].width for i in range(12)]))
    assert widths[1] > widths[0] * 1.05  # room for parts of neighbouring letters at the edges
    signs = S.SynthConfig(
        **base, p_sign=1.0, p_glare=1.0, p_lighting=0.0, p_noise=0.0, p_jpeg=0.0, p_blur=0.0
    )
    img, quality, label = S.render_image(3, signs)
    assert quality is None and label.lower() == "station" and img.mode == "RGB"


def test_rendered_words_dataset_is_a_function_of_the_index(fonts):
    cfg = S.SynthConfig(fonts=fonts, charset=CHARSET_94, words=["Exit", "Open"], seed=5)
    ds = S.RenderedWords(cfg, 50)
    assert len(ds) == 50 and ds.filter_counts["kept"] == 50 and ds.corrupt_count == 0
    a, b = ds[7], ds[7]
    assert a[1] == b[1] and np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert a[0].mode == "RGB" and set(a[1]) <= set(CHARSET_94)
    assert ds.sample_key(7) == "synth:5:7"
    with pytest.raises(IndexError):
        ds[50]
    with pytest.raises(ValueError, match="count"):
        S.RenderedWords(cfg, 0)
