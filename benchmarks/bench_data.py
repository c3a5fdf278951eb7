"""Data pipeline throughput: one process (= one DataLoader worker) and the synthetic renderer per core.

Measures, single-threaded:
  * samples/s of LMDB read + decode + official RandAugment + resize + normalise, at 224x224 and 32x128;
  * the same without augmentation (the validation/evaluation path);
  * synth images/s on one core, and with all cores through ``generate_lmdb``.

    python benchmarks/bench_data.py                       # on a synth LMDB it renders first
    python benchmarks/bench_data.py --lmdb data/train/real --samples 2000
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from clip4str.charset import CHARSET_94
from clip4str.config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PreprocessConfig
from clip4str.data.augment import build_train_transform
from clip4str.data.lmdb_dataset import build_dataset
from clip4str.data.synth import SynthConfig, find_fonts, generate_lmdb, render_sample
from clip4str.data.transforms import Preprocess

WORDS = (
    "the of and to in is for on with as at by from or an be this that are not you all new more can".split()
)


def _rate(fn, n: int) -> tuple[float, float]:
    """(items per wall second, items per CPU second of this process); the second ignores other load."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lmdb", help="LMDB (or folder of them) to read; default: render a synth one")
    parser.add_argument("--samples", type=int, default=1000, help="samples per measurement (default 1000)")
    parser.add_argument("--synth-count", type=int, default=400, help="images for the synth measurements")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes for synth (all cores)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    fonts = [str(f) for f in find_fonts()]
    cfg = SynthConfig(fonts=fonts, words=WORDS, seed=0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {platform.machine()}, {os.cpu_count()} cores, load {load:.1f}, torch {torch.__version__}")
    print(f"# fonts: {len(fonts)}")

    with tempfile.TemporaryDirectory() as tmp:
        render_sample(0, cfg)  # warm the font caches
        per_core = _rate(lambda i: render_sample(i, cfg), args.synth_count)
        start = time.perf_counter()
        generate_lmdb(
            Path(tmp) / "synth_all", args.synth_count * 2, cfg, workers=args.workers, progress=False
        )
        all_cores = args.synth_count * 2 / (time.perf_counter() - start)
        print(f"synth, 1 core: {per_core[0]:.0f} images/s wall, {per_core[1]:.0f} per CPU-second")
        print(f"synth, {args.workers} processes into LMDB: {all_cores:.0f} images/s")

        source = args.lmdb
        if source is None:
            source = Path(tmp) / "read"
            generate_lmdb(source, args.samples, cfg, workers=args.workers, progress=False)
        for size in ((224, 224), (32, 128)):
            for augment in (True, False):
                transform = (
                    build_train_transform(size, seed=0)
                    if augment
                    else Preprocess(
                        PreprocessConfig(image_size=size, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
                    )
                )
                ds = build_dataset(source, CHARSET_94, transform=transform)
                n = min(args.samples, len(ds))
                ds[0]
                rate = _rate(lambda i, ds=ds: ds[i % len(ds)], n)
                what = "decode+augment+normalise" if augment else "decode+normalise (eval)"
                print(
                    f"{what} {size[0]}x{size[1]}: {rate[0]:.0f} samples/s per worker wall, "
                    f"{rate[1]:.0f} per CPU-second"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
