"""Hostile input, round two (issue 24): every file a user names goes through the one regular-file reader,
unreadable photos are skipped and counted, bad boxes and ground truth are one clear line."""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from clip4str.cli import main

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and /dev/zero are POSIX")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    import torch

    from clip4str.model.clip4str import CLIP4STR
    from clip4str.presets import model_preset
    from clip4str.weights import save_model

    torch.manual_seed(0)
    return save_model(CLIP4STR(model_preset("tiny")), tmp_path_factory.mktemp("m") / "model")


@pytest.fixture
def fake_detector(monkeypatch):
    """One box per photo, instantly: eval --scenes without RapidOCR."""
    import clip4str.detect.base as base

    class OneBox:
        def detect(self, image: np.ndarray) -> np.ndarray:
            return np.array([[[0, 0], [30, 0], [30, 20], [0, 20]]], dtype=np.float64)

    monkeypatch.setattr(base, "_DEFAULT", OneBox())


def _photo(path, size=(64, 32)):
    Image.new("RGB", size, (200, 200, 200)).save(path)
    return path


def _scenes(tmp_path, n=3):
    root = tmp_path / "scenes"
    (root / "Imgs").mkdir(parents=True)
    (root / "Gts").mkdir()
    for i in range(1, n + 1):
        _photo(root / "Imgs" / f"img_{i}.png")
        (root / "Gts" / f"gt_img_{i}.txt").write_text("0,0,30,0,30,20,0,20,word\n")
    return root


def _hang_guard(seconds: float = 30.0):
    """Fail (instead of hanging CI) if the test is still running after ``seconds``."""
    timer = threading.Timer(seconds, lambda: os._exit(97))
    timer.daemon = True
    timer.start()
    return timer


# ------------------------------------------------------------------------------------ item 7: --boxes
@posix_only
def test_boxes_from_a_fifo_is_refused_not_read(tiny_model_dir, tmp_path, capsys):
    """Issue 24 item 7: `--boxes FIFO` hung forever (Path.read_text)."""
    fifo = tmp_path / "boxes.txt"
    os.mkfifo(fifo)
    img = _photo(tmp_path / "a.png")
    timer = _hang_guard()
    try:
        assert main(["read", "--model", str(tiny_model_dir), "--boxes", str(fifo), str(img)]) == 1
    finally:
        timer.cancel()
    err = capsys.readouterr().err
    assert "box file" in err and "FIFO" in err and "clip4str: model" not in err


@posix_only
def test_boxes_linked_to_dev_zero_is_refused(tiny_model_dir, tmp_path, capsys):
    """Issue 24 item 7: a --boxes link to /dev/zero grew to 6.8 GB and ended in a MemoryError traceback."""
    link = tmp_path / "boxes.jsonl"
    link.symlink_to("/dev/zero")
    assert main(["read", "--model", str(tiny_model_dir), "--boxes", str(link)]) == 1
    err = capsys.readouterr().err
    assert "box file" in err and "a device" in err and err.count("\n") == 1


