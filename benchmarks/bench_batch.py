"""``clip4str batch`` against ``clip4str read`` on the same crops, in the same run: a throughput ratio.

Both commands run as a user runs them (subprocesses, the shipped model, the same --batch-size), read
first, then batch, ``--rounds`` times alternately. Two rates per command:

* end to end: images / wall seconds of the whole command (Python start, model load, and for batch the
  local Ray start and the actor pool);
* steady: images / seconds between the first and the last result (read: its first and last output line;
  batch: rows of all shards but the first / seconds between the first and the last shard written).

    python benchmarks/bench_batch.py                                  # 512 IIIT5K test crops
    python benchmarks/bench_batch.py --images 1024 --rounds 2 --batch-size 32
    python benchmarks/bench_batch.py --where                          # where the time goes, per stage
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def run_read(folder: Path, batch_size: int) -> tuple[float, float, int]:
    """(wall s, steady img/s, lines) of ``clip4str read``."""
    cmd = [sys.executable, "-m", "clip4str", "read", str(folder), "--batch-size", str(batch_size), "--quiet"]
    start = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # each line as it is printed, not in 8 KiB blocks
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    stamps = [time.perf_counter() for _ in proc.stdout]
    proc.wait()
    wall = time.perf_counter() - start
    steady = (len(stamps) - batch_size) / (stamps[-1] - stamps[batch_size - 1])  # after the first batch
    return wall, steady, len(stamps)


def run_batch(folder: Path, batch_size: int, shard: int, out: Path) -> tuple[float, float, int]:
    """(wall s, steady img/s, rows) of ``clip4str batch`` (a local Ray on this machine's cores)."""
    cmd = [sys.executable, "-m", "clip4str", "batch", str(folder), "--out", str(out), "--batch-size",
           str(batch_size), "--shard-size", str(shard), "--quiet"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: dict[str, float] = {}
    while proc.poll() is None:
        for p in out.glob("part-*.parquet"):
            seen.setdefault(p.name, time.perf_counter())
        time.sleep(0.02)
    wall = time.perf_counter() - start
    for p in out.glob("part-*.parquet"):
        seen.setdefault(p.name, time.perf_counter())
    if proc.returncode != 0:
        raise SystemExit(f"clip4str batch failed:\n{proc.stderr.read() if proc.stderr else ''}")
    import pyarrow.parquet as pq

    rows = sum(pq.read_metadata(p).num_rows for p in out.glob("part-*.parquet"))
    times = sorted(seen.values())
    steady = (rows - shard) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    return wall, steady, rows


def where_time_goes(folder: Path, batch_size: int) -> None:
    """CPU milliseconds per image of each stage, in this process: file read + decode + resize + normalise
    (one thread), and the model at ``batch_size`` with 1 and 2 torch threads; then ``read_files`` with 4
    decoding threads (read's default) and with 1."""
    import numpy as np
    import torch

    import clip4str
    from clip4str.data.transforms import load_image, preprocess_one_array

    paths = sorted(folder.iterdir())
    reader = clip4str.load(batch_size=batch_size)
    cfg = reader.config.preprocess
    start = time.process_time()
    pixels = np.stack([preprocess_one_array(load_image(p), cfg) for p in paths])
    print(
        f"decode + preprocess: {1000 * (time.process_time() - start) / len(paths):.2f} CPU ms/img (1 thread)"
    )
    for threads in (1, 2):
        torch.set_num_threads(threads)
        reader._predict(pixels[:batch_size])  # warm-up
        wall = time.perf_counter()
        for i in range(0, len(paths) - batch_size + 1, batch_size):
            reader._predict(pixels[i : i + batch_size])
        n = (len(paths) // batch_size) * batch_size
        print(
            f"model, batch {batch_size}, {threads} thread(s): {1000 * (time.perf_counter() - wall) / n:.2f} wall ms/img"
        )
    for workers in (4, 1):
        wall = time.perf_counter()
        list(reader.read_files(paths, workers=workers))
        print(
            f"read_files, 2 torch threads, {workers} decoding thread(s): {len(paths) / (time.perf_counter() - wall):.1f} img/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--crops", type=Path, default=SHARED / "realdata" / "iiit5k_test" / "test")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--where", action="store_true", help="per-stage milliseconds instead of the commands")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "crops"
        folder.mkdir()
        for src in sorted(args.crops.glob("*.png"))[: args.images]:
            (folder / src.name).symlink_to(src)
        n = len(list(folder.iterdir()))
        print(
            f"{n} crops, --batch-size {args.batch_size}, {os.cpu_count()} CPUs, {platform.processor() or ''}"
        )
        print(f"load average before: {os.getloadavg()[0]:.1f}")
        if args.where:
            where_time_goes(folder, args.batch_size)
            return
        results: dict[str, list[tuple[float, float]]] = {"read": [], "batch": []}
        for r in range(args.rounds):
            wall, steady, lines = run_read(folder, args.batch_size)
            assert lines == n, f"read printed {lines} lines for {n} images"
            results["read"].append((wall, steady))
            print(
                f"round {r + 1} read : {wall:6.1f} s wall = {n / wall:5.1f} img/s end to end; {steady:5.1f} img/s steady"
            )
            wall, steady, rows = run_batch(folder, args.batch_size, args.shard_size, Path(tmp) / f"out{r}")
            assert rows == n, f"batch wrote {rows} rows for {n} images"
            results["batch"].append((wall, steady))
            print(
                f"round {r + 1} batch: {wall:6.1f} s wall = {n / wall:5.1f} img/s end to end; {steady:5.1f} img/s steady"
            )
        rw = sum(w for w, _ in results["read"]) / args.rounds
        bw = sum(w for w, _ in results["batch"]) / args.rounds
        rs = sum(s for _, s in results["read"]) / args.rounds
        bs = sum(s for _, s in results["batch"]) / args.rounds
        print(f"batch / read throughput: end to end {rw / bw:.2f}x, steady {bs / rs:.2f}x")
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
