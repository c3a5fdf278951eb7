"""``clip4str lmdb create|info``: make an LMDB from images + a label file, describe LMDBs."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lmdb",
        help="make and inspect LMDB datasets (image-%%09d / label-%%09d / num-samples layout)",
        description="Make and inspect LMDB datasets in the standard scene-text layout.",
    )
    sub = parser.add_subparsers(dest="lmdb_command", metavar="ACTION")

    create = sub.add_parser(
        "create",
        help="write images listed in a label file into a new LMDB",
        description=(
            "Write the images listed in a label file into a new LMDB, storing the original bytes. Label "
            "lines are 'path<TAB>label' (extra columns ignored, optional header line) or 'path label' "
            "(gt.txt style). Undecodable or missing images are skipped and reported. The LMDB appears "
            "at --out only when complete."
        ),
    )
    create.add_argument("--labels", required=True, metavar="FILE", help="label file")
    create.add_argument(
        "--images", metavar="DIR", help="folder the image paths are relative to (default: the label file's)"
    )
    create.add_argument("--out", required=True, metavar="DIR", help="LMDB folder to create")
    create.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    create.add_argument("--quiet", action="store_true", help="no progress bar")
    create.set_defaults(handler=_create)

    info = sub.add_parser(
        "info",
        help="samples, label lengths and characters of LMDBs",
        description="Describe every LMDB at or under DIR: samples, label length histogram, characters used.",
    )
    info.add_argument("path", metavar="DIR", help="an LMDB folder or a folder searched recursively for them")
    info.add_argument(
        "--charset",
        help="report characters outside this charset and what the label rules keep "
        "(preset 36/62/94/vietnamese, a file, or the characters)",
    )
    info.add_argument("--max-label-length", type=int, default=25, help="for the label rules (default 25)")
    info.add_argument(
        "--verify", action="store_true", help="also decode every image and list undecodable ones"
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(handler=_info)

    parser.set_defaults(handler=lambda args: (parser.print_help(sys.stderr), 2)[1])


def _create(args: argparse.Namespace) -> int:
    from clip4str.cli._signals import sigterm_as_interrupt
    from clip4str.data.lmdb_tools import create_lmdb

    with sigterm_as_interrupt():  # killed: the unfinished LMDB is removed, --out untouched
        report = create_lmdb(
            args.labels, args.out, args.images, overwrite=args.overwrite, progress=not args.quiet
        )
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"wrote {report.written} samples to {report.out} ({len(report.skipped)} skipped)")
    return 0


def _info(args: argparse.Namespace) -> int:
    from clip4str.charset import resolve_charset
    from clip4str.data.lmdb_tools import format_info, lmdb_info

    charset = resolve_charset(args.charset) if args.charset else None
    infos = lmdb_info(
        args.path,
        charset,
        args.max_label_length,
        verify=args.verify,
        progress=args.verify and sys.stderr.isatty(),
    )
    if args.json:
        print(json.dumps([i.to_dict() for i in infos], ensure_ascii=False, indent=2))
    else:
        print("\n\n".join(format_info(i) for i in infos))
        if len(infos) > 1:
            print(f"\ntotal: {sum(i.num_samples for i in infos):,} samples in {len(infos)} LMDBs")
    return 0
