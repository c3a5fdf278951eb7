"""Quad geometry, perspective crops and reading order (clip4str.detect.geometry / crops): no model, no data."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clip4str.detect.crops import homography, orientation_candidates, rectify
from clip4str.detect.geometry import (
    as_quads,
    clockwise,
    order_quad,
    polygon_area,
    polygon_intersection_area,
    polygon_iou,
    quad_size,
    reading_order,
)


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def test_as_quads_accepts_quads_eight_numbers_and_rectangles():
    q = as_quads([[[0, 0], [4, 0], [4, 2], [0, 2]], [0, 0, 4, 0, 4, 2, 0, 2], [0, 0, 4, 2]])
    assert q.shape == (3, 4, 2)
    assert (q == rect(0, 0, 4, 2)).all()
    assert as_quads([]).shape == (0, 4, 2)
    with pytest.raises(ValueError, match="box 1"):
        as_quads([[0, 0, 1, 1], [1, 2, 3]])
    with pytest.raises(ValueError, match="x0 <= x1"):
        as_quads([[5, 0, 1, 1]])
    with pytest.raises(ValueError, match="NaN"):
        as_quads([[0, 0, float("nan"), 1]])


def test_areas_and_iou_of_hand_made_polygons():
    a = rect(0, 0, 10, 10)
    assert polygon_area(a) == 100  # clockwise on screen: positive
    assert polygon_area(a[::-1]) == -100
    assert polygon_iou(a, a) == pytest.approx(1.0)
    assert polygon_iou(a, rect(5, 0, 15, 10)) == pytest.approx(50 / 150)  # half overlap
    assert polygon_iou(a, rect(20, 20, 30, 30)) == 0.0
    assert polygon_iou(a, a[::-1]) == pytest.approx(1.0)  # orientation does not matter
    diamond = np.array([[5, 0], [10, 5], [5, 10], [0, 5]], float)  # inscribed: area 50
    assert polygon_intersection_area(a, diamond) == pytest.approx(50)
    # a non-convex "arrow" quad: area 10*10/2 - notch
    arrow = np.array([[0, 0], [10, 5], [0, 10], [3, 5]], float)
    assert abs(polygon_area(arrow)) == pytest.approx(35)
    assert polygon_intersection_area(arrow, a) == pytest.approx(35)
    assert polygon_intersection_area(arrow, rect(0, 0, 10, 5)) == pytest.approx(17.5)


def test_order_quad_starts_top_left_clockwise_whatever_the_input_order():
    r = rect(10, 20, 50, 30)
    for k in range(4):
        assert (order_quad(np.roll(r, k, axis=0)) == r).all()
        assert (order_quad(np.roll(r[::-1], k, axis=0)) == r).all()
    # a slanted word keeps its top edge first
    slanted = np.array([[0, 10], [40, 0], [43, 12], [3, 22]], float)
    assert (order_quad(np.roll(slanted, 2, axis=0)) == slanted).all()


def test_clockwise_keeps_the_first_corner():
    r = rect(0, 0, 4, 2)
    ccw = np.array([r[0], r[3], r[2], r[1]])
    assert (clockwise(ccw) == r).all()
    assert (clockwise(r) == r).all()


def test_quad_size_and_orientation_candidates():
    wide, tall = rect(0, 0, 40, 10), rect(0, 0, 10, 40)
    assert quad_size(wide) == (40, 10)
    assert len(orientation_candidates(wide, 1.5)) == 1
    cands = orientation_candidates(tall, 1.5)
    assert len(cands) == 3
    assert (cands[0] == tall).all()
    assert [quad_size(c) for c in cands[1:]] == [(40, 10), (40, 10)]
    assert (cands[1][0] == tall[3]).all()  # text running up: starts at the bottom-left
    assert (cands[2][0] == tall[1]).all()  # text running down: starts at the top-right
    assert len(orientation_candidates(tall, None)) == 1


def test_homography_maps_the_four_points():
    src = rect(0, 0, 100, 20)
    dst = np.array([[10, 5], [90, 15], [95, 40], [8, 30]], float)
    h = homography(src, dst)
    pts = np.c_[src, np.ones(4)] @ h.T
    assert np.allclose(pts[:, :2] / pts[:, 2:], dst)


def _quadrant_image() -> Image.Image:
    """200 x 100: red left half, blue right half, a green band along the top."""
    a = np.zeros((100, 200, 3), np.uint8)
    a[:, :100] = (255, 0, 0)
    a[:, 100:] = (0, 0, 255)
    a[:10] = (0, 255, 0)
    return Image.fromarray(a)


def test_rectify_gives_the_upright_content_of_the_quad():
    img = _quadrant_image()
    crop = rectify(img, rect(50, 0, 150, 100))
    assert crop.size == (100, 100)
    c = np.asarray(crop).astype(int)
    assert (c[50, 10] == (255, 0, 0)).all() and (c[50, 90] == (0, 0, 255)).all() and c[2, 50, 1] == 255
    # the same region labelled from its bottom-left corner comes out turned a quarter clockwise
    turned = np.asarray(rectify(img, np.roll(rect(50, 0, 150, 100), -3, axis=0))).astype(int)
    assert (turned[10, 50] == (255, 0, 0)).all() and (turned[90, 50] == (0, 0, 255)).all()
    assert turned[50, 97, 1] == 255  # the green top band is now on the right
    # a tiny or degenerate quad still gives a 1-pixel crop, a huge one is bounded
    assert rectify(img, rect(5, 5, 5, 5)).size == (1, 1)
    assert max(rectify(img, rect(0, 0, 20000, 100)).size) == 1024


def test_reading_order_lines_top_to_bottom_words_left_to_right():
    boxes = [
        rect(300, 12, 380, 42),  # line 1, third
        rect(10, 100, 90, 130),  # line 2, first
        rect(10, 10, 90, 40),  # line 1, first
        rect(150, 8, 260, 38),  # line 1, second (a little higher)
        rect(200, 102, 260, 128),  # line 2, second
    ]
    assert reading_order(boxes) == [2, 3, 0, 1, 4]
    assert reading_order([]) == []
