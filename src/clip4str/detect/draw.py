"""Draw words (boxes and texts) on a photo."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from clip4str.files import OutputGuard

__all__ = ["draw_words", "save_drawing"]

_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (240, 50, 230)]


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def draw_words(image: Image.Image, words: Sequence[Any]) -> Image.Image:
    """A copy of ``image`` (RGB) with each word's box outlined and its text written at its top-left corner.

    ``words``: objects with ``box`` (4 × [x, y]) and ``text`` (e.g. :class:`~clip4str.detect.Word`).
    """
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    line = max(1, round(max(out.size) / 600))
    font = _font(max(10, round(max(out.size) / 80)))
    for i, word in enumerate(words):
        colour = _COLOURS[i % len(_COLOURS)]
        pts = [(float(x), float(y)) for x, y in word.box]
        draw.polygon(pts, outline=colour, width=line)
        draw.ellipse(
            [pts[0][0] - 2 * line, pts[0][1] - 2 * line, pts[0][0] + 2 * line, pts[0][1] + 2 * line],
            fill=colour,
        )
        if word.text:
            x, y = min(p[0] for p in pts), min(p[1] for p in pts)
            left, top, right, bottom = draw.textbbox((0, 0), word.text, font=font)
            y = max(0.0, y - (bottom - top) - 2 * line)
            draw.rectangle([x, y, x + right - left + 2 * line, y + bottom + line], fill=colour)
            draw.text((x + line, y), word.text, fill=(255, 255, 255), font=font)
    return out


def save_drawing(
    image: Image.Image, words: Sequence[Any], path: str | Path, guard: OutputGuard | None = None
) -> Path:
    """Draw ``words`` on ``image`` and save it at ``path`` (its folder is made; JPEG at quality 90 for a
    .jpg/.jpeg name, otherwise the format the suffix names), atomically through ``guard`` (a
    :class:`~clip4str.files.OutputGuard`; by default one that may replace a file there). Returns the path."""
    guard = OutputGuard("save_drawing", overwrite=True) if guard is None else guard
    drawn = draw_words(image, words)
    params = {"quality": 90} if Path(path).suffix.lower() in (".jpg", ".jpeg") else {}
    return guard.save_image(drawn, path, "--draw", **params)
