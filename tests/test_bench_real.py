"""``clip4str bench`` on real weights and real images, with a peer timed in the same run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clip4str.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "words"


def test_bench_real_model_on_real_images_beside_rapidocr(golden_dir, tmp_path, capsys) -> None:
    pytest.importorskip("rapidocr")
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", str(golden_dir / "clip4str_tiny.ckpt"), "--images", str(EXAMPLES)]
    argv += [
        "--batch-sizes",
        "1,3",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--precision",
        "fp32",
    ]
    assert main([*argv, "--peer", "rapidocr", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert "--peer rapidocr" in payload["command"] and "--images" in payload["command"]
    rows = payload["results"]
    assert [r["batch"] for r in rows] == [1, 3]
    for r in rows:
        assert r["peer"] == "rapidocr" and r["speed_vs_peer"] > 0 and r["read_images_per_s"] > 0
        assert set(r["timing"]) == {"clip4str", "clip4str_read", "rapidocr"}
    assert "clip4str ÷ peer" in capsys.readouterr().out


def test_bench_peer_needs_real_images(capsys) -> None:
    assert main(["bench", "--arch", "tiny", "--peer", "rapidocr", "--batch-sizes", "1"]) == 1
    assert "--peer needs --images" in capsys.readouterr().err


def test_bench_images_that_do_not_exist_is_one_line(tmp_path, capsys) -> None:
    assert main(["bench", "--arch", "tiny", "--images", str(tmp_path / "none"), "--batch-sizes", "1"]) == 1
    assert "no image found" in capsys.readouterr().err
