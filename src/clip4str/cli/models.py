"""``clip4str models``: list the released checkpoints (and whether they are cached), or download some."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list released models and their cache status; --download fetches them",
        description=(
            "List the released CLIP4STR checkpoints that `--model NAME` accepts, with backbone, "
            "pre-training, training data, source and whether the file is already in the cache."
        ),
    )
    parser.add_argument(
        "--download",
        metavar="NAME",
        action="append",
        default=[],
        help="download this model into the cache (repeatable) and print its path",
    )
    parser.add_argument(
        "--cache-dir", default=None, help="cache folder (default: the Hugging Face hub cache)"
    )
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    parser.add_argument("--quiet", action="store_true", help="no download progress bar")
    parser.set_defaults(handler=run)


def _rows(cache_dir: str | None) -> list[dict[str, Any]]:
    from clip4str.hub import DEFAULT_MODEL, cached_path, list_models

    rows = []
    for rel in list_models():
        path = cached_path(rel, cache_dir)
        acc = rel.weighted_accuracy()
        measured = rel.measured.get("avg")
        if acc is not None:
            acc_text = f"{acc:.2f}"
        else:
            acc_text = f"{measured:.2f}*" if measured is not None else "-"
        shipped = rel.source == "package"
        rows.append(
            {
                "name": rel.name + (" (default)" if rel.name == DEFAULT_MODEL else ""),
                "backbone": rel.backbone,
                "pretrain": rel.pretrain,
                "data": rel.train_data,
                "acc": acc_text,
                "source": rel.source,
                "cached": ("shipped" if shipped else "yes") if path is not None else "no",
                "file": rel.alias_of and f"= {rel.alias_of}" or rel.filename,
                "path": str(path) if path is not None else None,
                "url": rel.url,
            }
        )
    return rows


def _json_rows(cache_dir: str | None) -> list[dict[str, Any]]:
    """Machine-readable rows: the plain name, numbers as numbers, flags as booleans."""
    from clip4str.hub import DEFAULT_MODEL, cached_path, list_models

    rows = []
    for rel in list_models():
        path = cached_path(rel, cache_dir)
        acc = rel.weighted_accuracy()
        rows.append(
            {
                "name": rel.name,
                "default": rel.name == DEFAULT_MODEL,
                "backbone": rel.backbone,
                "pretrain": rel.pretrain,
                "data": rel.train_data,
                "acc": round(acc, 4) if acc is not None else None,
                "measured": dict(rel.measured),
                "source": rel.source,
                "cached": path is not None,
                "alias_of": rel.alias_of,
                "file": rel.filename,
                "size": rel.approx_size,
                "path": str(path) if path is not None else None,
                "url": rel.url,
            }
        )
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    columns = ["name", "backbone", "pretrain", "data", "acc", "source", "cached", "file"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from clip4str.hub import cache_root, resolve_model

    if args.download:
        for name in args.download:
            print(resolve_model(name, cache_dir=args.cache_dir, progress=not args.quiet))
        return 0
    if args.json:
        print(json.dumps(_json_rows(args.cache_dir), indent=2))
        return 0
    rows = _rows(args.cache_dir)
    print(_table(rows))
    print(
        f"\nacc: sample-weighted mean accuracy (%) over the 12 benchmarks the official README reports; "
        "* measured by this package on the IIIT5K, SVT and IC15 test crops (5,724; 36 characters). "
        f"Cache: {cache_root(args.cache_dir)}. Use a name with `clip4str read --model NAME`; "
        "see docs/models.md.",
        file=sys.stdout,
    )
    return 0
