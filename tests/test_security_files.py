"""Hostile input files (issue 11, items 3-6, 8 and 11): nothing deleted, nothing read forever, nothing
decoded without bound, every bad file one clear error and the rest of the work done."""

from __future__ import annotations

import io
import os
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

from clip4str.charset import CHARSET_36
from clip4str.cli import main
from clip4str.data import lmdb_writer, transforms
from clip4str.data.labels import read_label_file
from clip4str.data.lmdb_dataset import LmdbDataset
from clip4str.data.lmdb_tools import create_lmdb, lmdb_info
from clip4str.data.lmdb_writer import LmdbWriter, write_lmdb
from clip4str.data.transforms import decode_image_bytes, load_image
from clip4str.errors import DatasetError, ImageReadError

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and /dev/zero are POSIX")


def png(value: int = 0, size: tuple[int, int] = (16, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int = 20000, height: int = 9000) -> bytes:
    """A PNG whose header announces 180 Mpx (over PIL's 179 Mpx hard limit) in a few hundred bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * (width + 1) * 4)  # a few rows: the header alone decides
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def label_folder(tmp_path: Path, extra: dict[str, bytes] | None = None) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    lines = []
    for i in range(3):
        (folder / f"w{i}.png").write_bytes(png(40 * i))
        lines.append(f"w{i}.png\tword{i}")
    for name, data in (extra or {}).items():
        (folder / name).write_bytes(data)
        lines.append(f"{name}\tbad")
    (folder / "labels.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def finishes(fn, timeout: float = 10.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) when it blocks."""
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the call blocked"
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result.get("value")


# ------------------------------------------------------------------------------ item 3: --overwrite
def test_overwrite_never_deletes_the_input_folder(tmp_path, capsys):
    folder = label_folder(tmp_path)
    before = sorted(p.name for p in folder.iterdir())
    code = main(
        ["lmdb", "create", "--labels", str(folder / "labels.tsv"), "--out", str(folder), "--overwrite"]
    )
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert "would contain the input" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in folder.iterdir()) == before


def test_overwrite_replaces_only_an_lmdb(tmp_path, capsys):
    folder = label_folder(tmp_path)
    labels = str(folder / "labels.tsv")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    assert main(["lmdb", "create", "--labels", labels, "--out", str(other), "--overwrite", "--quiet"]) == 1
    assert "is not an LMDB folder" in capsys.readouterr().err
    assert (other / "thesis.tex").read_text() == "precious"
    out = tmp_path / "lmdb"
    write_lmdb(out, [(png(), "old")])
    assert main(["lmdb", "create", "--labels", labels, "--out", str(out), "--overwrite", "--quiet"]) == 0
    assert lmdb_info(out)[0].num_samples == 3


# ------------------------------------------------------------------------------ item 4: /dev/zero, size cap
@posix_only
def test_symlink_to_dev_zero_is_refused_not_read(tmp_path):
    folder = label_folder(tmp_path)
    os.symlink("/dev/zero", folder / "zero.png")
    with open(folder / "labels.tsv", "a", encoding="utf-8") as f:
        f.write("zero.png\tzero\n")
    report = finishes(lambda: create_lmdb(folder / "labels.tsv", tmp_path / "out", progress=False))
    assert report.written == 3
    [(path, reason)] = report.skipped
    assert path.name == "zero.png" and "a device, not a regular file" in reason
    with pytest.raises(ImageReadError, match="not a regular file"):
        load_image(folder / "zero.png")


