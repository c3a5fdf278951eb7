"""``clip4str plot RUN_DIR``: draw a training run's loss and accuracy curves to a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="draw a training run's loss and accuracy curves to a PNG",
        description="Read RUN_DIR/metrics.csv and draw loss, learning rate and validation curves.",
    )
    parser.add_argument("run_dir", help="a folder made by `clip4str train` (or its metrics.csv)")
    parser.add_argument(
        "-o",
        "--output",
        default=None,
        help="PNG to write (default: RUN_DIR/curves.png, replaced at each plot); an existing file elsewhere "
        "only with --overwrite, never a file of the run",
    )
    parser.add_argument("--overwrite", action="store_true", help="let --output replace an existing file")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from clip4str.files import OutputGuard
    from clip4str.train.plot import plot_run

    source = Path(args.run_dir)
    folder = source if source.is_dir() else source.parent
    default = folder / "curves.png"
    out = Path(args.output) if args.output else default
    # the default plot replaces the previous one; nothing else of the run is ever written over
    guard = OutputGuard("clip4str plot", overwrite=args.overwrite or args.output is None)
    if source.is_file():
        guard.protect(source, "the run's metrics file")
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name != default.name:
                guard.protect(entry, "a file of the training run")
    guard.claim(out, "--output", parents=True)
    guard.write(out, lambda tmp: plot_run(args.run_dir, tmp), "--output")
    print(out)
    return 0
