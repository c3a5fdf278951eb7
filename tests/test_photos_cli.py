"""``clip4str read --detect / --boxes / --draw`` and ``clip4str eval --scenes`` end to end on the golden tiny
model (it reads nothing useful; these tests check structure, not reading), and box files."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import IN_CI
from PIL import Image

from clip4str.cli import main
from clip4str.detect.boxfile import load_box_file
from clip4str.errors import DatasetError


@pytest.fixture(autouse=True)
def _bpe(bpe_path, monkeypatch):
    monkeypatch.setenv("CLIP4STR_BPE_PATH", str(bpe_path))


@pytest.fixture(scope="module")
def ckpt(golden_dir):
    return str(golden_dir / "clip4str_tiny.ckpt")


@pytest.fixture(scope="module")
def one_thread_detector():
    """The default detector on one thread, shared by the tests (two spinning ONNX threads crawl on a busy
    2-core machine)."""
    try:
        from clip4str.detect.rapidocr import RapidOCRDetector

        return RapidOCRDetector(threads=1)
    except ImportError as err:
        if IN_CI:
            pytest.fail(f"the detect extra must be installed under CI: {err}")
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def scenes(realdata_dir, tmp_path_factory, one_thread_detector):
    """Two IC15 test photos with their ground truth, copied to a scratch folder."""
    src = realdata_dir / "ic15_scenes_test"
    dst = tmp_path_factory.mktemp("scenes")
    (dst / "Imgs").mkdir()
    (dst / "Gts").mkdir()
    for n in (2, 4):
        shutil.copy(src / "Imgs" / f"img_{n}.jpg", dst / "Imgs")
        shutil.copy(src / "Gts" / f"gt_img_{n}.txt", dst / "Gts")
    return dst


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: tiny batches on a busy 2-core machine run far faster without OpenMP spinning."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _default_detector(request, monkeypatch):
    if "scenes" in request.fixturenames:
        import clip4str.detect.base as base

        monkeypatch.setattr(base, "_DEFAULT", request.getfixturevalue("one_thread_detector"))


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.strip().splitlines()]


def test_read_detect_json_tsv_and_draw(ckpt, scenes, tmp_path, capsys):
    imgs = scenes / "Imgs"
    draw = tmp_path / "drawn"
    assert (
        main(["read", "--model", ckpt, "--detect", "--json", "--quiet", str(imgs), "--draw", str(draw)]) == 0
    )
    photos = _json_lines(capsys.readouterr().out)
    assert [p["path"] for p in photos] == [str(imgs / f"img_{n}.jpg") for n in (2, 4)]
    for p in photos:
        assert list(p) == ["path", "width", "height", "words"] and (p["width"], p["height"]) == (1280, 720)
        assert p["words"], p["path"]
        for w in p["words"]:
            assert list(w) == ["box", "text", "confidence"]
            assert np.asarray(w["box"]).shape == (4, 2) and isinstance(w["text"], str)
            assert 0.0 <= w["confidence"] <= 1.0
    assert sorted(f.name for f in draw.iterdir()) == ["img_2.jpg", "img_4.jpg"]
    with Image.open(draw / "img_2.jpg") as im:
        assert im.size == (1280, 720)

    assert main(["read", "--model", ckpt, "--detect", "--quiet", str(imgs / "img_2.jpg")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(photos[0]["words"])  # one line per word, in the same (reading) order
    for line, word in zip(lines, photos[0]["words"]):
        path, text, conf, box = line.split("\t")
        assert path == photos[0]["path"] and text == word["text"]
        assert [float(v) for v in box.split(",")] == np.ravel(word["box"]).tolist()


def test_read_boxes_json_round_trip_and_icdar_text(ckpt, scenes, tmp_path, capsys):
    img = scenes / "Imgs" / "img_4.jpg"
    assert main(["read", "--model", ckpt, "--detect", "--json", "--quiet", str(img)]) == 0
    detected = capsys.readouterr().out
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text(detected)
    assert main(["read", "--model", ckpt, "--boxes", str(boxes), "--json"]) == 0
    assert _json_lines(capsys.readouterr().out) == _json_lines(detected)  # same boxes → same words

    gt = scenes / "Gts" / "gt_img_4.txt"  # x1,y1,...,x4,y4,transcription lines
    draw = tmp_path / "d"
    assert main(["read", "--model", ckpt, "--boxes", str(gt), str(img), "--json", "--draw", str(draw)]) == 0
    (photo,) = _json_lines(capsys.readouterr().out)
    assert [w["box"] for w in photo["words"]] == [w["box"] for w in _gt_words(gt)]
    assert (draw / "img_4.jpg").is_file()


def _gt_words(path):
    from clip4str.eval_scenes import load_gt

    return [{"box": w.box.tolist()} for w in load_gt(path)]


def test_read_photo_usage_errors(ckpt, scenes, tmp_path, capsys):
    img = str(scenes / "Imgs" / "img_4.jpg")
    with pytest.raises(SystemExit):
        main(["read", "--model", ckpt, "--detect", "--boxes", "x.txt", img])
    with pytest.raises(SystemExit):
        main(["read", "--model", ckpt, "--draw", str(tmp_path), img])
    with pytest.raises(SystemExit):
        main(["read", "--model", ckpt, "--detect"])
    capsys.readouterr()
    bad = tmp_path / "bad.txt"
    bad.write_text("1,2,3\n")
    assert main(["read", "--model", ckpt, "--boxes", str(bad), img]) == 1
    err = capsys.readouterr().err
    assert "bad.txt:1" in err and "model" not in err  # fails before the model loads
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"path": "nope.jpg", "boxes": [[0, 0, 5, 5]]}) + "\n")
    assert main(["read", "--model", ckpt, "--boxes", str(missing), "--quiet"]) == 1
    assert "nope.jpg" in capsys.readouterr().err


def test_eval_scenes_table_and_json(ckpt, scenes, tmp_path, capsys):
    assert main(["eval", "--scenes", str(scenes), "--model", ckpt, "--quiet", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "detection" in out and "end-to-end" in out
    report = tmp_path / "r.json"
    args = ["eval", "--scenes", str(scenes), "--model", ckpt, "--format", "json", "--limit", "2"]
    assert main([*args, "--out", str(report), "--quiet"]) == 0
    d = json.loads(report.read_text())
    assert set(d["detection"]) == set(d["end_to_end"]) == {"precision", "recall", "hmean"}
    assert d["photos"] == 2 and d["counts"]["gt"] == 11  # img_2: 10 words, img_4: 1 (and 3 ###)
    assert d["detection"]["hmean"] > 50  # RapidOCR's word boxes; the golden model reads nothing useful
    assert set(d["seconds_per_photo"]) >= {"detection", "cropping", "recognition"}
    assert main(["eval", "--scenes", str(tmp_path), "--model", ckpt]) == 1
    assert "no images" in capsys.readouterr().err
    assert main(["eval", "--scenes", str(scenes), "--labels", "x.tsv", "--model", ckpt]) == 2


def test_box_files(tmp_path):
    lines = tmp_path / "b.jsonl"
    (tmp_path / "a.png").write_bytes(b"")
    lines.write_text(
        json.dumps({"path": "a.png", "boxes": [[1, 2, 11, 12], [0, 0, 4, 0, 4, 2, 0, 2]]})
        + "\n\n"
        + json.dumps(
            {"path": "/abs/b.png", "words": [{"box": [[0, 0], [4, 0], [4, 2], [0, 2]], "text": "x"}]}
        )
        + "\n"
    )
    (a, qa), (b, qb) = load_box_file(lines)
    assert a == str(tmp_path / "a.png") and b == "/abs/b.png"
    assert qa.shape == (2, 4, 2) and qa[0].tolist() == [[1, 2], [11, 2], [11, 12], [1, 12]]
    arr = tmp_path / "b.json"
    arr.write_text(json.dumps([{"path": "a.png", "boxes": []}]))
    assert load_box_file(arr)[0][1].shape == (0, 4, 2)
    txt = tmp_path / "b.txt"
    txt.write_text("# comment\n1 2 11 12\n0,0,4,0,4,2,0,2,HELLO, WORLD\n")
    ((img, quads),) = load_box_file(txt, ["photo.jpg"])
    assert img == "photo.jpg" and quads.shape == (2, 4, 2)
    with pytest.raises(DatasetError, match="exactly one image"):
        load_box_file(txt)
    with pytest.raises(DatasetError, match="give no image paths"):
        load_box_file(lines, ["x.jpg"])
    for bad, match in [
        ('{"path": "a.png"}', 'expected "boxes"'),
        ('{"boxes": []}', "path"),
        ('{"path": "a.png", "boxes": [[1, 2, 3]]}', "box 0"),
        ('{"path": "a.png", "boxes": [', "not valid JSON"),
    ]:
        lines.write_text(bad + "\n")
        with pytest.raises(DatasetError, match=match):
            load_box_file(lines)


def test_detect_without_the_extra_says_how_to_install_it(ckpt, tmp_path, monkeypatch, capsys):
    import clip4str.detect.base as base

    monkeypatch.setitem(sys.modules, "rapidocr", None)  # as if not installed
    monkeypatch.setattr(base, "_DEFAULT", None)
    img = tmp_path / "p.png"
    Image.new("RGB", (64, 32), "white").save(img)
    assert main(["read", "--model", ckpt, "--detect", str(img)]) == 1
    err = capsys.readouterr().err
    assert "clip4str[detect]" in err and "model" not in err  # before the model loads
    boxes = tmp_path / "b.txt"
    boxes.write_text("0,0,64,32\n")
    assert main(["read", "--model", ckpt, "--boxes", str(boxes), str(img)]) == 0  # no detector needed
