"""``clip4str eval --scenes DIR``: detection and end-to-end scores on whole photos (ICDAR 2015 layout)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_scene_arguments", "run_scenes"]


def add_scene_arguments(parser: argparse.ArgumentParser) -> None:
    """The whole-photo options of ``clip4str eval`` (``--scenes`` itself sits in the data group)."""
    group = parser.add_argument_group("whole photos (with --scenes; pip install 'clip4str[detect]')")
    group.add_argument(
        "--orientation",
        choices=["auto", "none"],
        default="auto",
        help="auto: tall boxes are also read turned a quarter either way (default); none: as boxed",
    )
    group.add_argument("--limit", type=int, default=None, metavar="N", help="the first N photos only")


def run_scenes(args: argparse.Namespace) -> int:
    """Detect and read every photo of ``args.scenes``, then print the detection / end-to-end report."""
    from clip4str.charset import resolve_charset
    from clip4str.cli.read import load_recognizer
    from clip4str.detect import as_detector
    from clip4str.eval_scenes import evaluate_scenes, find_scenes, load_gt

    prog = "clip4str eval"
    clash = [
        opt
        for opt, value in (
            ("--data", args.data),
            ("--labels", args.labels),
            ("--images", args.images),
            ("--datasets", args.datasets),
            ("--errors", args.errors),
            ("--cased", args.cased),
            ("--punctuation", args.punctuation),
        )
        if value
    ]
    if clash:
        print(
            f"{prog}: error: --scenes does not go with {', '.join(clash)} (words match case-insensitively; "
            "--charset-test restricts what the model reads)",
            file=sys.stderr,
        )
        return 2
    if args.limit is not None and args.limit < 1:
        print(f"{prog}: error: --limit must be >= 1, got {args.limit}", file=sys.stderr)
        return 2
    pairs = find_scenes(args.scenes)  # a malformed folder fails before the model loads
    for _, gt in pairs[: args.limit]:
        load_gt(gt)  # so does a ground-truth file that is not UTF-8 or not ICDAR lines
    from clip4str.cli.eval import output_guard

    guard = output_guard(args)  # --out: never over a photo or ground-truth file, nor the model
    detector = as_detector(None)
    args.charset_test = resolve_charset(args.charset) if args.charset else None
    recognizer = load_recognizer(args)
    report = evaluate_scenes(
        recognizer,
        args.scenes,
        detector,
        limit=args.limit,
        orientation=args.orientation,
        progress=not args.quiet,
    )
    report.settings.update(
        model=args.model,
        detector=type(detector).__name__,
        orientation=args.orientation,
        scenes=str(args.scenes),
        photos_available=len(pairs),
    )
    from clip4str.cli.output import write_report

    write_report(report.format(args.format), args.out, args.format, prog, guard)
    if report.skipped:
        first = report.skipped[0]
        print(
            f"{prog}: warning: {len(report.skipped)} photo(s) could not be read and were skipped (their words "
            f"count as missed); first: {first['image']}: {first['error']}",
            file=sys.stderr,
        )
    per = report.as_dict()["seconds_per_photo"]
    print(
        f"{prog}: {report.photos} photos, s/photo: "
        + ", ".join(f"{k} {v:.3f}" for k, v in per.items())
        + f" ({recognizer.device}, {recognizer.options.precision})",
        file=sys.stderr,
    )
    return 0
