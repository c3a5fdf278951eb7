"""``clip4str batch`` on a local Ray (2 CPUs): the answers of ``clip4str read`` to the last bit, error rows,
a killed job resumed to the rows of an uninterrupted one, ``--detect``, manifests, LMDB, bad inputs and
output folders, and Ray kept out of every other module.

Ray starts once for the module (2 CPUs) and is shut down after it; the runs join it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import IN_CI, PROJECT_ROOT

from clip4str import hub
from clip4str.batch.inputs import Item, expand_inputs
from clip4str.batch.job import PLAN_NAME, read_rows
from clip4str.cli import main

BATCH, SHARD = 16, 32  # 201 items → 7 shards of 2 forward passes each
SRC = PROJECT_ROOT / "src"


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError as err:
        if IN_CI:
            pytest.fail(
                f"{module} must be installed under CI (the test extra pulls in clip4str[batch]): {err}"
            )
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray with 2 CPUs for the module, shut down after it."""
    _require("ray")
    if hub.cached_path(hub.SMALL_MODEL) is None:
        pytest.skip("no shipped model")
    import signal

    import ray

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for signum, handler in saved.items():  # Ray's handlers would outlive it in this process
            signal.signal(signum, handler)


@pytest.fixture(scope="module")
def crops(realdata_dir, tmp_path_factory) -> Path:
    """200 real crops (IIIT5K test) linked into a folder, with a corrupt PNG among them."""
    folder = tmp_path_factory.mktemp("crops")
    for src in sorted((realdata_dir / "iiit5k_test" / "test").glob("*.png"))[:200]:
        (folder / src.name).symlink_to(src)
    (folder / "1021_3_corrupt.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    )  # index 19: in the second forward pass
    return folder


def _read_json(capsys, *argv: str) -> list[dict]:
    assert main(["read", *argv, "--json", "--quiet"]) in (0, 1)
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.fixture(scope="module")
def first_run(ray_cluster, crops, tmp_path_factory):
    """One uninterrupted job over the 201 items; its stderr (not a terminal: plain progress lines)."""
    out = tmp_path_factory.mktemp("batch") / "run"
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        code = main(
            ["batch", str(crops), "--out", str(out), "--batch-size", str(BATCH), "--shard-size", str(SHARD),
             "--log-every", "0"]
        )  # fmt: skip
    assert code == 0, log.getvalue()
    return out, log.getvalue()


# ------------------------------------------------------------------------------------------ same answers
def test_batch_gives_the_texts_and_confidences_of_read_and_an_error_row(first_run, crops, capsys):
    rows = read_rows(first_run[0])
    assert [r["index"] for r in rows] == list(range(201))
    assert sorted(p.name for p in first_run[0].iterdir()) == [PLAN_NAME] + [
        f"part-{k:05d}.parquet" for k in range(7)
    ]
    errors = [r for r in rows if r["error"] is not None]
    assert [Path(r["path"]).name for r in errors] == ["1021_3_corrupt.png"]
    assert "1021_3_corrupt.png" in errors[0]["error"] and errors[0]["text"] is None
    read = _read_json(capsys, str(crops), "--batch-size", str(BATCH))
    good = [r for r in rows if r["error"] is None]
    assert len(read) == len(good) == 200
    assert [r["path"] for r in good] == [r["path"] for r in read]
    assert [r["text"] for r in good] == [r["text"] for r in read]
    assert [round(r["confidence"], 6) for r in good] == [r["confidence"] for r in read]


def test_rows_equal_the_readers_numbers_to_the_last_bit(first_run, crops):
    """Unrounded: the same forward passes as read (runs of 16 items, the corrupt one left out of its own)."""
    import torch

    import clip4str

    torch.set_num_threads(1)  # as the actors (--cpus-per-worker 1) and clip4str read for the small model
    rows = read_rows(first_run[0])[: 3 * BATCH]  # the first three forward passes (one holds the corrupt file)
    reader = clip4str.load(batch_size=BATCH)
    expected = list(reader.read_files([r["path"] for r in rows]))
    assert sum(isinstance(p, Exception) for _, p in expected) == 1
    for row, (_, pred) in zip(rows, expected):
        if isinstance(pred, Exception):
            assert row["error"] == str(pred)
            continue
        assert (row["text"], row["confidence"]) == (pred.text, pred.confidence), row["path"]
        assert row["char_probs"] == pytest.approx(pred.char_probs, abs=0, rel=0)
    row = rows[0]
    assert row["model"] == "clip4str-small"
    assert row["options"] == {
        "runtime": "torch", "device": "cpu", "mode": "ar", "refine_iters": 1, "visual_only": False,
        "precision": reader.options.precision, "charset_test": None, "batch_size": BATCH, "detect": False,
        "orientation": None,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------ resume
def test_a_killed_job_resumes_to_the_rows_of_an_uninterrupted_one(
    ray_cluster, first_run, crops, tmp_path, capsys
):
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    argv = [str(crops), "--out", str(out), "--batch-size", str(BATCH), "--shard-size", str(SHARD), "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "clip4str", "batch", *argv, "--address", ray_cluster],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        while not list(out.glob("part-*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # no clean-up of any kind
    finally:
        proc.wait(timeout=30)
        stderr = proc.stderr.read().decode() if proc.stderr else ""
    done = sorted(p.name for p in out.glob("part-*.parquet"))
    assert 0 < len(done) < 7, f"kill came too late or too early: {done}\n{stderr}"
    before = {name: (out / name).stat().st_mtime_ns for name in done}

    assert main(["batch", *argv]) == 0
    err = capsys.readouterr().err
    assert f"{len(done)} shard(s) already done, skipped" in err
    assert read_rows(out) == read_rows(first_run[0])
    assert {name: (out / name).stat().st_mtime_ns for name in done} == before  # not written again
    assert main(["batch", *argv]) == 0  # a finished job: nothing to do, Ray not needed
    assert "nothing left to do" in capsys.readouterr().err


def test_progress_lines_in_a_log(first_run):
    """stderr that is not a terminal gets plain progress lines (here at every update: --log-every 0)."""
    _, log = first_run
    lines = [line for line in log.splitlines() if line.startswith("clip4str batch: ") and "img/s" in line]
    assert any("201/201 (100%)" in line and "shards 7/7, errors 1" in line for line in lines), log
    assert "done: 201 rows in 7 shard(s), 1 error row(s)" in log


# ------------------------------------------------------------------------------------------ photos
def test_detect_reads_photos_as_read_does_and_bad_entries_are_error_rows(
    ray_cluster, realdata_dir, tmp_path, capsys
):
    _require("rapidocr")
    photos = [str(realdata_dir / "ic15_scenes_test" / "Imgs" / f"img_{n}.jpg") for n in (2, 3)]
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header(60000, 60000))  # 3.6 Gpx announced: refused before decoding
    (tmp_path / "a_folder").mkdir()
    manifest = tmp_path / "photos.txt"
    bad = [str(tmp_path / "missing.jpg"), "a_folder", str(fifo), "/dev/zero", str(huge)]
    manifest.write_text("\n".join(photos + bad) + "\n")
    out = tmp_path / "out"
    argv = ["batch", str(manifest), "--detect", "--out", str(out), "--format", "jsonl", "--workers", "1"]
    code = main([*argv, "--quiet"])
    assert code == 0
    rows = read_rows(out)
    assert [r["path"] for r in rows] == photos + [bad[0], str(tmp_path / "a_folder"), *bad[2:]]
    read = _read_json(capsys, *photos, "--detect")
    for row, photo in zip(rows, read):
        assert row["error"] is None and (row["width"], row["height"]) == (photo["width"], photo["height"])
        assert row["words"] == photo["words"]  # texts, confidences and boxes
        assert row["text"] == " ".join(w["text"] for w in photo["words"])
    assert {"JOINT", "PAIN"} <= {w["text"].upper() for w in rows[0]["words"]}
    errors = [r["error"] for r in rows[2:]]
    assert "not found" in errors[0]
    assert "directory" in errors[1]
    assert "FIFO" in errors[2] and "device" in errors[3]
    assert "decompression bomb" in errors[4]
    assert all(r["text"] is None and r["options"]["detect"] for r in rows[2:])


def _png_header(width: int, height: int) -> bytes:
    """A small PNG file announcing ``width`` x ``height`` pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


# ------------------------------------------------------------------------------------------ output folder
def test_an_output_folder_holding_something_else_is_refused_before_ray(crops, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    t = time.monotonic()
    assert main(["batch", str(crops), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "notes.txt" in err and "did not write" in err and len(err.strip().splitlines()) == 1
    assert time.monotonic() - t < 10 and sorted(os.listdir(out)) == ["notes.txt"]
    assert main(["batch", str(crops), "--out", str(crops / "1002_1.png")]) == 1  # an input file
    assert "is not a folder" in capsys.readouterr().err


def test_another_jobs_folder_is_refused(crops, tmp_path, capsys):
    out = tmp_path / "job"
    few = [str(p) for p in sorted(crops.glob("*.png"))[:3]]
    out.mkdir()
    from clip4str.batch.inputs import items_digest
    from clip4str.batch.job import JobFolder, Plan
    from clip4str.files import OutputGuard

    plan = Plan(few, 3, items_digest([Item(p) for p in few]), 32, 32, "parquet", False, "clip4str-small")
    JobFolder(out, plan, OutputGuard()).open()
    left = [out / ".part-00000.parquet.x1y2.tmp.parquet", out / "._clip4str_batch.json.a.tmp"]  # a kill's
    for path in left:
        path.write_bytes(b"half")
    assert JobFolder(out, plan, OutputGuard()).open() == set() and not any(p.exists() for p in left)
    assert main(["batch", *few[:2], "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "holds another job" in err and "inputs" in err


def test_an_unreachable_cluster_is_one_line_within_seconds(crops, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SRC), RAY_ADDRESS="127.0.0.1:9")
    t = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "clip4str", "batch", str(crops / "1002_1.png"), "--out", str(tmp_path / "o")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert errors == [
        "clip4str batch: error: cannot reach the Ray cluster at 127.0.0.1:9 (Connection refused); check "
        "--address / RAY_ADDRESS, or leave both unset to start a local Ray"
    ]
    assert time.monotonic() - t < 30


# ------------------------------------------------------------------------------------------ inputs (no Ray)
def test_manifests_lmdb_and_uris_list_the_same_images(realdata_dir, tmp_path):
    _require("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = realdata_dir / "abinet_figs_test"
    images = sorted(str(p) for p in folder.glob("*.png"))
    (tmp_path / "list.txt").write_text("# crops\n" + "\n".join(images) + "\n\n")
    pq.write_table(pa.table({"file": images, "n": list(range(len(images)))}), tmp_path / "m.parquet")
    folder_csv = tmp_path / "m.csv"
    folder_csv.write_text("label,path\n" + "".join(f"x,{Path(p).name}\n" for p in images))
    expect = [Item(p) for p in images]
    assert expand_inputs([str(folder)]) == (expect, [])
    assert expand_inputs([str(tmp_path / "list.txt")]) == (expect, [])
    assert expand_inputs([str(tmp_path / "m.parquet")], column="file") == (expect, [])
    assert expand_inputs([f"file://{tmp_path}/m.parquet"], column="file") == (expect, [])  # a manifest URI
    rel = expand_inputs([str(folder_csv)])[0]  # relative to the manifest's folder
    assert [i.path for i in rel] == [str(tmp_path / Path(p).name) for p in images]
    uris = expand_inputs([f"file://{folder}"])[0]
    assert [i.path for i in uris] == [f"file://{p}" for p in images] and uris[0].kind == "uri"
    items, problems = expand_inputs([str(tmp_path / "m.parquet"), str(tmp_path / "nothing")])
    assert items == [] and "no column 'path'" in problems[0] and "nothing" in problems[1]
    lmdb = realdata_dir / "mmocr_rec_toy_dataset" / "imgs.lmdb"
    items = expand_inputs([str(lmdb)])[0]
    assert len(items) == 10 and items[0] == Item(f"{lmdb}/image-000000001", str(lmdb), 1)


def test_a_worker_reads_lmdb_uri_and_file_items_alike(realdata_dir):
    """The same images as files, file:// URIs and LMDB records give the same rows (no Ray involved)."""
    if hub.cached_path(hub.SMALL_MODEL) is None:
        pytest.skip("no shipped model")
    from clip4str.batch.work import ChunkWorker, worker_settings
    from clip4str.cli import build_parser
    from clip4str.data.lmdb_dataset import open_lmdb

    args = build_parser().parse_args(["batch", "x", "--out", "y", "--batch-size", "8"])
    args.device = "cpu"

    worker = ChunkWorker(worker_settings(args, None), threads=1)
    db = realdata_dir / "mmocr_rec_toy_dataset" / "imgs.lmdb"
    lmdb_items = expand_inputs([str(db)])[0][:4]
    with open_lmdb(db).begin() as txn:
        blobs = [bytes(txn.get(f"image-{i:09d}".encode())) for i in range(1, 5)]
    from_lmdb = worker.read_chunk(lmdb_items, 0)
    expected = worker.reader.read(blobs)
    assert [(r["text"], r["confidence"]) for r in from_lmdb] == [(p.text, p.confidence) for p in expected]
    folder = realdata_dir / "abinet_figs_test"
    paths = sorted(str(p) for p in folder.glob("*.png"))[:5]
    as_files = worker.read_chunk([Item(p) for p in paths], 10)
    as_uris = worker.read_chunk([Item(f"file://{p}") for p in paths], 10)
    strip = [{k: v for k, v in r.items() if k != "path"} for r in as_files]
    assert strip == [{k: v for k, v in r.items() if k != "path"} for r in as_uris]
    assert [r["index"] for r in as_files] == list(range(10, 15))
    gone = worker.read_chunk([Item("file:///nonexistent/x.png"), Item("s3x://b/k.png")], 0)
    assert "not found" in gone[0]["error"] and gone[1]["error"]


# ------------------------------------------------------------------------------------------ Ray stays optional
def test_nothing_else_in_the_package_imports_ray():
    offenders = []
    for path in (SRC / "clip4str").rglob("*.py"):
        if path.name == "ray_job.py":
            continue
        for line in path.read_text("utf-8").splitlines():
            if line.strip().startswith(("import ray", "from ray")):
                offenders.append(f"{path.relative_to(SRC)}: {line.strip()}")
    assert offenders == []
    code = "import sys, clip4str, clip4str.batch.job, clip4str.batch.work; from clip4str.cli import build_parser; "
    code += "build_parser().parse_args(['batch', 'x', '--out', 'y']); print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(SRC)),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.stdout.strip() == "False", out.stderr


# ------------------------------------------------------------------------------------------ the batching rule
def test_forward_passes_are_aligned_runs_of_items_whatever_fails():
    """read_stream's batches are runs of ``batch_size`` consecutive items less the failed ones, so a job
    that reads the same aligned runs on other machines makes the same forward passes."""
    import numpy as np

    from clip4str.config import PreprocessConfig
    from clip4str.decoding import DecodeOptions
    from clip4str.reading import BatchReader, Prediction

    class Recording(BatchReader):
        def __init__(self) -> None:
            self.options = DecodeOptions(batch_size=4)
            self.config = type("Config", (), {"preprocess": PreprocessConfig(image_size=(4, 4))})()
            self.passes: list[int] = []

        def _predict(self, pixels: np.ndarray) -> list[Prediction]:
            self.passes.append(len(pixels))
            return [Prediction(str(len(self.passes)), 1.0) for _ in pixels]

    from PIL import Image

    def load(i: int) -> Image.Image:
        if i in (1, 2, 9):
            raise OSError(f"bad {i}")
        return Image.new("RGB", (8, 8))

    reader = Recording()
    out = list(reader.read_stream(range(10), load=load, workers=2))
    assert reader.passes == [2, 4, 1]  # [0 3] [4 5 6 7] [8]: never more than the run's own items
    assert [i for i, _ in out] == list(range(10))
    assert [r.text if isinstance(r, Prediction) else "x" for _, r in out] == list("1xx122223x")
