"""Synthetic word images rendered with the system's fonts, written straight into an LMDB.

Each sample is a function of ``(seed, index)`` only, so a dataset is identical whatever the number of
worker processes. A sample is made in four stages:

1. **text**: a vocabulary word (case varied when the charset has both cases) or a random string over the
   charset (plain, digits-only, or with punctuation runs), and a font that has a glyph for every char;
2. **text layer** (RGBA): fill colour contrasting with the background, optional outline and drop shadow,
   extra letter spacing, a curved baseline (arc or wave), rotation, perspective;
3. **scene**: a background (flat, gradient, smooth noise texture, or shapes and stripes), sometimes a
   partly visible neighbouring line of other text (as in loose real crops), with random margins;
4. **degradation**: uneven lighting, Gaussian or motion blur, low resolution, Gaussian noise, JPEG
   artefacts (the stored bytes are the JPEG itself; otherwise PNG).

Fonts: any ``.ttf``/``.otf``/``.ttc``/``.woff``/``.woff2`` found by ``fc-list`` or under the usual font
folders (or the folders given); symbol, emoji and math fonts are skipped. DejaVu alone works;
``scripts/install_fonts.py`` installs hundreds of families (Google Fonts from npm, Debian packages) with their
licences. A font whose lowercase letters are capitals (``Bebas Neue``, small-caps faces) renders the word
in capitals, and the label says so.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from torch.utils.data import Dataset

from clip4str.charset import CHARSET_94
from clip4str.data.augment import add_noise, motion_blur
from clip4str.data.lmdb_writer import LmdbWriter

FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".woff", ".woff2")
FONT_DIRS = (
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    "~/.fonts",
    "~/.local/share/fonts",
    "/Library/Fonts",
    "/System/Library/Fonts",
    "C:/Windows/Fonts",
)
_SKIP_FONT_WORDS = ("math", "symbol", "emoji", "dingbat", "wingding", "webding", "icon", "awesome")


def find_fonts(dirs: Sequence[str | Path] | None = None) -> list[Path]:
    """Font files to render with, sorted (so a seed gives the same data on the same machine).

    With ``dirs``, those folders (or files) are scanned; otherwise ``fc-list`` is asked and the usual font
    folders are scanned. Symbol, emoji and math fonts are left out.
    """
    found: set[Path] = set()
    if dirs:
        for d in dirs:
            p = Path(d).expanduser()
            if p.is_file():
                found.add(p)
            elif p.is_dir():
                found.update(f for f in p.rglob("*") if f.suffix.lower() in FONT_SUFFIXES)
    else:
        if shutil.which("fc-list"):
            try:
                out = subprocess.run(
                    ["fc-list", "--format", "%{file}\n"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                ).stdout
                found.update(Path(line) for line in out.splitlines() if line.lower().endswith(FONT_SUFFIXES))
            except (OSError, subprocess.SubprocessError):
                pass
        for d in FONT_DIRS:
            p = Path(d).expanduser()
            if p.is_dir():
                found.update(f for f in p.rglob("*") if f.suffix.lower() in FONT_SUFFIXES)
    fonts = [f for f in found if f.is_file() and not any(w in f.name.lower() for w in _SKIP_FONT_WORDS)]
    if not fonts and not dirs:
        fonts = _bundled_dejavu_fonts()
    return sorted(fonts, key=lambda f: str(f))


def _bundled_dejavu_fonts() -> list[Path]:
    """DejaVu fonts shipped inside matplotlib (the ``train`` extra), for machines without system fonts.

    Located without importing matplotlib.
    """
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        return []
    folder = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf"
    return sorted(folder.glob("DejaVu*.ttf")) if folder.is_dir() else []


@dataclass
class SynthConfig:
    """What to render. ``words`` empty means random strings only; ``random_ratio`` mixes both."""

    charset: str = CHARSET_94
    words: list[str] = field(default_factory=list)
    random_ratio: float = 0.2
    min_length: int = 1
    max_length: int = 25
    font_size: tuple[int, int] = (22, 64)
    fonts: list[str] = field(default_factory=list)
    seed: int = 0
    # Probabilities of the optional effects.
    p_outline: float = 0.15
    p_shadow: float = 0.15
    p_curve: float = 0.15
    p_perspective: float = 0.35
    p_neighbour: float = 0.2
    p_cut_letters: float = 0.0  # parts of neighbouring letters at the left/right edges
    p_sign: float = 0.0  # sign colours (white on red, black on yellow, ...) and a plate with a border
    p_glare: float = 0.0
    p_blur: float = 0.3
    p_motion_blur: float = 0.1
    p_low_res: float = 0.25
    p_noise: float = 0.35
    p_jpeg: float = 0.6
    p_lighting: float = 0.3

    def __post_init__(self) -> None:
        if not self.charset:
            raise ValueError("synth: charset is empty")
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(
                f"synth: need 1 <= min_length <= max_length, got {self.min_length}, {self.max_length}"
            )
        allowed = set(self.charset)
        self.words = [unicodedata.normalize("NFC", w) for w in self.words]  # "Tiếng" typed decomposed too
        self.words = [w for w in self.words if w and self.min_length <= len(w) <= self.max_length]
        self.words = [w for w in self.words if set(w) <= allowed or set(_case_variants(w)[1]) <= allowed]


def _case_variants(word: str) -> tuple[str, str, str, str]:
    return word, word.lower(), word.upper(), word[:1].upper() + word[1:].lower()


def read_vocabulary(path: str | Path) -> list[str]:
    """One word (or short phrase) per line, UTF-8; blank lines and surrounding spaces ignored."""
    path = Path(path)
    if not path.exists() or path.is_dir():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    words = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    return [w for w in words if w]


# --------------------------------------------------------------------------------------------------
# Fonts and glyph coverage (cached per process)

_FONT_CACHE: dict[tuple[str, int, bool], ImageFont.FreeTypeFont] = {}
_COVERAGE: dict[str, dict[str, bool]] = {}
_MISSING_PROBE = "\U0010fffd"  # a private-use code point no text font maps


def _font(path: str, size: int, basic: bool = False) -> ImageFont.FreeTypeFont:
    """The font at ``size``: with text shaping (raqm) when Pillow has it, or the basic layout (``basic``)."""
    key = (path, size, basic)
    font = _FONT_CACHE.get(key)
    if font is None:
        if len(_FONT_CACHE) > 512:
            _FONT_CACHE.clear()
        engine = ImageFont.Layout.BASIC if basic else None
        font = _FONT_CACHE[key] = ImageFont.truetype(path, size, layout_engine=engine)
    return font


def font_supports(path: str, text: str) -> bool:
    """True when the font has its own glyph (not the .notdef box) for every non-space character of ``text``
    in NFC.

    The check uses the basic layout, without shaping: a font that lacks a precomposed letter such as "Ắ"
    would otherwise pass through text shaping, which decomposes it into "A" + breve + acute and, in fonts
    without mark positioning, draws the marks beside the letter ("MĂ´M"), teaching a model wrong shapes.
    """
    cache = _COVERAGE.setdefault(path, {})
    text = unicodedata.normalize("NFC", text)
    try:
        font = _font(path, 24, basic=True)
    except OSError:
        return False
    missing = None
    for ch in text:
        ok = cache.get(ch)
        if ok is None:
            if ch.isspace():
                ok = True
            else:
                if missing is None:
                    missing = bytes(font.getmask(_MISSING_PROBE)), font.getbbox(_MISSING_PROBE)
                mask = font.getmask(ch)
                ok = mask.size[0] > 0 and (bytes(mask), font.getbbox(ch)) != missing
            cache[ch] = ok
        if not ok:
            return False
    return True


_CAPS_ONLY: dict[str, bool] = {}
_CASE_PROBE = "aegnrty"


def _glyph_shape(font: ImageFont.FreeTypeFont, ch: str) -> np.ndarray | None:
    """The glyph's ink, cropped and resized to 16 x 16, as a zero-mean unit vector (None: no ink)."""
    mask = font.getmask(ch)
    if mask.size[0] == 0 or mask.size[1] == 0:
        return None
    img = Image.frombytes("L", mask.size, bytes(mask))
    bbox = img.getbbox()
    if bbox is None:
        return None
    v = np.asarray(img.crop(bbox).resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float64).ravel()
    v -= v.mean()
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else None


