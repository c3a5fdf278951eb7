"""``clip4str eval``: accuracy on the standard benchmarks (or a labelled image folder), as the papers report it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from clip4str.cli.read import add_decoding_arguments, load_recognizer

if TYPE_CHECKING:
    from clip4str.files import OutputGuard

FORMATS = ("table", "markdown", "csv", "json")


def _dataset_names(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    return names or None


def output_guard(args: argparse.Namespace) -> OutputGuard:
    """The output guard of ``eval``, with --out and --errors claimed (before the model loads): never over
    the label file, the dataset, the scenes' ground truth or the model; an existing file only with
    --overwrite; not both options onto one file."""
    from clip4str.files import OutputGuard

    guard = OutputGuard("clip4str eval", overwrite=args.overwrite)
    guard.protect(args.labels, "the label file (--labels)")
    guard.protect(args.data, "a file of the dataset (--data)")
    guard.protect(getattr(args, "scenes", None), "a photo or ground-truth file of --scenes")
    guard.protect_model(args.model)
    for option, target in (("--out", args.out), ("--errors", args.errors)):
        if target:
            guard.claim(target, option)
    return guard


def run(args: argparse.Namespace) -> int:
    from clip4str.charset import resolve_charset
    from clip4str.evaluate import evaluate_label_file, evaluate_layout, find_benchmarks, test_charset

    prog = "clip4str eval"
    if args.scenes is not None:  # whole photos: detection + end-to-end (clip4str.eval_scenes)
        from clip4str.cli._scenes import run_scenes

        return run_scenes(args)
    if (args.data is None) == (args.labels is None):
        print(f"{prog}: error: give exactly one of --data ROOT or --labels FILE", file=sys.stderr)
        return 2
    if args.images is not None and args.labels is None:
        print(f"{prog}: error: --images goes with --labels", file=sys.stderr)
        return 2
    datasets = _dataset_names(args.datasets)
    if datasets and args.data is None:
        print(f"{prog}: error: --datasets goes with --data", file=sys.stderr)
        return 2
    if args.charset is not None and (args.cased or args.punctuation):
        print(
            f"{prog}: error: --charset-test replaces --cased/--punctuation; give one or the other",
            file=sys.stderr,
        )
        return 2
    charset = resolve_charset(args.charset) if args.charset else test_charset(args.cased, args.punctuation)

    # Check the data before the (slow) model load.
    layout = None
    if args.data is not None:
        from clip4str.data.lmdb_dataset import find_lmdbs

        layout = find_benchmarks(args.data, datasets)
        for path in layout.paths.values():
            find_lmdbs(path)  # a set folder without an LMDB is an error before the model loads
        for name in layout.ignored:
            print(
                f"{prog}: note: ignoring test/{name} (not a standard name; add it with --datasets)",
                file=sys.stderr,
            )
    elif not Path(args.labels).is_file():
        print(f"{prog}: error: label file not found: {args.labels}", file=sys.stderr)
        return 1

    guard = output_guard(args)
    args.charset_test = charset  # the official evaluation gives the test charset to the model
    recognizer = load_recognizer(args)
    options = dict(
        charset=charset,
        max_label_length=args.max_label_length,
        workers=args.workers,
        progress=not args.quiet,
    )
    if layout is not None:
        report = evaluate_layout(recognizer, layout, **options)
    else:
        report = evaluate_label_file(recognizer, args.labels, args.images, **options)
    report.settings["model"] = args.model

    from clip4str.cli.output import write_report

    write_report(report.format(args.format), args.out, args.format, prog, guard)
    if args.errors:
        count = 0

        def write_errors(tmp: Path) -> None:
            nonlocal count
            count = report.write_errors(tmp)

        guard.write(args.errors, write_errors, "--errors")
        print(f"{prog}: wrote {count} wrong prediction(s) to {args.errors}", file=sys.stderr)
    for name, result in report.results.items():
        if result.filtered:
            drops = ", ".join(f"{k} {v}" for k, v in result.filtered.items())
            print(f"{prog}: {name}: label rules: {drops}", file=sys.stderr)
    failures = report.failures
    if failures:
        print(
            f"{prog}: warning: {len(failures)} sample(s) could not be read and count as wrong "
            f"(column Failed); first: {failures[0].key}: {failures[0].error}",
            file=sys.stderr,
        )
    print(
        f"{prog}: {report.num_samples} images in {report.seconds:.1f} s: "
        f"{report.images_per_second:.1f} images/s ({recognizer.device}, batch {recognizer.options.batch_size}, "
        f"{recognizer.options.precision})",
        file=sys.stderr,
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="measure accuracy on the STR benchmarks or a labelled image folder",
        description=(
            "Evaluate with the official protocol: test charset 36 (lowercase + digits) unless --cased / "
            "--punctuation, labels filtered by the data rules, predictions passed through the charset adapter. "
            "Reports accuracy, 1 - NED, confidence, label length per dataset and sample-weighted group averages."
        ),
    )
    source = parser.add_argument_group("data (one of --data or --labels)")
    source.add_argument(
        "--data", metavar="ROOT", help="dataset root holding test/<NAME>/ LMDBs (PARSeq's layout)"
    )
    source.add_argument(
        "--datasets",
        nargs="+",
        metavar="NAME",
        help="evaluate only these (e.g. IIIT5k SVT IC15_2077, or comma-separated); an absent one is an error",
    )
    source.add_argument(
        "--labels", metavar="FILE", help="label file: path<TAB>label per line, paths relative to it"
    )
    source.add_argument("--images", metavar="DIR", help="folder the label file's paths are relative to")
    source.add_argument(
        "--scenes",
        metavar="DIR",
        help="whole photos, ICDAR 2015 layout (Imgs/img_N.jpg, Gts/gt_img_N.txt): detection and end-to-end "
        "precision / recall / hmean",
    )
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument("--cased", action="store_true", help="case-sensitive: test charset 62")
    protocol.add_argument("--punctuation", action="store_true", help="add punctuation to the test charset")
    protocol.add_argument(
        "--charset-test",
        "--charset",
        dest="charset",
        default=None,
        help="explicit test charset (preset 36/62/94/vietnamese, a file or the characters) instead of "
        "--cased/--punctuation, as `read --charset-test` (--charset is the older spelling)",
    )
    protocol.add_argument(
        "--max-label-length",
        type=int,
        default=None,
        help="drop longer labels (default: the model's, 25)",
    )
    add_decoding_arguments(parser)
    report = parser.add_argument_group("report")
    report.add_argument("--format", choices=FORMATS, default="table", help="report format (default: table)")
    report.add_argument("--out", metavar="FILE", help="write the report here instead of stdout")
    report.add_argument("--errors", metavar="FILE", help="write every wrong prediction here (TSV)")
    report.add_argument(
        "--overwrite",
        action="store_true",
        help="let --out/--errors replace an existing file (never an input, the model or ground truth)",
    )
    parser.add_argument("--workers", type=int, default=4, help="image decoding threads (default: 4)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    from clip4str.cli._scenes import add_scene_arguments

    add_scene_arguments(parser)
    parser.set_defaults(handler=run)
