"""The ICDAR 2015 detection / end-to-end scorer (clip4str.eval_scenes) on hand-made cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clip4str.errors import DatasetError
from clip4str.eval_scenes import (
    GtWord,
    SceneCounts,
    SceneReport,
    find_scenes,
    load_gt,
    score_photo,
    transcription_match,
)


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def gt(*words: tuple[np.ndarray, str]) -> list[GtWord]:
    return [GtWord(box=b, text=t) for b, t in words]


def test_a_perfect_photo():
    g = gt((rect(0, 0, 100, 30), "Hello"), (rect(120, 0, 220, 30), "World"))
    counts, match = score_photo(g, [rect(120, 0, 220, 30), rect(0, 0, 100, 30)], ["WORLD", "hello"])
    assert counts == SceneCounts(gt=2, det=2, matched=2, correct=2)
    assert match == [1, 0]
    assert counts.detection == counts.end_to_end == {"precision": 100.0, "recall": 100.0, "hmean": 100.0}


def test_iou_must_exceed_one_half():
    g = gt((rect(0, 0, 100, 30), "a"))
    assert score_photo(g, [rect(0, 0, 67, 30)], ["a"])[0].matched == 1
    assert score_photo(g, [rect(0, 0, 50, 30)], ["a"])[0].matched == 0  # IoU 0.5: not > 0.5
    assert score_photo(g, [rect(0, 0, 49, 30)], ["a"])[0].matched == 0


def test_one_to_one_a_second_detection_of_the_same_word_is_a_false_positive():
    g = gt((rect(0, 0, 100, 30), "word"))
    counts, match = score_photo(g, [rect(0, 0, 100, 30), rect(2, 0, 100, 30)], ["word", "word"])
    assert counts == SceneCounts(gt=1, det=2, matched=1, correct=1)
    assert match == [0, None]
    assert counts.end_to_end["precision"] == 50.0 and counts.end_to_end["recall"] == 100.0


def test_a_wrong_reading_still_takes_its_box():
    """Official rule: the first overlapping detection claims the word even when it reads it wrong."""
    g = gt((rect(0, 0, 100, 30), "word"))
    counts, _ = score_photo(g, [rect(0, 0, 100, 30), rect(1, 0, 100, 30)], ["ward", "word"])
    assert counts == SceneCounts(gt=1, det=2, matched=1, correct=0)
    assert counts.detection["hmean"] == pytest.approx(2 * 50 * 100 / 150)
    assert counts.end_to_end["hmean"] == 0.0


def test_dont_care_regions_and_detections_inside_them_do_not_count():
    g = gt((rect(0, 0, 100, 30), "###"), (rect(200, 0, 300, 30), "EXIT"))
    dets = [rect(0, 0, 90, 30), rect(10, 5, 60, 25), rect(200, 0, 300, 30), rect(500, 500, 600, 530)]
    counts, match = score_photo(g, dets, ["x", "y", "exit", "z"])
    # two detections inside the don't-care region vanish; the far one is a false positive
    assert counts == SceneCounts(gt=1, det=2, matched=1, correct=1)
    assert match == [None, None, 1, None]
    # a detection only partly (< half its area) inside a don't-care region still counts
    counts, _ = score_photo(g, [rect(60, 0, 160, 30)], ["x"])
    assert counts.det == 1


def test_photo_with_only_dont_care_and_no_detections():
    counts, match = score_photo(gt((rect(0, 0, 10, 10), "###")), [], [])
    assert counts == SceneCounts() and match == []
    assert counts.detection == {"precision": 0.0, "recall": 0.0, "hmean": 0.0}


def test_rotated_quads_match_by_polygon_iou():
    word = np.array([[10, 50], [90, 10], [100, 30], [20, 70]], float)
    counts, _ = score_photo(gt((word, "Slant")), [np.roll(word, 1, axis=0)], ["SLANT"])
    assert counts.correct == 1
    # its axis-aligned bounding box overlaps too little
    assert score_photo(gt((word, "Slant")), [rect(10, 10, 100, 70)], ["slant"])[0].matched == 0


@pytest.mark.parametrize(
    ("truth", "read", "ok"),
    [
        ("Hello", "hello", True),
        ("HELLO", "Hello", True),
        ("Free,", "free", True),  # trailing punctuation of the ground truth may be missing
        ("(24)", "24", True),
        ("(24)", "(24", True),
        ("JOINT-RX", "jointrx", False),  # inner punctuation may not
        ("hello", "hello.", False),  # extra characters in the reading are wrong
        ("a", "", False),
    ],
)
def test_transcription_match(truth, read, ok):
    assert transcription_match(truth, read) is ok


def test_pooling_sums_counts_over_photos():
    total = SceneCounts()
    total.add(SceneCounts(gt=3, det=2, matched=2, correct=1))
    total.add(SceneCounts(gt=1, det=2, matched=1, correct=1))
    assert total == SceneCounts(gt=4, det=4, matched=3, correct=2)
    assert total.detection == {"precision": 75.0, "recall": 75.0, "hmean": 75.0}
    assert total.end_to_end["hmean"] == 50.0


def test_load_gt_reads_icdar_files(tmp_path):
    path = tmp_path / "gt_img_1.txt"
    text = "377,117,463,117,465,130,378,130,Genaxis Theatre\r\n493,115,519,115,519,131,493,131,[06]\r\n"
    text += "374,155,409,155,409,170,374,170,###\r\n\r\n1,2,3,4,5,6,7,8,a,b\r\n"
    path.write_bytes(("\ufeff" + text).encode("utf-8"))
    words = load_gt(path)
    assert [w.text for w in words] == ["Genaxis Theatre", "[06]", "###", "a,b"]
    assert words[0].box.tolist() == [[377, 117], [463, 117], [465, 130], [378, 130]]
    assert words[2].dont_care and not words[0].dont_care
    (tmp_path / "bad.txt").write_text("1,2,3,word\n")
    with pytest.raises(DatasetError, match="bad.txt:1"):
        load_gt(tmp_path / "bad.txt")


def test_find_scenes_pairs_images_with_ground_truth_in_natural_order(tmp_path):
    (tmp_path / "Imgs").mkdir()
    (tmp_path / "Gts").mkdir()
    for n in (10, 2, 1):
        (tmp_path / "Imgs" / f"img_{n}.jpg").write_bytes(b"")
        (tmp_path / "Gts" / f"gt_img_{n}.txt").write_text("")
    assert [p.name for p, _ in find_scenes(tmp_path)] == ["img_1.jpg", "img_2.jpg", "img_10.jpg"]
    (tmp_path / "Imgs" / "img_3.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="gt_img_3.txt"):
        find_scenes(tmp_path)
    with pytest.raises(DatasetError, match="not a folder"):
        find_scenes(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no images"):
        find_scenes(tmp_path / "Gts")


def test_report_formats():
    report = SceneReport(
        counts=SceneCounts(gt=4, det=4, matched=3, correct=2), photos=2, seconds={"detection": 1.0}
    )
    d = json.loads(report.format("json"))
    assert d["detection"]["hmean"] == 75.0 and d["end_to_end"]["hmean"] == 50.0
    assert d["seconds_per_photo"]["detection"] == 0.5
    table = report.format("table")
    assert "detection" in table and "end-to-end" in table and "75.00" in table
    assert report.format("csv").splitlines()[0] == "task,precision,recall,hmean"
    assert report.format("markdown").startswith("| task |")
