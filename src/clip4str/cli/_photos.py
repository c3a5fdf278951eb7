"""``clip4str read --detect`` / ``--boxes``: whole photos in, one line per word (TSV) or per photo (JSON)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_photo_arguments", "check_photo_arguments", "prepare_photos", "run_photos"]


def add_photo_arguments(parser: argparse.ArgumentParser) -> None:
    """The whole-photo options of ``clip4str read``."""
    group = parser.add_argument_group("whole photos (pip install 'clip4str[detect]' for --detect)")
    group.add_argument(
        "--detect",
        action="store_true",
        help="find the words in whole photos first (RapidOCR's PP-OCR detector), then read each",
    )
    group.add_argument(
        "--boxes",
        metavar="FILE",
        help='read these regions instead of detecting: JSON lines {"path", "boxes"} (or --detect '
        "--json output), or x1,y1,...,x4,y4 / x0,y0,x1,y1 lines for the one image given",
    )
    group.add_argument(
        "--draw",
        metavar="DIR",
        help="write each photo with its boxes and words drawn into DIR (never over an input; a file already "
        "there only with --overwrite)",
    )
    group.add_argument(
        "--overwrite", action="store_true", help="let --draw replace files already in DIR (never an input)"
    )
    group.add_argument(
        "--orientation",
        choices=["auto", "none"],
        default="auto",
        help="auto: boxes 1.5x taller than wide are also read turned a quarter either way, the most "
        "confident reading wins (default); none: read as boxed",
    )


def check_photo_arguments(args: argparse.Namespace) -> str | None:
    """The usage error in the whole-photo options, if any."""
    if args.detect and args.boxes:
        return "give --detect or --boxes, not both"
    if args.draw and not (args.detect or args.boxes):
        return "--draw goes with --detect or --boxes"
    if not args.paths and not args.boxes:
        return "give at least one image path"
    return None


def _box_text(box: list[list[float]]) -> str:
    return ",".join(f"{v:g}" for point in box for v in point)


def _drawing_path(folder: Path, image: Path, taken: set[Path]) -> Path:
    """``folder/<image name>`` (PNG unless JPEG or PNG already), ``-2``, ``-3``... for names met earlier
    in this run (the output guard then refuses inputs and, without --overwrite, existing files)."""
    suffix = image.suffix.lower() if image.suffix.lower() in (".jpg", ".jpeg", ".png") else ".png"
    path, n = folder / f"{image.stem}{suffix}", 1
    while path in taken:
        n += 1
        path = folder / f"{image.stem}-{n}{suffix}"
    taken.add(path)
    return path


def _emit(photo: Any, as_json: bool, write: Any) -> None:
    from clip4str.cli.output import json_line, tsv_line

    if as_json:
        write(json_line(photo.to_dict()))
        return
    for w in photo.words:
        write(tsv_line(photo.path, w.text, f"{w.confidence:.4f}", _box_text(w.box)))


def prepare_photos(args: argparse.Namespace, paths: list[str]) -> list[tuple[str, Any]]:
    """What to read, checked before the model loads: ``(image path, quads)`` pairs from the box file, or
    ``(image path, None)`` per photo to detect (the detector is built now, so a missing extra fails
    first)."""
    if args.boxes:
        from clip4str.detect.boxfile import load_box_file

        jobs = load_box_file(args.boxes, paths)
    else:
        from clip4str.detect import as_detector

        as_detector(None)
        jobs = [(p, None) for p in paths]
    args.drawings = _claim_drawings(args, [p for p, _ in jobs]) if args.draw else None
    return jobs


def _claim_drawings(args: argparse.Namespace, images: list[str]) -> list[Path]:
    """The drawing of each photo, every one checked by the output guard before the model loads: never
    an input (a photo, the box file, the model), an existing file only with --overwrite."""
    from clip4str.files import OutputGuard

    guard = OutputGuard("clip4str read", overwrite=args.overwrite)
    folder = guard.claim_folder(args.draw, "--draw")
    guard.protect_all(images, "an input photo")
    guard.protect(args.boxes, "the box file (--boxes)")
    guard.protect_model(args.model)
    taken: set[Path] = set()
    targets = [guard.claim(_drawing_path(folder, Path(str(p)), taken), "--draw") for p in images]
    args.output_guard = guard
    return targets


def run_photos(args: argparse.Namespace, recognizer: Any, jobs: list[tuple[str, Any]]) -> int:
    """Read and print every photo of :func:`prepare_photos`; returns the number of failures."""
    from tqdm import tqdm

    from clip4str.data.transforms import load_image
    from clip4str.detect import Photo, iter_photos, read_regions, save_drawing

    failures = 0
    show = len(jobs) > 1 and not args.quiet

    def results():
        if not args.boxes:
            yield from iter_photos(recognizer, [p for p, _ in jobs], orientation=args.orientation)
            return
        for path, quads in jobs:
            try:
                image = load_image(path)
                words = read_regions(recognizer, image, quads, orientation=args.orientation)
                yield path, Photo(path=path, width=image.width, height=image.height, words=words)
            except Exception as err:  # noqa: BLE001 - reported with its file; the others go on
                yield path, err

    with tqdm(total=len(jobs), unit="photo", file=sys.stderr, disable=not show or None, leave=False) as bar:

        def write(line: str) -> None:
            bar.write(line, file=sys.stdout)

        for n, (path, result) in enumerate(results()):
            bar.update(1)
            if isinstance(result, Exception):
                failures += 1
                bar.write(f"clip4str read: skipped {path}: {result}", file=sys.stderr)
                continue
            _emit(result, args.json, write)
            if getattr(args, "drawings", None) is not None:
                save_drawing(load_image(path), result.words, args.drawings[n], guard=args.output_guard)
    return failures
