"""``clip4str lmdb create|info`` and ``clip4str synth`` end to end (stdout, stderr, exit codes)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from clip4str.charset import CHARSET_94
from clip4str.cli import main
from clip4str.data import synth as S
from clip4str.data.lmdb_dataset import LmdbDataset


def _write_images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (20 + i, 10), (i * 40, 0, 0)).save(folder / f"{i}.png")


def test_lmdb_create_then_info(tmp_path, capsys):
    _write_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"nope")
    labels = tmp_path / "gt.txt"
    labels.write_text("0.png Hello\n1.png wörld\nbroken.png x\n2.png a b\n", encoding="utf-8")
    out = tmp_path / "db"
    rc = main(
        ["lmdb", "create", "--images", str(tmp_path / "imgs"), "--labels", str(labels), "--out", str(out)]
    )
    captured = capsys.readouterr()
    assert rc == 0
    assert "wrote 3 samples" in captured.out and "1 skipped" in captured.out
    assert "broken.png" in captured.err
    ds = LmdbDataset(out, CHARSET_94)
    assert ds.labels == ["Hello", "world", "ab"]
    assert ds.raw(0)[0] == (tmp_path / "imgs" / "0.png").read_bytes()

    assert main(["lmdb", "info", str(tmp_path), "--charset", "36", "--verify"]) == 0
    text = capsys.readouterr().out
    assert "samples: 3" in text and "undecodable images: 0" in text
    assert "characters outside the charset (0)" in text  # 'ö' normalises to 'o', case folds
    assert main(["lmdb", "info", str(out), "--json"]) == 0
    (info,) = json.loads(capsys.readouterr().out)
    assert info["num_samples"] == 3 and info["length_histogram"] == {"5": 2, "3": 1}


def test_lmdb_cli_errors_exit_nonzero_with_message(tmp_path, capsys):
    assert main(["lmdb", "info", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    _write_images(tmp_path / "imgs", 1)
    labels = tmp_path / "l.tsv"
    labels.write_text("0.png\tok\n", encoding="utf-8")
    assert (
        main(
            [
                "lmdb",
                "create",
                "--labels",
                str(labels),
                "--images",
                str(tmp_path / "imgs"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    rc = main(
        [
            "lmdb",
            "create",
            "--labels",
            str(labels),
            "--images",
            str(tmp_path / "imgs"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 1 and "--overwrite" in capsys.readouterr().err


def test_synth_cli_makes_n_readable_samples(tmp_path, capsys):
    fonts = [str(f) for f in S.find_fonts() if "DejaVuSans" in f.name][:2]
    if not fonts:
        pytest.skip("DejaVu fonts not installed")
    vocab = tmp_path / "words.txt"
    vocab.write_text("hello\nworld\n\n", encoding="utf-8")
    out = tmp_path / "syn"
    args = ["synth", "--out", str(out), "--count", "12", "--vocab", str(vocab), "--random-ratio", "0"]
    rc = main([*args, "--fonts", *fonts, "--workers", "2", "--seed", "5", "--quiet"])
    assert rc == 0 and "wrote 12 images" in capsys.readouterr().out
    ds = LmdbDataset(out, CHARSET_94)
    assert len(ds) == 12 and ds.corrupt_count == 0
    assert {lbl.lower() for lbl in ds.labels} == {"hello", "world"}
    rc = main(
        [
            *args[:2],
            str(tmp_path / "again"),
            *args[3:],
            "--fonts",
            *fonts,
            "--workers",
            "1",
            "--seed",
            "5",
            "--quiet",
        ]
    )
    assert rc == 0
    again = LmdbDataset(tmp_path / "again", CHARSET_94)
    assert [again.raw(i) for i in range(12)] == [
        ds.raw(i) for i in range(12)
    ]  # same seed, other worker count
    capsys.readouterr()
    assert (
        main(["synth", "--out", str(tmp_path / "x"), "--count", "2", "--fonts", str(tmp_path / "nofonts")])
        == 1
    )
    assert "no font files" in capsys.readouterr().err