def font_is_caps_only(path: str) -> bool:
    """True when the font draws lowercase letters as capitals or small capitals (the shapes of
    ``a e g n r t y`` correlate with those of ``A E G N R T Y`` once scaled to the same box)."""
    cached = _CAPS_ONLY.get(path)
    if cached is None:
        try:
            font = _font(path, 48, basic=True)
        except OSError:
            return False
        scores = []
        for ch in _CASE_PROBE:
            lower, upper = _glyph_shape(font, ch), _glyph_shape(font, ch.upper())
            if lower is not None and upper is not None:
                scores.append(float(lower @ upper))
        cached = _CAPS_ONLY[path] = bool(scores) and float(np.mean(scores)) > 0.85
    return cached


# --------------------------------------------------------------------------------------------------
# Stage 1: text


def _random_string(rng: np.random.Generator, charset: str, lo: int, hi: int) -> str:
    # Lengths like real words: mostly 3-10 characters.
    n = int(np.clip(round(rng.gamma(3.0, 2.2)), lo, hi))
    digits = [c for c in charset if c.isdigit()]
    letters = [c for c in charset if c.isalpha()]
    kind = rng.random()
    if kind < 0.15 and digits:  # numbers, prices, dates
        pool = digits
        s = "".join(rng.choice(pool, n))
        seps = [c for c in ".,:/-" if c in charset]
        if n >= 3 and seps and rng.random() < 0.5:
            cut = int(rng.integers(1, n))
            s = s[:cut] + str(rng.choice(seps)) + s[cut + 1 :]
        return s
    if kind < 0.55 and letters:
        s = "".join(rng.choice(letters, n))
        case = rng.random()
        if case < 0.35:
            s = s.lower()
        elif case < 0.7:
            s = s.upper()
        else:
            s = s[:1].upper() + s[1:].lower()
        return "".join(c if c in charset else rng.choice(letters) for c in s)
    return "".join(rng.choice(list(charset), n))


