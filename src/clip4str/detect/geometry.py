"""Quadrilateral geometry in plain numpy: point order, areas, intersections, IoU, reading order.

A *quad* is a (4, 2) float array of (x, y) image coordinates (y down), clockwise on screen starting at the
text's top-left corner: top-left, top-right, bottom-right, bottom-left.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "MAX_COORDINATE",
    "as_quads",
    "clockwise",
    "order_quad",
    "polygon_area",
    "polygon_intersection_area",
    "polygon_iou",
    "quad_size",
    "reading_order",
    "rotate_quad",
]

MAX_COORDINATE = 10_000_000  # pixels; farther than any decodable image reaches (PIL's limit is 179 Mpx)


def as_quads(boxes: object) -> np.ndarray:
    """Boxes as (K, 4, 2) float64: quads ``[[x, y] x 4]`` or axis-aligned ``[x0, y0, x1, y1]`` rectangles.

    Raises ValueError naming the box that is neither, or that holds a non-finite number.
    """
    if isinstance(boxes, np.ndarray) and boxes.ndim == 3 and boxes.shape[1:] == (4, 2):
        out = boxes.astype(np.float64)
    else:
        rows = []
        for i, box in enumerate(boxes):  # type: ignore[attr-defined]
            try:
                a = np.asarray(box, dtype=np.float64)
            except (TypeError, ValueError, OverflowError, RecursionError) as err:
                raise ValueError(f"box {i}: not numbers: {_short(box)}") from err
            if a.shape == (4,):
                x0, y0, x1, y1 = a
                if x1 < x0 or y1 < y0:
                    raise ValueError(
                        f"box {i}: [x0, y0, x1, y1] needs x0 <= x1 and y0 <= y1, got {a.tolist()}"
                    )
                a = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
            elif a.shape == (8,):
                a = a.reshape(4, 2)
            if a.shape != (4, 2):
                raise ValueError(
                    f"box {i}: expected [[x, y] x 4], 8 numbers or [x0, y0, x1, y1], got shape {a.shape}"
                )
            rows.append(a)
        out = np.stack(rows) if rows else np.zeros((0, 4, 2))
    if not np.isfinite(out).all():
        raise ValueError("boxes hold NaN or infinite coordinates")
    if out.size and np.abs(out).max() > MAX_COORDINATE:
        i = int(np.abs(out).reshape(len(out), -1).max(axis=1).argmax())
        raise ValueError(
            f"box {i}: a coordinate beyond ±{MAX_COORDINATE:,} pixels: {_short(out[i].tolist())}"
        )
    return out


def _short(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a hostile box may be huge)."""
    try:
        text = repr(value)
    except RecursionError:
        text = "(too deeply nested)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def polygon_area(poly: np.ndarray) -> float:
    """Signed shoelace area of an (N, 2) polygon: positive when clockwise on screen (y down)."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def order_quad(quad: np.ndarray) -> np.ndarray:
    """Reorder a quad's corners to clockwise on screen, starting so that the first edge is the most
    nearly left-to-right one (the higher of two equal ones): TL, TR, BR, BL. (4, 2) → (4, 2)."""
    q = np.asarray(quad, dtype=np.float64)
    if polygon_area(q) < 0:
        q = q[::-1]
    keys = []
    for k in range(4):
        d = q[(k + 1) % 4] - q[k]
        keys.append((round(abs(float(np.arctan2(d[1], d[0]))), 3), q[k, 1] + q[(k + 1) % 4, 1]))
    return np.roll(q, -min(range(4), key=keys.__getitem__), axis=0)


def clockwise(quad: np.ndarray) -> np.ndarray:
    """The quad clockwise on screen, keeping its first corner (a counter-clockwise quad is reversed)."""
    q = np.asarray(quad, dtype=np.float64)
    return q if polygon_area(q) >= 0 else np.roll(q[::-1], 1, axis=0)


def rotate_quad(quad: np.ndarray, quarter_turns: int) -> np.ndarray:
    """Re-label a quad's corners so the text's top-left moves ``quarter_turns`` corners clockwise
    (the crop is then rotated by that many quarter turns counter-clockwise to be upright). (4, 2) → (4, 2)."""
    return np.roll(np.asarray(quad), -(quarter_turns % 4), axis=0)


def quad_size(quad: np.ndarray) -> tuple[float, float]:
    """(width, height) of a quad read from its top-left: mean lengths of its top/bottom and left/right edges."""
    q = np.asarray(quad, dtype=np.float64)
    w = 0.5 * (np.linalg.norm(q[1] - q[0]) + np.linalg.norm(q[2] - q[3]))
    h = 0.5 * (np.linalg.norm(q[3] - q[0]) + np.linalg.norm(q[2] - q[1]))
    return float(w), float(h)


def _is_convex(poly: np.ndarray) -> bool:
    d = np.roll(poly, -1, axis=0) - poly
    cross = d[:, 0] * np.roll(d[:, 1], -1) - d[:, 1] * np.roll(d[:, 0], -1)
    return bool((cross >= -1e-9).all() or (cross <= 1e-9).all())


def _clip_convex(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Sutherland–Hodgman: ``subject`` (any simple polygon) clipped by the convex, clockwise-on-screen
    ``clip``. Returns the (M, 2) intersection polygon (M may be 0)."""
    out = subject
    for i in range(len(clip)):
        if len(out) == 0:
            break
        a, b = clip[i], clip[(i + 1) % len(clip)]
        edge = b - a
        # inside = right of the edge on screen for a clockwise (y-down) polygon → cross >= 0
        side = edge[0] * (out[:, 1] - a[1]) - edge[1] * (out[:, 0] - a[0])
        inside = side >= 0
        pts = []
        n = len(out)
        for j in range(n):
            p, q = out[j], out[(j + 1) % n]
            sp, sq = side[j], side[(j + 1) % n]
            if inside[j]:
                pts.append(p)
            if inside[j] != inside[(j + 1) % n]:
                t = sp / (sp - sq)
                pts.append(p + t * (q - p))
        out = np.array(pts) if pts else np.zeros((0, 2))
    return out


