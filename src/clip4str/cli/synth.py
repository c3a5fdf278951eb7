"""``clip4str synth``: render synthetic word images straight into an LMDB."""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="render synthetic word images into an LMDB",
        description=(
            "Render synthetic word images (system fonts, colours, backgrounds, rotation, perspective, curved "
            "baselines, blur, noise, JPEG artefacts) into a new LMDB. The output depends only on the "
            "options, the seed and the installed fonts, not on --workers."
        ),
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="LMDB folder to create")
    parser.add_argument("--count", required=True, type=int, metavar="N", help="number of images")
    parser.add_argument(
        "--vocab", metavar="FILE", help="words to render, one per line (default: random strings)"
    )
    parser.add_argument(
        "--random-ratio",
        type=float,
        default=0.2,
        help="with --vocab, the fraction of random strings mixed in (default 0.2)",
    )
    parser.add_argument(
        "--charset", default="94", help="preset 36/62/94/vietnamese, a file, or the characters (default 94)"
    )
    parser.add_argument("--min-length", type=int, default=1, help="shortest random string / word (default 1)")
    parser.add_argument(
        "--max-length", type=int, default=25, help="longest random string / word (default 25)"
    )
    parser.add_argument(
        "--fonts", nargs="+", metavar="PATH", help="font files or folders (default: all system fonts)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_synth)


def _synth(args: argparse.Namespace) -> int:
    import time

    from clip4str.charset import resolve_charset
    from clip4str.data.synth import SynthConfig, find_fonts, generate_lmdb, read_vocabulary

    if args.count < 1:
        raise ValueError(f"--count must be >= 1, got {args.count}")
    fonts = find_fonts(args.fonts)
    if not fonts:
        where = ", ".join(args.fonts) if args.fonts else "fc-list and the system font folders"
        raise FileNotFoundError(
            f"no font files (.ttf/.otf/.ttc) found in {where}; install some (Debian: fonts-dejavu-core) "
            "or pass --fonts"
        )
    charset = resolve_charset(args.charset)
    words = read_vocabulary(args.vocab) if args.vocab else []
    cfg = SynthConfig(
        charset=charset,
        words=words,
        random_ratio=args.random_ratio if words else 1.0,
        min_length=args.min_length,
        max_length=args.max_length,
        fonts=[str(f) for f in fonts],
        seed=args.seed,
    )
    if args.vocab and not cfg.words:
        raise ValueError(
            f"no word in {args.vocab} fits the charset and lengths {args.min_length}..{args.max_length}"
        )
    print(
        f"synth: {len(fonts)} fonts, {len(cfg.words)} words, {args.workers} workers, seed {args.seed}",
        file=sys.stderr,
    )
    from clip4str.cli._signals import sigterm_as_interrupt

    start = time.perf_counter()
    with sigterm_as_interrupt():  # killed: the unfinished LMDB is removed, --out untouched
        out = generate_lmdb(
            args.out, args.count, cfg, workers=args.workers, overwrite=args.overwrite, progress=not args.quiet
        )
    elapsed = time.perf_counter() - start
    print(f"wrote {args.count} images to {out} in {elapsed:.1f} s ({args.count / elapsed:.0f} images/s)")
    return 0
