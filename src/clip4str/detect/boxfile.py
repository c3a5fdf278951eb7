"""Box files for ``clip4str read --boxes``: which regions of which images to read.

Two forms:

* JSON: one object per line (or one JSON array of objects), each ``{"path": IMAGE, "boxes": [BOX, ...]}``
  or ``{"path": IMAGE, "words": [{"box": BOX, ...}, ...]}`` (what ``clip4str read --detect --json``
  prints, so its boxes can be read again). A relative path is looked up next to the box file first,
  then in the current folder.
* Text, for one image given on the command line: one box per line, ``x1,y1,x2,y2,x3,y3,x4,y4`` (ICDAR
  style, anything after the 8th number such as a transcription is ignored) or ``x0,y0,x1,y1``; commas
  or whitespace separate the numbers; empty lines and lines starting with ``#`` are skipped.

A BOX is ``[[x, y] × 4]`` (clockwise from the text's top-left), 8 numbers or ``[x0, y0, x1, y1]``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from clip4str.detect.geometry import as_quads
from clip4str.errors import DatasetError

__all__ = ["load_box_file"]

_NUMBER = re.compile(r"-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")


def load_box_file(path: str | Path, images: list[str] | None = None) -> list[tuple[str, np.ndarray]]:
    """Read a box file → ``[(image path, quads (K, 4, 2))]``.

    ``images``: the image paths given on the command line; a text box file needs exactly one, a JSON
    box file none. Raises DatasetError naming the file and line of any problem.
    """
    from clip4str import files

    path = Path(path)  # the one regular-file reader: never a FIFO, a device or a folder, bounded in size
    text = files.read_text_file(path, "box file", DatasetError, max_bytes=files.MAX_BOX_FILE_BYTES)
    images = images or []
    if text.lstrip()[:1] in ("{", "["):
        if images:
            raise DatasetError(f"{path}: a JSON box file names its images; give no image paths with it")
        return [(_resolve(path, p), q) for p, q in _json_entries(path, text)]
    if len(images) != 1:
        raise DatasetError(
            f"{path}: a text box file holds the boxes of one image: give exactly one image path "
            f'(got {len(images)}), or use JSON lines {{"path": ..., "boxes": [...]}}'
        )
    boxes = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        numbers = _NUMBER.findall(line)
        if len(numbers) >= 8:
            numbers = numbers[:8]
        elif len(numbers) != 4:
            raise DatasetError(f"{path}:{n}: expected x1,y1,...,x4,y4 or x0,y0,x1,y1, got {line[:80]!r}")
        try:
            boxes.append(as_quads([[float(v) for v in numbers]])[0])
        except ValueError as err:
            raise DatasetError(f"{path}:{n}: {err}") from err
        _check_count(str(path), len(boxes))
    return [(images[0], np.array(boxes).reshape(-1, 4, 2))]


def _json_entries(path: Path, text: str) -> list[tuple[str, np.ndarray]]:
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            records = [(1, r) for r in json.loads(text)]
        else:
            records = [(n, json.loads(line)) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON (line {err.lineno}): {err.msg}") from err
    except RecursionError as err:
        raise DatasetError(f"{path}: JSON nested too deeply") from err
    out = []
    for n, rec in records:
        where = f"{path}:{n}"
        if not isinstance(rec, dict) or not isinstance(rec.get("path"), str):
            raise DatasetError(f'{where}: expected an object with a "path" string')
        if "boxes" in rec:
            raw = rec["boxes"]
        elif "words" in rec and isinstance(rec["words"], list):
            try:
                raw = [w["box"] for w in rec["words"]]
            except (TypeError, KeyError) as err:
                raise DatasetError(f'{where}: every word needs a "box"') from err
        else:
            raise DatasetError(f'{where}: expected "boxes" (or "words" with "box") for {rec["path"][:200]}')
        if not isinstance(raw, list):
            raise DatasetError(f'{where}: "boxes" must be a list')
        _check_count(where, len(raw))
        try:
            out.append((rec["path"], as_quads(raw)))
        except ValueError as err:
            raise DatasetError(f"{where}: {rec['path'][:200]}: {err}") from err
    return out


def _check_count(where: str, count: int) -> None:
    from clip4str.detect.pipeline import MAX_BOXES_PER_IMAGE

    if count > MAX_BOXES_PER_IMAGE:
        raise DatasetError(
            f"{where}: {count} boxes for one image; at most {MAX_BOXES_PER_IMAGE} are read per image (split "
            "them over several lines naming the same image)"
        )


def _resolve(box_file: Path, image: str) -> str:
    p = Path(image)
    if p.is_absolute():
        return image
    beside = box_file.parent / p
    return str(beside) if beside.exists() or not p.exists() else image