def _convex_parts(poly: np.ndarray) -> list[np.ndarray]:
    """A simple quad as convex clockwise pieces: itself, or two triangles split along its inner diagonal."""
    if polygon_area(poly) < 0:
        poly = poly[::-1]
    if len(poly) != 4 or _is_convex(poly):
        return [poly]
    for k in (0, 1):
        p0, p2 = poly[k], poly[k + 2]
        t1 = np.array([p0, poly[k + 1], p2])
        t2 = np.array([p2, poly[(k + 3) % 4], p0])
        if polygon_area(t1) > 0 and polygon_area(t2) > 0:
            return [t1, t2]
    return [poly]  # self-intersecting: treated as given


def polygon_intersection_area(a: np.ndarray, b: np.ndarray) -> float:
    """Area of the intersection of two simple polygons (quads: convex or not), in square pixels."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    total = 0.0
    for pa in _convex_parts(a):
        for pb in _convex_parts(b):
            inter = _clip_convex(pa, pb)
            if len(inter) >= 3:
                total += abs(polygon_area(inter))
    return total


def polygon_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two polygons (0 when both are degenerate)."""
    inter = polygon_intersection_area(a, b)
    union = abs(polygon_area(np.asarray(a, float))) + abs(polygon_area(np.asarray(b, float))) - inter
    return inter / union if union > 0 else 0.0


def reading_order(quads: Sequence[np.ndarray] | np.ndarray) -> list[int]:
    """Indices of the quads in reading order: lines top to bottom, words left to right within a line.

    A quad joins a line when its vertical centre lies within half a line height of the line's centre.
    """
    qs = [np.asarray(q, dtype=np.float64) for q in quads]
    if not qs:
        return []
    centres = np.array([q.mean(axis=0) for q in qs])
    heights = np.array([max(q[:, 1].max() - q[:, 1].min(), 1.0) for q in qs])
    lines: list[list[int]] = []
    line_y: list[float] = []
    line_h: list[float] = []
    for i in np.argsort(centres[:, 1], kind="stable"):
        for k in range(len(lines)):
            if abs(centres[i, 1] - line_y[k]) <= 0.5 * min(line_h[k], heights[i]):
                lines[k].append(int(i))
                ys = centres[lines[k], 1]
                line_y[k] = float(ys.mean())
                line_h[k] = float(np.median(heights[lines[k]]))
                break
        else:
            lines.append([int(i)])
            line_y.append(float(centres[i, 1]))
            line_h.append(float(heights[i]))
    order = sorted(range(len(lines)), key=lambda k: line_y[k])
    return [i for k in order for i in sorted(lines[k], key=lambda j: centres[j, 0])]
