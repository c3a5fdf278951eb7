"""Perspective-rectified word crops from quads, and the orientations tried for tall ones (PIL + numpy)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from clip4str.detect.geometry import quad_size

__all__ = ["MAX_CROP_SIDE", "homography", "orientation_candidates", "rectify"]

MAX_CROP_SIDE = 1024  # longest crop side in pixels; the recognizer resizes to 224 anyway


def homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 projective map H with H·src[i] ∝ dst[i] for four point pairs (4, 2) → (3, 3)."""
    a = np.zeros((8, 8))
    b = np.zeros(8)
    for i, ((x, y), (u, v)) in enumerate(zip(np.asarray(src, float), np.asarray(dst, float))):
        a[2 * i] = [x, y, 1, 0, 0, 0, -u * x, -u * y]
        a[2 * i + 1] = [0, 0, 0, x, y, 1, -v * x, -v * y]
        b[2 * i], b[2 * i + 1] = u, v
    h = np.linalg.lstsq(a, b, rcond=None)[0]
    return np.append(h, 1.0).reshape(3, 3)


def rectify(image: Image.Image, quad: np.ndarray, max_side: int = MAX_CROP_SIDE) -> Image.Image:
    """The quad's content as an upright RGB crop: its first edge (TL→TR) becomes the top.

    The crop is as wide as the quad's top/bottom edges and as tall as its side edges (at least 1 pixel,
    scaled down so its longest side is at most ``max_side``); pixels outside the image come out black.
    """
    w, h = quad_size(quad)
    scale = min(1.0, max_side / max(w, h, 1.0))
    out_w, out_h = max(1, round(w * scale)), max(1, round(h * scale))
    rect = np.array([[0, 0], [out_w, 0], [out_w, out_h], [0, out_h]], dtype=np.float64)
    coeffs = homography(rect, np.asarray(quad, dtype=np.float64)).ravel()[:8]  # output → input pixels
    return image.transform(
        (out_w, out_h),
        Image.Transform.PERSPECTIVE,
        tuple(float(c) for c in coeffs),
        resample=Image.Resampling.BICUBIC,
    )


def orientation_candidates(quad: np.ndarray, tall_ratio: float | None) -> list[np.ndarray]:
    """The relabellings of ``quad`` to read: itself, plus, when it is taller than ``tall_ratio`` times its
    width, the quarter turns either way (text running up or down). ``tall_ratio=None`` tries nothing else.

    Each candidate is the quad with another first corner, so ``rectify`` of it is the crop turned upright
    for that guess, and the winning candidate is also the box to report (its first corner at the text's
    top-left).
    """
    q = np.asarray(quad, dtype=np.float64)
    w, h = quad_size(q)
    if tall_ratio is None or h <= tall_ratio * w:
        return [q]
    # start at BL: the crop turned clockwise (text running up); at TR: counter-clockwise (running down)
    return [q, np.roll(q, -3, axis=0), np.roll(q, -1, axis=0)]
