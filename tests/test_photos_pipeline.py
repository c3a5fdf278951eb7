"""Whole photos through clip4str.detect: the detector interface, crops, orientation, reading order, the
result structure, bad input (no text, huge photos, unreadable files) and RapidOCR's detector on real photos.

A fake reader stands in for the model here (the crops' geometry and colours decide what it "reads"); the
model's own reading of real photos is tested in test_photos_real.py.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import IN_CI
from PIL import Image, ImageDraw

from clip4str.detect import (
    Detector,
    FunctionDetector,
    Photo,
    Word,
    as_detector,
    iter_photos,
    read_photos,
    read_photos_timed,
    read_regions,
)
from clip4str.errors import ImageReadError
from clip4str.eval_scenes import load_gt, score_photo


@dataclass
class Read:
    text: str
    confidence: float


class FakeReader:
    """Reads ``WxH`` of each crop; confident only when the crop is wide and red on its left (the upright
    orientation of the test pictures)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def read(self, images):
        self.calls.append(len(images))
        out = []
        for im in images:
            a = np.asarray(im.convert("RGB")).astype(int)
            left = a[:, : max(1, a.shape[1] // 4)].reshape(-1, 3).mean(0)
            upright = im.width > im.height and left[0] > left[2] + 50
            out.append(Read(text=f"{im.width}x{im.height}", confidence=0.9 if upright else 0.1))
        return out


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def picture(size=(400, 300), words=()) -> Image.Image:
    """A grey picture with 'words': boxes red at their reading start, blue at their end."""
    img = Image.new("RGB", size, (128, 128, 128))
    draw = ImageDraw.Draw(img)
    for (x0, y0, x1, y1), direction in words:
        if direction == "right":
            draw.rectangle([x0, y0, (x0 + x1) // 2, y1], fill=(255, 0, 0))
            draw.rectangle([(x0 + x1) // 2, y0, x1, y1], fill=(0, 0, 255))
        else:  # text running up: starts at the bottom
            draw.rectangle([x0, (y0 + y1) // 2, x1, y1], fill=(255, 0, 0))
            draw.rectangle([x0, y0, x1, (y0 + y1) // 2], fill=(0, 0, 255))
    return img


def test_read_photos_returns_the_schema_in_reading_order():
    img = picture(
        words=[((20, 20, 120, 50), "right"), ((200, 25, 300, 55), "right"), ((20, 200, 140, 240), "right")]
    )
    boxes = [rect(20, 200, 140, 240), np.roll(rect(200, 25, 300, 55), 2, axis=0), rect(20, 20, 120, 50)]
    reader = FakeReader()
    photos = read_photos(reader, [img, np.asarray(img)], detector=lambda image: boxes)
    assert len(photos) == 2 and reader.calls == [6]  # the words of both photos in one batch
    d = photos[0].to_dict()
    assert list(d) == ["path", "width", "height", "words"]
    assert (d["path"], d["width"], d["height"]) == (None, 400, 300)
    assert [list(w) for w in d["words"]] == [["box", "text", "confidence"]] * 3
    assert [w["box"][0] for w in d["words"]] == [[20, 20], [200, 25], [20, 200]]  # top-left first
    assert [w["text"] for w in d["words"]] == ["100x30", "100x30", "120x40"]
    assert json.loads(json.dumps(d)) == d


def test_paths_are_reported_and_unreadable_files_skipped(tmp_path):
    good = tmp_path / "good.png"
    picture(words=[((20, 20, 120, 50), "right")]).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    det = FunctionDetector(lambda image: [[20, 20, 120, 50]])
    results = list(iter_photos(FakeReader(), [str(good), str(bad), good], det))
    assert [src for src, _ in results] == [str(good), str(bad), good]  # the input order
    assert isinstance(results[1][1], ImageReadError)
    photo = results[0][1]
    assert isinstance(photo, Photo) and photo.path == str(good) and photo.words[0].text == "100x30"
    assert results[2][1].path == str(good)

    def flaky(image):
        if image.shape[1] == 50:
            raise RuntimeError("detector broke")
        return [[20, 20, 120, 50]]

    small = Image.new("RGB", (50, 50))
    results = list(iter_photos(FakeReader(), [small, str(good)], flaky))
    assert isinstance(results[0][1], RuntimeError) and results[1][1].words[0].text == "100x30"
    with pytest.raises(ImageReadError):
        read_photos(FakeReader(), [str(good), str(bad)], det)


def test_tall_boxes_are_turned_upright_when_orientation_is_auto():
    img = picture(words=[((100, 40, 130, 200), "up")])
    box = [rect(100, 40, 130, 200)]
    word = read_photos(FakeReader(), img, detector=lambda image: box)[0].words[0]
    assert word.text == "160x30" and word.confidence == 0.9
    assert word.box == [[100, 200], [100, 40], [130, 40], [130, 200]]  # starts at the text's top-left
    as_boxed = read_photos(FakeReader(), img, detector=lambda image: box, orientation="none")[0].words[0]
    assert as_boxed.text == "30x160" and as_boxed.confidence == 0.1
    with pytest.raises(ValueError, match="orientation"):
        read_photos(FakeReader(), img, detector=lambda image: box, orientation="sideways")


def test_read_regions_keeps_the_given_order_and_corners():
    img = picture(words=[((20, 20, 120, 50), "right"), ((100, 100, 130, 260), "up")])
    ccw = rect(20, 20, 120, 50)[[0, 3, 2, 1]]  # counter-clockwise from the top-left: reversed
    words = read_regions(FakeReader(), img, [[100, 100, 130, 260], ccw.tolist()])
    assert [w.text for w in words] == ["160x30", "100x30"]
    assert words[1].box[0] == [20, 20] and words[1].box[1] == [120, 20]
    assert read_regions(FakeReader(), img, []) == []
    with pytest.raises(ValueError, match="box 0"):
        read_regions(FakeReader(), img, [[1, 2, 3]])


def test_any_object_with_detect_is_a_detector_and_names_are_checked():
    class Mine:
        def detect(self, image: np.ndarray) -> np.ndarray:
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            return np.zeros((0, 4, 2), np.float32)

    assert isinstance(Mine(), Detector)
    assert as_detector(Mine()).__class__ is Mine
    assert isinstance(as_detector(lambda im: []), FunctionDetector)
    assert read_photos(FakeReader(), picture(), Mine())[0].words == []
    with pytest.raises(ValueError, match="unknown detector"):
        as_detector("yolo")
    with pytest.raises(TypeError):
        as_detector(42)


def test_a_huge_photo_is_detected_small_and_its_boxes_mapped_back():
    seen = []

    def detector(image: np.ndarray):
        seen.append(image.shape)
        h, w = image.shape[:2]
        return [[w * 0.25, h * 0.5, w * 0.5, h * 0.6]]

    img = Image.new("RGB", (8000, 3000), (90, 90, 90))
    photos, timer = read_photos_timed(FakeReader(), img, detector)
    assert seen == [(768, 2048, 3)]
    assert photos[0].words[0].box[0] == [2000, 1500] and photos[0].words[0].box[2] == [4000, 1800]
    assert set(timer) == {"loading", "detection", "cropping", "recognition"}
    # boxes outside the photo are clipped to it
    photo = read_photos(FakeReader(), picture(), lambda im: [[-50, -50, 20, 20]])[0]
    assert photo.words[0].box[0] == [0, 0]


# ---- RapidOCR's detector (the detect extra) --------------------------------------------------------------


@pytest.fixture(scope="module")
def rapid():
    try:
        from clip4str.detect.rapidocr import RapidOCRDetector

        return RapidOCRDetector(threads=1)
    except ImportError as err:
        if IN_CI:
            pytest.fail(f"the detect extra must be installed under CI: {err}")
        pytest.skip(str(err))


def test_rapidocr_finds_no_words_in_a_picture_without_text(rapid):
    a = np.linspace(0, 255, 640, dtype=np.uint8)
    smooth = Image.fromarray(np.stack([np.tile(a, (480, 1))] * 3, axis=-1))
    for img in (Image.new("RGB", (640, 480), "white"), smooth, Image.new("RGB", (1, 1))):
        assert read_photos(FakeReader(), img, rapid)[0].words == []


def test_rapidocr_on_a_huge_photo_is_bounded(rapid):
    img = Image.new("RGB", (9000, 6000), (200, 200, 200))
    ImageDraw.Draw(img).rectangle([3000, 2000, 6000, 3000], fill=(20, 20, 20))
    start = time.perf_counter()
    photo = read_photos(FakeReader(), img, rapid)[0]
    assert time.perf_counter() - start < 60
    assert (photo.width, photo.height) == (9000, 6000)
    assert all(0 <= x <= 9000 and 0 <= y <= 6000 for w in photo.words for x, y in w.box)


def test_rapidocr_finds_the_words_of_real_photos(rapid, realdata_dir):
    """Word boxes, not lines: most of the ground-truth words of IC15 img_2 (10 words) and img_3 (3) match
    (9 of 13 with rapidocr 3.10; its line boxes match 6)."""
    scenes = realdata_dir / "ic15_scenes_test"
    matched = total = 0
    for n in (2, 3):
        words = read_photos(FakeReader(), scenes / "Imgs" / f"img_{n}.jpg", rapid)[0].words
        counts, _ = score_photo(load_gt(scenes / "Gts" / f"gt_img_{n}.txt"), [w.box for w in words])
        matched, total = matched + counts.matched, total + counts.gt
    assert total == 13 and matched >= 8, (matched, total)


def test_threads_default_follows_torch(rapid):
    import torch

    from clip4str.detect.rapidocr import RapidOCRDetector

    det = RapidOCRDetector()
    want = torch.get_num_threads()
    assert det.engine.cfg.EngineConfig.onnxruntime.intra_op_num_threads == want
    assert os.environ.get("RAPIDOCR_NOPE") is None  # no side effects on the environment


def test_word_is_a_plain_dataclass():
    w = Word(box=[[0, 0], [1, 0], [1, 1], [0, 1]], text="a", confidence=0.5)
    assert Photo(path="x", width=1, height=1, words=[w]).to_dict()["words"][0]["text"] == "a"
