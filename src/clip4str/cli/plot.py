"""``clip4str plot RUN_DIR``: draw a training run's loss and accuracy curves to a PNG."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="draw a training run's loss and accuracy curves to a PNG",
        description="Read RUN_DIR/metrics.csv and draw loss, learning rate and validation curves.",
    )
    parser.add_argument("run_dir", help="a folder made by `clip4str train` (or its metrics.csv)")
    parser.add_argument("-o", "--output", default=None, help="PNG to write (default: RUN_DIR/curves.png)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from clip4str.train.plot import plot_run

    out = plot_run(args.run_dir, args.output)
    print(out)
    return 0