def _pick_text(rng: np.random.Generator, cfg: SynthConfig) -> str:
    if cfg.words and rng.random() >= cfg.random_ratio:
        allowed = set(cfg.charset)
        for _ in range(10):
            word = cfg.words[int(rng.integers(len(cfg.words)))]
            r = rng.random()
            variants = _case_variants(word)
            preferred = variants[0 if r < 0.55 else 1 if r < 0.75 else 2 if r < 0.92 else 3]
            for variant in (preferred, *variants):  # e.g. a lowercase-only charset takes the lower form
                if set(variant) <= allowed:
                    return variant
    return _random_string(rng, cfg.charset, cfg.min_length, cfg.max_length)


# --------------------------------------------------------------------------------------------------
# Stage 2: text layer


def _luma(c: Sequence[int]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    c = rng.integers(0, 256, 3).astype(np.float64)
    if rng.random() < 0.6:  # real scenes are mostly muted: pull towards the colour's own grey
        c += (_luma(c) - c) * rng.uniform(0.3, 0.9)
    return tuple(int(v) for v in np.clip(np.rint(c), 0, 255))  # type: ignore[return-value]


def _contrasting_colour(rng: np.random.Generator, bg: Sequence[int], min_diff: float) -> tuple[int, int, int]:
    for _ in range(30):
        c = _random_colour(rng)
        if abs(_luma(c) - _luma(bg)) >= min_diff:
            return c
    return (0, 0, 0) if _luma(bg) > 127 else (255, 255, 255)


# (background, text) pairs of road, shop and safety signs, before jitter
SIGN_COLOURS = (
    ((200, 30, 35), (255, 255, 255)),  # white on red
    ((20, 70, 160), (255, 255, 255)),  # white on blue
    ((0, 110, 60), (255, 255, 255)),  # white on green
    ((250, 205, 20), (20, 20, 20)),  # black on yellow
    ((245, 130, 20), (15, 15, 15)),  # black on orange
    ((25, 25, 25), (255, 255, 255)),  # white on black
    ((25, 25, 25), (250, 200, 30)),  # yellow on black
    ((250, 250, 245), (200, 25, 30)),  # red on white
    ((250, 250, 245), (20, 60, 150)),  # blue on white
    ((245, 245, 240), (20, 20, 20)),  # black on white
    ((110, 60, 30), (250, 245, 230)),  # white on brown
    ((190, 190, 195), (25, 25, 30)),  # black on metal
)


def _sign_colours(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A sign's (background, text) colours, jittered, either way round."""
    bg, fg = SIGN_COLOURS[int(rng.integers(len(SIGN_COLOURS)))]
    if rng.random() < 0.25:
        bg, fg = fg, bg

    def jitter(c: Sequence[int]) -> tuple[int, int, int]:
        return tuple(int(v) for v in np.clip(np.asarray(c) + rng.normal(0, 12, 3), 0, 255))  # type: ignore[return-value]

    return jitter(bg), jitter(fg)


def graphemes(text: str) -> list[str]:
    """``text`` (NFC) cut into user-perceived characters: a base with its combining marks stays whole."""
    out: list[str] = []
    for ch in unicodedata.normalize("NFC", text):
        if out and (unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Mc")):
            out[-1] += ch
        else:
            out.append(ch)
    return out


def _render_line(
    text: str, font: ImageFont.FreeTypeFont, spacing: float, stroke: int
) -> tuple[Image.Image, Image.Image]:
    """Fill and outline masks (L) of one text line; ``spacing`` adds pixels between characters.

    The text is drawn in NFC, and with extra spacing one grapheme (a letter with its marks) at a time, so
    a mark is never separated from its letter.
    """
    text = unicodedata.normalize("NFC", text)
    pad = stroke + 2
    if spacing <= 0.5:
        left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
        w, h = right - left + 2 * pad, bottom - top + 2 * pad
        fill, outline = Image.new("L", (w, h)), Image.new("L", (w, h))
        xy = (pad - left, pad - top)
        ImageDraw.Draw(fill).text(xy, text, font=font, fill=255)
        if stroke:
            ImageDraw.Draw(outline).text(xy, text, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
        return fill, outline
    # Character by character with extra spacing (advance widths keep the font's metrics).
    ascent, descent = font.getmetrics()
    clusters = graphemes(text)
    widths = [font.getlength(c) for c in clusters]
    w = int(math.ceil(sum(widths) + spacing * (len(clusters) - 1))) + 2 * pad + 4
    h = ascent + descent + 2 * pad
    fill, outline = Image.new("L", (w, h)), Image.new("L", (w, h))
    df, do = ImageDraw.Draw(fill), ImageDraw.Draw(outline)
    x = float(pad)
    for c, cw in zip(clusters, widths):
        df.text((x, pad), c, font=font, fill=255)
        if stroke:
            do.text((x, pad), c, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
        x += cw + spacing
    return fill, outline


def _remap(layer: Image.Image, map_x: np.ndarray, map_y: np.ndarray) -> Image.Image:
    """Bilinear sampling: output pixel (i, j) takes input (map_y[i, j], map_x[i, j]); outside is transparent."""
    src = np.asarray(layer, dtype=np.float32)
    h, w = src.shape[:2]
    x0, y0 = np.floor(map_x).astype(np.int64), np.floor(map_y).astype(np.int64)
    fx, fy = (map_x - x0)[..., None], (map_y - y0)[..., None]
    padded = np.zeros((h + 2, w + 2, src.shape[2]), dtype=np.float32)
    padded[1:-1, 1:-1] = src

    def at(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return padded[np.clip(yy + 1, 0, h + 1), np.clip(xx + 1, 0, w + 1)]

    out = (
        at(y0, x0) * (1 - fx) * (1 - fy)
        + at(y0, x0 + 1) * fx * (1 - fy)
        + at(y0 + 1, x0) * (1 - fx) * fy
        + at(y0 + 1, x0 + 1) * fx * fy
    )
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode=layer.mode)


def _curve(layer: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Bend the baseline: a circular arc (either way) or a gentle wave."""
    w, h = layer.size
    if rng.random() < 0.6:
        # Arc: the line of length w is wrapped onto a circle of radius r (angle span w / r).
        span = rng.uniform(0.4, 1.6)
        r = w / span
        sign = 1 if rng.random() < 0.5 else -1
        out_h = int(math.ceil(h + r * (1 - math.cos(span / 2)))) + 2
        out_w = int(math.ceil(2 * (r + h) * math.sin(min(span / 2, math.pi / 2)))) + 2
        ys, xs = np.mgrid[0:out_h, 0:out_w].astype(np.float32)
        if sign > 0:  # smile-shaped baseline: circle centre above the text
            cx, cy = out_w / 2, out_h - h - r
            dy = ys - cy
            radius = np.hypot(xs - cx, dy)
            theta = np.arctan2(xs - cx, dy)
            map_x, map_y = theta * r + w / 2, radius - r
        else:  # frown: circle centre below
            cx, cy = out_w / 2, h + r
            dy = cy - ys
            radius = np.hypot(xs - cx, dy)
            theta = np.arctan2(xs - cx, dy)
            map_x, map_y = theta * r + w / 2, h - (radius - r)
        return _remap(layer, map_x, map_y)
    amp = rng.uniform(0.08, 0.3) * h
    freq = rng.uniform(0.5, 1.5) * 2 * math.pi / w
    phase = rng.uniform(0, 2 * math.pi)
    out_h = int(math.ceil(h + 2 * amp)) + 2
    ys, xs = np.mgrid[0:out_h, 0:w].astype(np.float32)
    return _remap(layer, xs, ys - amp - 1 - amp * np.sin(freq * xs + phase))


def perspective_coeffs(src: Sequence[tuple[float, float]], dst: Sequence[tuple[float, float]]) -> list[float]:
    """PIL PERSPECTIVE coefficients mapping output points ``dst`` back to input points ``src``."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return np.linalg.solve(np.asarray(rows, dtype=np.float64), np.asarray(rhs, dtype=np.float64)).tolist()


def _perspective(layer: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = layer.size
    j = rng.uniform(0.02, 0.12) * h
    jx = rng.uniform(0.0, 0.12) * w
    src = [(0, 0), (w, 0), (w, h), (0, h)]
    dst = [(float(x + rng.uniform(-jx, jx) * 0.5), float(y + rng.uniform(-j, j))) for x, y in src]
    # one side shorter than the other, as when a sign is seen at an angle
    if rng.random() < 0.5:
        k = rng.uniform(0, 0.15) * h
        top, bottom = (0, 3) if rng.random() < 0.5 else (1, 2)
        dst[top] = (dst[top][0], dst[top][1] + k)
        dst[bottom] = (dst[bottom][0], dst[bottom][1] - k)
    xs, ys = [p[0] for p in dst], [p[1] for p in dst]
    ox, oy = min(xs), min(ys)
    dst = [(x - ox, y - oy) for x, y in dst]
    size = (int(math.ceil(max(xs) - ox)) + 1, int(math.ceil(max(ys) - oy)) + 1)
    coeffs = perspective_coeffs(src, dst)
    return layer.transform(size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC)


def _text_layer(text: str, font_path: str, rng: np.random.Generator, cfg: SynthConfig, fg, outline_colour):
    size = int(rng.integers(cfg.font_size[0], cfg.font_size[1] + 1))
    font = _font(font_path, size)
    stroke = int(rng.integers(1, max(2, size // 12) + 1)) if rng.random() < cfg.p_outline else 0
    spacing = rng.uniform(0.05, 0.5) * size if rng.random() < 0.15 else 0.0
    fill, outline = _render_line(text, font, spacing, stroke)
    layer = Image.new("RGBA", fill.size, (*fg, 0))
    if stroke:
        layer.paste(Image.new("RGBA", fill.size, (*outline_colour, 255)), (0, 0), outline)
    layer.paste(Image.new("RGBA", fill.size, (*fg, 255)), (0, 0), fill)
    if rng.random() < cfg.p_curve and len(text) >= 3:
        layer = _curve(layer, rng)
    angle = rng.normal(0, 3.0) if rng.random() < 0.9 else rng.uniform(-25, 25)
    if abs(angle) > 0.3:
        layer = layer.rotate(float(angle), resample=Image.Resampling.BICUBIC, expand=True)
    if rng.random() < cfg.p_perspective:
        layer = _perspective(layer, rng)
    bbox = layer.getchannel("A").getbbox()
    return (layer.crop(bbox) if bbox else layer), size


# --------------------------------------------------------------------------------------------------
# Stage 3: background and scene


def _background(w: int, h: int, rng: np.random.Generator, base: tuple[int, int, int]) -> Image.Image:
    kind = rng.random()
    b = np.asarray(base, dtype=np.float32)
    if kind < 0.3:
        arr = np.broadcast_to(b, (h, w, 3)).copy()
    elif kind < 0.55:  # linear gradient towards a second colour
        other = np.asarray(_random_colour(rng), dtype=np.float32) * 0.4 + b * 0.6
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        t = xs * math.cos(angle) + ys * math.sin(angle)
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
        arr = b + (other - b) * t[..., None]
    elif kind < 0.8:  # smooth noise texture (upsampled low-resolution noise)
        gh, gw = int(rng.integers(2, 8)), int(rng.integers(2, 16))
        tex = rng.normal(0, rng.uniform(10, 45), size=(gh, gw, 3)).astype(np.float32)
        tex_img = Image.fromarray(np.clip(tex + 128, 0, 255).astype(np.uint8)).resize(
            (w, h), Image.Resampling.BICUBIC
        )
        arr = b + (np.asarray(tex_img, dtype=np.float32) - 128)
        arr += rng.normal(0, rng.uniform(0, 6), size=(h, w, 1))
    else:  # shapes and stripes (window frames, sign borders, bricks)
        img = Image.new("RGB", (w, h), tuple(int(v) for v in b))
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 6))):
            c = tuple(int(v) for v in np.clip(b + rng.normal(0, 40, 3), 0, 255))
            x0, y0 = float(rng.uniform(-w * 0.2, w)), float(rng.uniform(-h * 0.2, h))
            x1, y1 = x0 + float(rng.uniform(2, w)), y0 + float(rng.uniform(2, h))
            shape = rng.random()
            if shape < 0.4:
                d.rectangle([x0, y0, x1, y1], fill=c)
            elif shape < 0.7:
                d.ellipse([x0, y0, x1, y1], fill=c)
            else:
                d.line([x0, y0, x1, y1], fill=c, width=int(rng.integers(1, max(2, h // 6))))
        arr = np.asarray(img, dtype=np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _neighbour_line(
    scene: Image.Image, rng: np.random.Generator, cfg: SynthConfig, font_path: str, colour
) -> None:
    """Paste a partly visible line of other text above or below the word (loose real crops show one)."""
    w, h = scene.size
    text = _random_string(rng, cfg.charset, 3, 15)
    if not font_supports(font_path, text):
        return
    font = _font(font_path, int(max(8, h * rng.uniform(0.3, 0.6))))
    fill, _ = _render_line(text, font, 0.0, 0)
    layer = Image.new("RGBA", fill.size, (*colour, 0))
    layer.paste(Image.new("RGBA", fill.size, (*colour, 255)), (0, 0), fill)
    x = int(rng.integers(-layer.width // 2, max(1, w - layer.width // 2)))
    y = (
        -int(layer.height * rng.uniform(0.4, 0.8))
        if rng.random() < 0.5
        else h - int(layer.height * rng.uniform(0.2, 0.6))
    )
    scene.paste(layer, (x, y), layer)


def _cut_letters(font_path: str, font_size: int, rng: np.random.Generator, cfg: SynthConfig, fg):
    """A few letters in the word's font and colour, to be cut by the crop's edge (RGBA layer)."""
    text = _random_string(rng, cfg.charset, 1, 3)[:3]
    if not font_supports(font_path, text):
        return None
    fill, _ = _render_line(text, _font(font_path, font_size), 0.0, 0)
    layer = Image.new("RGBA", fill.size, (*fg, 0))
    layer.paste(Image.new("RGBA", fill.size, (*fg, 255)), (0, 0), fill)
    bbox = fill.getbbox()
    return layer.crop(bbox) if bbox else None


def _compose(
    layer: Image.Image,
    font_size: int,
    rng: np.random.Generator,
    cfg: SynthConfig,
    bg_colour,
    fg,
    font_path: str,
    sign: bool = False,
):
    lw, lh = layer.size
    unit = max(4, font_size)
    left, right = (int(rng.uniform(-0.04, 0.45) * unit) for _ in range(2))
    top, bottom = (int(rng.uniform(-0.04, 0.35) * unit) for _ in range(2))
    cut = {}
    if rng.random() < cfg.p_cut_letters:
        # parts of the neighbouring words' letters at one or both edges, as in crops cut from a text line
        sides = (
            ("left", "right") if rng.random() < 0.35 else (("left",) if rng.random() < 0.5 else ("right",))
        )
        for side in sides:
            piece = _cut_letters(font_path, font_size, rng, cfg, fg)
            if piece is None:
                continue
            gap = int(rng.uniform(0.12, 0.45) * unit)  # the space between words
            visible = max(1, int(piece.width * rng.uniform(0.1, 0.6)))
            cut[side] = (piece, gap)
            if side == "left":
                left = gap + visible
            else:
                right = gap + visible
    w, h = max(4, lw + left + right), max(4, lh + top + bottom)
    scene = _background(w, h, rng, bg_colour).convert("RGBA")
    if sign and rng.random() < 0.5:  # the sign's border, often partly outside the crop
        inset = int(rng.uniform(-0.1, 0.25) * unit)
        width = max(1, int(rng.uniform(0.04, 0.12) * unit))
        ImageDraw.Draw(scene).rounded_rectangle(
            [inset, inset, w - 1 - inset, h - 1 - inset],
            radius=int(rng.uniform(0, 0.4) * unit),
            outline=(*fg, 255),
            width=width,
        )
    for side, (piece, gap) in cut.items():
        y = top + (lh - piece.height) // 2 + int(rng.normal(0, 0.03 * unit))
        x = left - gap - piece.width if side == "left" else left + lw + gap
        scene.paste(piece, (x, y), piece)
    if rng.random() < cfg.p_shadow:
        alpha = layer.getchannel("A").filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5)))
        shade = tuple(int(v * 0.3) for v in bg_colour) if _luma(fg) > 127 else (0, 0, 0)
        shadow = Image.new("RGBA", layer.size, (*shade, 0))
        shadow.putalpha(alpha.point(lambda a: int(a * 0.8)))
        off = max(1, font_size // 15)
        scene.alpha_composite(shadow, (left + off * int(rng.choice([-1, 1])), top + off))
    scene.alpha_composite(layer, (left, top))
    if rng.random() < cfg.p_neighbour:
        _neighbour_line(scene, rng, cfg, cfg.fonts[int(rng.integers(len(cfg.fonts)))], fg)
    return scene.convert("RGB")


# --------------------------------------------------------------------------------------------------
# Stage 4: degradation and encoding


def _degrade(img: Image.Image, rng: np.random.Generator, cfg: SynthConfig) -> tuple[Image.Image, int | None]:
    w, h = img.size
    if rng.random() < cfg.p_lighting:
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        a = rng.uniform(0, 2 * math.pi)
        t = (xs * math.cos(a) + ys * math.sin(a)) / max(w, h)
        gain = 1.0 + rng.uniform(-0.5, 0.5) * (t - t.mean())
        arr = np.asarray(img, dtype=np.float32) * gain[..., None] + rng.uniform(-30, 30)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < cfg.p_glare:  # a specular highlight: a soft bright ellipse washing out part of the word
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        sx, sy = rng.uniform(0.1, 0.5) * w, rng.uniform(0.3, 1.2) * h
        blob = np.exp(-(((xs - cx) / sx) ** 2 + ((ys - cy) / sy) ** 2))
        arr = np.asarray(img, dtype=np.float32)
        arr += (255 - arr) * (rng.uniform(0.4, 0.9) * blob)[..., None]
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < cfg.p_blur:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2) * max(1.0, h / 40)))
    if rng.random() < cfg.p_motion_blur:
        img = motion_blur(img, int(rng.integers(1, 4)) * 2 + 1, rng.uniform(0, 360), rng.uniform(-1, 1))
    if rng.random() < cfg.p_low_res:
        s = rng.uniform(0.3, 0.8)
        small = img.resize((max(2, int(w * s)), max(2, int(h * s))), Image.Resampling.BILINEAR)
        img = small.resize(
            (w, h), Image.Resampling.BILINEAR if rng.random() < 0.5 else Image.Resampling.BICUBIC
        )
    if rng.random() < cfg.p_noise:
        sigma = rng.uniform(2, 14)
        noise = rng.normal(0, sigma, size=(h, w) if rng.random() < 0.5 else (h, w, 3))
        img = add_noise(img, noise)
    quality = int(rng.integers(15, 96)) if rng.random() < cfg.p_jpeg else None
    return img, quality


def font_package_hint(text: str) -> str:
    """A Debian font package that covers ``text``'s script (CJK needs its own Noto package)."""
    cjk = any(
        "\u2e80" <= ch <= "\u9fff"
        or "\uac00" <= ch <= "\ud7af"
        or "\uf900" <= ch <= "\ufaff"
        or "\uff00" <= ch <= "\uffef"
        for ch in text
    )
    return "fonts-noto-cjk" if cjk else "fonts-noto-core"


def render_sample(index: int, cfg: SynthConfig) -> tuple[bytes, str]:
    """Render sample ``index`` of the dataset defined by ``cfg``: (encoded image bytes, label).

    Deterministic in ``(cfg, index)``. The label is the rendered text (NFC, as given). The bytes are a JPEG
    when the sample's degradation includes JPEG loss, else a PNG.
    """
    img, quality, text = render_image(index, cfg)
    return _encode(img, quality), text


def _encode(img: Image.Image, quality: int | None) -> bytes:
    """JPEG at ``quality`` (the sample's JPEG loss), or PNG when None."""
    buf = io.BytesIO()
    if quality is not None:
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def render_image(index: int, cfg: SynthConfig) -> tuple[Image.Image, int | None, str]:
    """Sample ``index`` before encoding: (RGB image, JPEG quality or None, label)."""
    if not cfg.fonts:
        raise ValueError("synth: no fonts given (see find_fonts)")
    rng = np.random.default_rng([cfg.seed, index])
    for _ in range(50):
        text = unicodedata.normalize("NFC", _pick_text(rng, cfg))
        order = rng.permutation(len(cfg.fonts))
        font_path = next(
            (cfg.fonts[int(i)] for i in order[:8] if font_supports(cfg.fonts[int(i)], text)), None
        )
        if font_path is not None:
            break
    else:
        raise ValueError(
            f"synth: none of the {len(cfg.fonts)} fonts renders the charset's characters "
            f"(last text {text!r}); install fonts that cover it (e.g. Debian {font_package_hint(text)})"
        )
    if text != text.upper() and font_is_caps_only(font_path):
        upper = text.upper()  # the font draws capitals whatever the case: so does the label
        if set(upper) <= set(cfg.charset) and len(upper) <= cfg.max_length:
            text = upper
    sign = rng.random() < cfg.p_sign
    if sign:
        bg, fg = _sign_colours(rng)
    else:
        bg = _random_colour(rng)
        fg = _contrasting_colour(rng, bg, rng.uniform(50, 160))
    outline = _contrasting_colour(rng, fg, 60)
    layer, size = _text_layer(text, font_path, rng, cfg, fg, outline)
    img = _compose(layer, size, rng, cfg, bg, fg, font_path, sign)
    img, quality = _degrade(img, rng, cfg)
    return img, quality, text


class RenderedWords(Dataset):
    """``count`` synthetic words rendered when read, for training without an LMDB in between:
    ``dataset[i] -> (RGB PIL image, label)``, a function of ``(cfg, i)`` alone (so a resumed run and any
    number of loader workers see the same images). JPEG loss is applied by a real JPEG round trip.

    Offers the statistics :class:`~clip4str.data.lmdb_dataset.LmdbConcatDataset` reads of its members.
    """

    def __init__(self, cfg: SynthConfig, count: int, name: str = "synth") -> None:
        if count < 1:
            raise ValueError(f"RenderedWords: count must be >= 1, got {count}")
        if not cfg.fonts:
            raise ValueError("RenderedWords: no fonts given (see find_fonts)")
        self.cfg = cfg
        self.count = count
        self.name = name
        self.filter_counts: Counter[str] = Counter({"seen": count, "kept": count})
        self.corrupt_count = 0

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[Image.Image, str]:
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.name} with {self.count} samples")
        img, quality, text = render_image(index, self.cfg)
        if quality is not None:
            img = Image.open(io.BytesIO(_encode(img, quality))).convert("RGB")
        return img, text

    def sample_key(self, index: int) -> str:
        return f"{self.name}:{self.cfg.seed}:{index}"


# --------------------------------------------------------------------------------------------------
# Generation into an LMDB, on all cores

_WORKER_CFG: SynthConfig | None = None


def _init_worker(cfg: SynthConfig) -> None:
    global _WORKER_CFG
    _WORKER_CFG = cfg


def _render_chunk(bounds: tuple[int, int]) -> list[tuple[bytes, str]]:
    assert _WORKER_CFG is not None
    return [render_sample(i, _WORKER_CFG) for i in range(*bounds)]


def iter_samples(
    cfg: SynthConfig, count: int, start: int = 0, workers: int | None = None, chunk: int = 64
) -> Iterator[tuple[bytes, str]]:
    """Samples ``start .. start+count-1`` in order, rendered by ``workers`` processes (default: all cores)."""
    workers = workers or os.cpu_count() or 1
    bounds = [(i, min(i + chunk, start + count)) for i in range(start, start + count, chunk)]
    if workers <= 1 or count <= chunk:
        for b in bounds:
            yield from (render_sample(i, cfg) for i in range(*b))
        return
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg,)) as pool:
        for part in pool.imap(_render_chunk, bounds):
            yield from part


def generate_lmdb(
    out: str | Path,
    count: int,
    cfg: SynthConfig,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    chunk: int = 64,
) -> Path:
    """Render ``count`` samples into a new LMDB at ``out`` (atomically); returns its path.

    The LMDB also holds a ``synth-config`` key (JSON of ``cfg`` without the word list) for provenance.
    """
    if count < 1:
        raise ValueError(f"synth: count must be >= 1, got {count}")
    from clip4str.progress import ProgressBar

    with LmdbWriter(out, overwrite=overwrite) as writer:
        # a bar on a terminal; plain periodic lines in a log
        with ProgressBar(total=count, unit="img", desc="synth", enabled=progress, smoothing=0.1) as bar:
            for image, label in iter_samples(cfg, count, workers=workers, chunk=chunk):
                writer.add(image, label)
                bar.update(1)
        meta = {k: v for k, v in asdict(cfg).items() if k != "words"}
        meta["num_words"] = len(cfg.words)
        writer.put_meta(b"synth-config", json.dumps(meta, ensure_ascii=False).encode())
    return Path(out)