def test_image_files_are_read_up_to_a_cap(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    big.write_bytes(png(size=(400, 400)) + bytes(5000))
    monkeypatch.setattr(transforms, "MAX_IMAGE_BYTES", 1000)
    with pytest.raises(ImageReadError, match="over the 1,000 bytes limit"):
        load_image(big)


# ------------------------------------------------------------------------------ item 5: decompression bombs
def test_decompression_bomb_is_an_image_read_error_everywhere(tmp_path):
    bomb = bomb_png()
    assert len(bomb) < 100_000
    with pytest.raises(ImageReadError, match="decompression bomb"):
        decode_image_bytes(bomb, "bomb.png")
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    with pytest.raises(ImageReadError, match="decompression bomb"):
        load_image(path)

    folder = label_folder(tmp_path, {"bomb.png": bomb})
    report = create_lmdb(folder / "labels.tsv", tmp_path / "out", progress=False)  # skipped, not fatal
    assert report.written == 3 and [p.name for p, _ in report.skipped] == ["bomb.png"]

    mixed = tmp_path / "mixed"
    write_lmdb(mixed, [(png(), "abc"), (bomb, "bomb"), (png(9), "def")])
    assert lmdb_info(mixed, verify=True)[0].corrupt_images == [2]
    ds = LmdbDataset(mixed, CHARSET_36)  # the training path: skipped and counted
    assert [ds[i][1] for i in range(3)] == ["abc", "def", "def"] and ds.corrupt_count == 1


def test_pixels_decoded_at_once_are_bounded(monkeypatch):
    budget = transforms._PixelBudget(100)
    peak, lock = [0], threading.Lock()

    def work(pixels: int) -> None:
        with budget.take(pixels):
            with lock:
                peak[0] = max(peak[0], budget.used)
            time.sleep(0.01)

    threads = [threading.Thread(target=work, args=(n,)) for n in (60, 60, 30, 250, 40, 60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert peak[0] <= 100 and budget.used == 0


# ------------------------------------------------------------------------------ item 6: hangs
@posix_only
def test_fifos_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageReadError, match="a FIFO, not a regular file"):
        finishes(lambda: load_image(fifo))
    labels_fifo = tmp_path / "labels.tsv"
    os.mkfifo(labels_fifo)
    with pytest.raises(DatasetError, match="FIFO"):
        finishes(lambda: read_label_file(labels_fifo))
    folder = label_folder(tmp_path)
    os.mkfifo(folder / "pipe.png")
    with open(folder / "labels.tsv", "a", encoding="utf-8") as f:
        f.write("pipe.png\tpipe\n")
    report = finishes(lambda: create_lmdb(folder / "labels.tsv", tmp_path / "out", progress=False))
    assert report.written == 3 and "FIFO" in report.skipped[0][1]


def set_num_samples(path: Path, value: bytes) -> None:
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"num-samples", value)
    env.close()


@pytest.mark.parametrize(("value", "match"), [(b"1000000000000", "holds only"), (b"-5", "must be >= 0")])
def test_absurd_num_samples_is_refused_at_once(tmp_path, value, match):
    path = tmp_path / "db"
    write_lmdb(path, [(png(), "abc"), (png(1), "def")])
    set_num_samples(path, value)
    with pytest.raises(DatasetError, match=match):
        finishes(lambda: lmdb_info(path), timeout=5)
    with pytest.raises(DatasetError, match=match):
        finishes(lambda: LmdbDataset(path, CHARSET_36), timeout=5)


# ------------------------------------------------------------------------------ item 8: silent wrong input
def test_16_bit_grayscale_is_scaled_not_white(tmp_path):
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1040).astype(np.uint16)  # 0 .. 65520
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I;16")
    got = np.asarray(load_image(path))[:, :, 0].astype(int)
    expected = np.round(ramp.astype(float) * 255 / 65535)
    assert np.abs(got - expected).max() <= 1 and got.min() == 0 and 100 < np.median(got) < 160


def test_empty_image_is_refused():
    with pytest.raises(ImageReadError, match="empty"):
        load_image(Image.new("RGB", (0, 0)))
    with pytest.raises(ImageReadError, match="empty"):
        load_image(Image.new("L", (5, 0)))


# ------------------------------------------------------------------------------ item 11: races, leftovers
def test_lmdb_created_elsewhere_during_the_run_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    writer = LmdbWriter(out)
    writer.add(png(), "mine")
    write_lmdb(out, [(png(1), "theirs"), (png(2), "theirs")])  # another process wins the race
    with pytest.raises(DatasetError, match="created by another process") as info:
        writer.close()
    assert lmdb_info(out)[0].num_samples == 2  # theirs, untouched
    kept = Path(str(info.value).rsplit(" is at ", 1)[1])
    assert kept.exists() and lmdb_info(kept)[0].num_samples == 1  # ours, kept


def test_leftover_of_a_killed_writer_is_removed(tmp_path):
    out = tmp_path / "out"
    dead = tmp_path / f"out{lmdb_writer.TMP_MARKER}999999-abcd"
    dead.mkdir()
    (dead / "data.mdb").write_bytes(b"half")
    (dead / lmdb_writer._OWNER_FILE).write_text(f"{lmdb_writer.socket.gethostname()} 999999999\n")
    write_lmdb(out, [(png(), "abc")])
    assert not dead.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_disk_full_while_writing_loses_nothing(tmp_path, monkeypatch, capsys):
    folder = label_folder(tmp_path)
    out = tmp_path / "out"
    write_lmdb(out, [(png(), "old")])
    real_open = lmdb.open

    class FullTxn:
        def __init__(self, txn):
            self.txn = txn

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.txn.abort()

        def put(self, *args):
            raise lmdb.DiskError("mdb_put: No space left on device")

    class FullEnv:
        def __init__(self, env):
            self.env = env

        def begin(self, write=False):
            return FullTxn(self.env.begin(write=write))

        def __getattr__(self, name):
            return getattr(self.env, name)

    monkeypatch.setattr(lmdb_writer.lmdb, "open", lambda *a, **k: FullEnv(real_open(*a, **k)))
    code = main(["lmdb", "create", "--labels", str(folder / "labels.tsv"), "--out", str(out), "--overwrite"])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert "the disk is full" in err and "unchanged" in err and len(err.splitlines()) == 1
    monkeypatch.setattr(lmdb_writer.lmdb, "open", real_open)
    assert lmdb_info(out)[0].num_samples == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "out"]


@posix_only
def test_sigterm_during_lmdb_create_leaves_nothing_behind(tmp_path):
    import signal
    import subprocess

    folder = label_folder(tmp_path)
    labels = folder / "many.tsv"
    labels.write_text("w0.png\tword\n" * 100_000, encoding="utf-8")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "clip4str", "lmdb", "create", "--labels", str(labels), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(f"out{lmdb_writer.TMP_MARKER}*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "lmdb create never started writing"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]