def test_boxes_directory_and_huge_file_are_one_line(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from clip4str import files

    assert main(["read", "--model", str(tiny_model_dir), "--boxes", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err
    big = tmp_path / "big.txt"
    big.write_text("0,0,1,1\n" * 200)
    monkeypatch.setattr(files, "MAX_BOX_FILE_BYTES", 1000)
    img = _photo(tmp_path / "a.png")
    assert main(["read", "--model", str(tiny_model_dir), "--boxes", str(big), str(img)]) == 1
    assert "over the" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ item 12: --scenes
@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[:60]), id="truncated"),
        pytest.param(lambda p: p.write_text("not an image at all\n"), id="text"),
        pytest.param(lambda p: p.write_bytes(_bomb_png()), id="30000x30000"),
    ],
)
def test_eval_scenes_skips_and_counts_an_unreadable_photo(
    tiny_model_dir, tmp_path, capsys, fake_detector, bad
):
    """Issue 24 item 12: one unreadable photo ended `eval --scenes`; it is skipped and counted now."""
    import json

    root = _scenes(tmp_path)
    bad(root / "Imgs" / "img_2.png")
    out = tmp_path / "r.json"
    args = ["eval", "--model", str(tiny_model_dir), "--scenes", str(root), "--quiet", "--format", "json"]
    assert main([*args, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["photos"] == 3 and report["skipped"] == 1
    assert report["counts"]["gt"] == 3 and report["counts"]["det"] == 2  # its word counts as missed
    err = capsys.readouterr().err
    assert "1 photo(s) could not be read" in err and "img_2.png" in err


def _bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# ------------------------------------------------------------------------------------ item 13: ground truth
def test_a_non_utf8_ground_truth_is_named_before_the_model_loads(tiny_model_dir, tmp_path, capsys):
    """Issue 24 item 13: a non-UTF-8 ground-truth file gave an error without its name, after the model loaded."""
    root = _scenes(tmp_path)
    gt = root / "Gts" / "gt_img_3.txt"
    gt.write_bytes("0,0,30,0,30,20,0,20,Straße\n".encode("latin-1"))
    assert main(["eval", "--model", str(tiny_model_dir), "--scenes", str(root), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert str(gt) in err and "not UTF-8" in err and "clip4str: model" not in err


@posix_only
def test_a_ground_truth_fifo_is_refused(tiny_model_dir, tmp_path, capsys):
    root = _scenes(tmp_path)
    gt = root / "Gts" / "gt_img_1.txt"
    gt.unlink()
    os.mkfifo(gt)
    timer = _hang_guard()
    try:
        from clip4str.errors import DatasetError
        from clip4str.eval_scenes import load_gt

        with pytest.raises(DatasetError, match="FIFO"):
            load_gt(gt)
    finally:
        timer.cancel()


# ------------------------------------------------------------------------------------ item 7: configs
@posix_only
def test_every_named_config_goes_through_the_regular_file_reader(tiny_model_dir, tmp_path):
    """Issue 24 item 7: one input reader for every file the user names; a config that is a FIFO or a link
    to /dev/zero is refused at once (a FIFO used to hang, or be silently skipped)."""
    import shutil

    from clip4str.charset import resolve_charset
    from clip4str.config import ConfigError, ModelConfig
    from clip4str.errors import CheckpointError
    from clip4str.presets import load_variant
    from clip4str.weights import read_checkpoint

    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "config.json").unlink()
    timer = _hang_guard()
    try:
        for bad, kind in ((fifo, "FIFO"), (zero, "a device")):
            with pytest.raises(ValueError, match=f"charset file .*{kind}"):
                resolve_charset("@" + str(bad))
            with pytest.raises(ConfigError, match=f"config file .*{kind}"):
                ModelConfig.from_json(bad)
            with pytest.raises(ConfigError, match=f"variant file .*{kind}"):
                load_variant(str(bad))
            (model / "config.json").unlink(missing_ok=True)
            (model / "config.json").symlink_to(bad)
            with pytest.raises(CheckpointError, match=f"model config .*{kind}"):
                read_checkpoint(model)
    finally:
        timer.cancel()


# ------------------------------------------------------------------------------------ item 6: many boxes
class _CountingReader:
    """A stand-in recognizer: records each batch's size and how many crops existed when it was read."""

    def __init__(self, made: list[int]) -> None:
        self.made, self.batches, self.crops_at_first_read = made, [], None

    def read(self, images):
        from types import SimpleNamespace

        if self.crops_at_first_read is None:
            self.crops_at_first_read = self.made[0]
        self.batches.append(len(images))
        return [SimpleNamespace(text="x", confidence=0.5) for _ in images]


def test_crops_are_made_and_read_a_batch_at_a_time(monkeypatch):
    """Issue 24 item 6: `read --boxes` built every crop of a photo before reading any (3,000 boxes on a
    1024² image grew past 3.5 GB)."""
    from clip4str.detect import pipeline
    from clip4str.detect.geometry import quad_size

    made = [0]

    def counting(image, quad):  # a blank crop of the quad's size: the batching is under test, not warping
        made[0] += 1
        w, h = quad_size(quad)
        return Image.new("RGB", (max(1, round(w)), max(1, round(h))))

    monkeypatch.setattr(pipeline, "rectify", counting)
    reader = _CountingReader(made)
    image = Image.new("RGB", (1024, 1024), "white")
    boxes = [[0, 0, 40, 10 + i % 5] for i in range(300)]
    words = pipeline.read_regions(reader, image, boxes, orientation="none")
    assert len(words) == 300 and made[0] == 300
    assert reader.crops_at_first_read <= pipeline.CROPS_PER_READ
    assert max(reader.batches) <= pipeline.CROPS_PER_READ and sum(reader.batches) == 300
    made[0], reader = 0, _CountingReader(made)  # big crops: fewer per batch, bounded by pixels
    pipeline.read_regions(reader, image, [[0, 0, 1024, 1024]] * 40, orientation="none")
    per_batch = pipeline.PIXELS_PER_READ // (1024 * 1024)
    assert reader.crops_at_first_read == per_batch and max(reader.batches) == per_batch


def test_too_many_boxes_for_one_image_is_one_line_before_the_model(tiny_model_dir, tmp_path, capsys):
    from clip4str.detect.pipeline import MAX_BOXES_PER_IMAGE

    img = _photo(tmp_path / "a.png")
    text = tmp_path / "b.txt"
    text.write_text("0,0,5,5\n" * (MAX_BOXES_PER_IMAGE + 1))
    lines = tmp_path / "b.jsonl"
    lines.write_text('{"path": "a.png", "boxes": [' + ",".join(["[0,0,5,5]"] * 3000) + "]}\n")
    for args in (["--boxes", str(text), str(img)], ["--boxes", str(lines)]):
        assert main(["read", "--model", str(tiny_model_dir), *args]) == 1
        err = capsys.readouterr().err
        assert f"at most {MAX_BOXES_PER_IMAGE} are read per image" in err and "clip4str: model" not in err
    from clip4str.detect.pipeline import read_regions

    with pytest.raises(ValueError, match="at most"):
        read_regions(_CountingReader([0]), Image.new("RGB", (8, 8)), [[0, 0, 1, 1]] * 3000)


# ------------------------------------------------------------------------------------ item 13: box values
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"path": "a.png", "boxes": [[0, 0, ' + "9" * 400 + ", 5]]}", "not numbers"),
        ('{"path": "a.png", "boxes": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),
        ('{"path": "a.png", "boxes": [[0, 0, 1e300, 5]]}', "beyond"),
        ('{"path": "a.png", "boxes": [[0, 0, 1e999, 5]]}', "infinite"),
        ('{"path": "a.png", "boxes": [[[[[[[[1]]]]]]]]}', "expected"),
    ],
    ids=["huge-int", "deep", "1e300", "inf", "shape"],
)
def test_hostile_box_values_are_one_line(tiny_model_dir, tmp_path, capsys, content, expected):
    """Issue 24 item 13: a huge integer gave an OverflowError traceback, deep nesting a RecursionError and
    1e300 "cannot convert float NaN"."""
    _photo(tmp_path / "a.png")
    boxes = tmp_path / "b.jsonl"
    boxes.write_text(content + "\n")
    assert main(["read", "--model", str(tiny_model_dir), "--boxes", str(boxes)]) == 1
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "b.jsonl" in err, err


def test_a_detector_failure_has_a_reason(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Issue 24 item 13: `read --detect` on a 20000x20 photo printed an empty reason (RapidOCR's
    ResizeImgError has no message)."""
    import clip4str.detect.base as base

    class Silent(Exception):
        pass

    class Failing:
        def detect(self, image):
            raise Silent()

    monkeypatch.setattr(base, "_DEFAULT", Failing())
    img = _photo(tmp_path / "wide.png", size=(20000, 20))
    assert main(["read", "--model", str(tiny_model_dir), "--detect", str(img), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "the word detector failed on this 20000x20 photo (Silent; a very thin or tiny photo?)" in err
