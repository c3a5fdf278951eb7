"""``clip4str read``: print the text of word images."""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def add_decoding_arguments(parser: argparse.ArgumentParser, batch_size: bool = True) -> None:
    """Model and decoding options shared by ``read``, ``eval``, ``explain`` and ``serve`` (``batch_size=False``:
    the caller sets ``args.batch_size`` itself)."""
    parser.add_argument(
        "--model",
        default=None,
        help="release name or checkpoint path (default: clip4str-small, shipped in the package)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    if batch_size:
        parser.add_argument(
            "--batch-size", type=int, default=32, help="images per forward pass (default: 32)"
        )
    parser.add_argument(
        "--decode",
        choices=["ar", "nar"],
        default=None,
        help="autoregressive or not (default: the model's, ar for released models)",
    )
    parser.add_argument(
        "--refine-iters",
        type=int,
        default=None,
        help="cloze refinement iterations (default: the model's, 1 for released models)",
    )
    parser.add_argument("--visual-only", action="store_true", help="use the visual branch alone")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default=None,
        help="autocast precision (default auto: bf16 only where this machine computes it natively and faster)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (for long GPU runs)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model config override, e.g. decoder.num_heads=4 (repeatable)",
    )


def add_runtime_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runtime",
        choices=["auto", "torch", "onnx"],
        default="auto",
        help="torch, or onnx: ONNX Runtime, no PyTorch needed; --model is then an export folder "
        "(`clip4str export MODEL DIR --format onnx`), or a model exported once into a cache (docs/deploy.md); "
        "default auto: torch where it is installed, else onnx",
    )


def decoding_changes(args: argparse.Namespace) -> dict:
    """The decoding options the arguments of :func:`add_decoding_arguments` (and ``--charset-test``) set:
    :class:`~clip4str.decoding.DecodeOptions` fields, None where the model's own value stays."""
    from clip4str.charset import resolve_charset

    charset_test = getattr(args, "charset_test", None)
    return {
        "mode": args.decode,
        "refine_iters": args.refine_iters,
        "visual_only": args.visual_only or None,
        "charset_test": resolve_charset(charset_test) if charset_test else None,
        "precision": args.precision,
        "batch_size": args.batch_size,
    }


def load_recognizer(args: argparse.Namespace):
    """Build the recognizer the decoding arguments describe (``--runtime onnx``: the torch-free reader)."""
    runtime = getattr(args, "runtime", "torch")
    if runtime == "auto":
        import importlib.util

        runtime = "torch" if importlib.util.find_spec("torch") is not None else "onnx"
    if runtime == "onnx":
        from clip4str.deploy.onnx_reader import load_onnx_for_cli

        reader = load_onnx_for_cli(args, decoding_changes(args))
        print(f"clip4str: model {reader.name}", file=sys.stderr)
        return reader
    import clip4str

    reader = clip4str.load(
        args.model,
        args.device,
        compile=args.compile,
        overrides=args.overrides or None,
        **decoding_changes(args),
    )
    print(f"clip4str: model {reader.name}", file=sys.stderr)  # never a silent choice of model
    if getattr(args, "threads", None) is None and reader.device.type == "cpu":
        from clip4str.threads import default_threads, set_threads

        count = default_threads(sum(p.numel() for p in reader.model.parameters()))
        if count is not None:
            set_threads(count)
    return reader


def expand_paths(specs: list[str]) -> tuple[list[str], list[str]]:
    """Files, folders (their images, recursively, sorted) and globs → (image paths, specs matching nothing)."""
    found: list[str] = []
    unmatched: list[str] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                unmatched.append(spec)
            found.extend(str(p) for p in images)
        elif path.exists():
            found.append(spec)
        elif any(c in spec for c in "*?["):
            matches = sorted(m for m in glob.glob(spec, recursive=True) if Path(m).is_file())
            if not matches:
                unmatched.append(spec)
            found.extend(matches)
        else:
            unmatched.append(spec)
    first: dict[str, str] = {}  # a folder and an overlapping glob name a file twice: keep its first name
    for p in found:
        first.setdefault(os.path.realpath(p), p)
    return list(first.values()), unmatched


def run(args: argparse.Namespace) -> int:
    from clip4str.cli._photos import check_photo_arguments, prepare_photos, run_photos

    problem = check_photo_arguments(args)
    if problem:
        args.command_parser.error(problem)
    paths, unmatched = expand_paths(args.paths)
    failures = 0
    for spec in unmatched:
        print(f"clip4str read: {spec}: no such file, or no images in it", file=sys.stderr)
        failures += 1
    if not paths and not args.boxes:
        return 1 if failures else 0
    photos = prepare_photos(args, paths) if args.detect or args.boxes else None  # before the model loads
    recognizer = load_recognizer(args)
    if photos is not None:  # whole photos: one line per word, or one JSON object per photo
        failures += run_photos(args, recognizer, photos)
        if failures:
            print(f"clip4str read: {failures} input(s) could not be read", file=sys.stderr)
        return 1 if failures else 0
    from tqdm import tqdm

    from clip4str.cli.output import json_line, tsv_line

    show = len(paths) > args.batch_size and not args.quiet
    with tqdm(total=len(paths), unit="img", file=sys.stderr, disable=not show or None, leave=False) as bar:
        for path, result in recognizer.read_files(paths, workers=args.workers):
            bar.update(1)
            if isinstance(result, Exception):
                failures += 1
                bar.write(f"clip4str read: skipped {path}: {result}", file=sys.stderr)
                continue
            if args.json:  # lines that parse whatever the names hold (clip4str.cli.output)
                line = json_line(
                    {"path": path, "text": result.text, "confidence": round(result.confidence, 6)}
                )
            else:
                line = tsv_line(path, result.text, f"{result.confidence:.4f}")
            bar.write(line, file=sys.stdout)
    if failures:
        print(f"clip4str read: {failures} input(s) could not be read", file=sys.stderr)
    return 1 if failures else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "read",
        help="read the text in word images",
        description="Print path<TAB>text<TAB>confidence for each image (a file, a folder or a glob). "
        "With --detect, find the words of whole photos and print path<TAB>text<TAB>confidence<TAB>"
        "x1,y1,...,x4,y4 per word (--json: one object per photo, words in reading order).",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image file, folder or glob")
    add_decoding_arguments(parser)
    add_runtime_argument(parser)
    parser.add_argument(
        "--charset-test",
        default=None,
        help="characters the visual prediction is restricted to before it is read by the text branch (the "
        "official evaluation's test charset: it changes the cross-modal result, but the printed text may "
        "still hold other characters); a preset (36, 62, 94), file or characters",
    )
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per line: path, text, confidence"
    )
    parser.add_argument("--workers", type=int, default=4, help="image decoding threads (default: 4)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    from clip4str.cli._photos import add_photo_arguments

    add_photo_arguments(parser)
    parser.set_defaults(handler=run)
