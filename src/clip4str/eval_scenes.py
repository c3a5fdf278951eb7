"""End-to-end evaluation on whole photos: the ICDAR 2015 (Challenge 4) detection and generic end-to-end
protocols, and the runner behind ``clip4str eval --scenes``.

Protocol, as the official RRC scripts:

* ground truth: ``Gts/gt_<image stem>.txt``, one ``x1,y1,...,x4,y4,transcription`` line per word (UTF-8,
  optional BOM); ``###`` marks a don't-care region;
* a detection whose area lies more than half inside a don't-care region is don't-care too; neither counts;
* a detection matches a ground-truth word when their polygon IoU exceeds 0.5, one to one, greedily in the
  order of the ground truth then the detections (the official order);
* end to end, a matched pair is a true positive only when the words agree case-insensitively; a ground
  truth's leading or trailing punctuation (``!?.:,*"()·[]/'``) may be left out by the reading;
* precision, recall and hmean are pooled over all photos (sums of matches and counts).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clip4str.detect.geometry import polygon_area, polygon_intersection_area, polygon_iou
from clip4str.errors import DatasetError

__all__ = [
    "DONT_CARE",
    "GtWord",
    "SceneCounts",
    "SceneReport",
    "evaluate_scenes",
    "find_scenes",
    "load_gt",
    "score_photo",
    "transcription_match",
]

DONT_CARE = "###"
IOU_THRESHOLD = 0.5
DONT_CARE_AREA = 0.5
EDGE_PUNCTUATION = "!?.:,*\"()·[]/'"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class GtWord:
    """One ground-truth region: its quad (4, 2) and transcription (``###`` = don't care)."""

    box: np.ndarray
    text: str

    @property
    def dont_care(self) -> bool:
        return self.text == DONT_CARE


@dataclass
class SceneCounts:
    """Pooled counts: ground-truth words and detections that count, matched pairs, correctly read pairs."""

    gt: int = 0
    det: int = 0
    matched: int = 0
    correct: int = 0

    def add(self, other: SceneCounts) -> None:
        self.gt += other.gt
        self.det += other.det
        self.matched += other.matched
        self.correct += other.correct

    @staticmethod
    def prh(hits: int, det: int, gt: int) -> dict[str, float]:
        """Precision, recall, hmean in percent (precision and recall are 0 when their count is 0)."""
        p = 100.0 * hits / det if det else 0.0
        r = 100.0 * hits / gt if gt else 0.0
        h = 2 * p * r / (p + r) if p + r else 0.0
        return {"precision": p, "recall": r, "hmean": h}

    @property
    def detection(self) -> dict[str, float]:
        return self.prh(self.matched, self.det, self.gt)

    @property
    def end_to_end(self) -> dict[str, float]:
        return self.prh(self.correct, self.det, self.gt)


_GT_LINE = re.compile(r"^\s*" + r"\s*,\s*".join([r"(-?\d+(?:\.\d+)?)"] * 8) + r"\s*,(.*)$")


def load_gt(path: str | Path) -> list[GtWord]:
    """An ICDAR 2015 ground-truth file → its regions. Raises DatasetError naming the file and bad line."""
    from clip4str.files import MAX_CONFIG_BYTES, read_text_file

    words = []
    text = read_text_file(path, "ground-truth file", DatasetError, max_bytes=MAX_CONFIG_BYTES)
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _GT_LINE.match(line)
        if m is None:
            raise DatasetError(f"{path}:{n}: expected x1,y1,...,x4,y4,transcription, got {line[:80]!r}")
        box = np.array([float(v) for v in m.groups()[:8]]).reshape(4, 2)
        words.append(GtWord(box=box, text=m.group(9)))
    return words


def transcription_match(gt: str, read: str) -> bool:
    """Case-insensitive word match; the ground truth's edge punctuation may be missing from ``read``."""
    g, r = gt.upper(), read.upper()
    if g == r:
        return True
    if not g:
        return False
    first, last = g[0] in EDGE_PUNCTUATION, g[-1] in EDGE_PUNCTUATION
    return (first and g[1:] == r) or (last and g[:-1] == r) or (first and last and g[1:-1] == r)


def score_photo(
    gt: Sequence[GtWord], boxes: Sequence[np.ndarray] | np.ndarray, texts: Sequence[str] | None = None
) -> tuple[SceneCounts, list[int | None]]:
    """Score one photo's detections (quads, with their readings for end-to-end) against its ground truth.

    Returns the counts and, for each detection, the index of the ground-truth word it matched (None when
    unmatched or don't-care).
    """
    boxes = [np.asarray(b, dtype=np.float64) for b in boxes]
    care = [i for i, g in enumerate(gt) if not g.dont_care]
    dont = [g for g in gt if g.dont_care]
    det_dont_care = []
    for b in boxes:
        area = abs(polygon_area(b))
        inside = max((polygon_intersection_area(g.box, b) for g in dont), default=0.0)
        det_dont_care.append(area > 0 and inside / area > DONT_CARE_AREA)
    gt_used = [False] * len(gt)
    det_match: list[int | None] = [None] * len(boxes)
    counts = SceneCounts(gt=len(care), det=sum(not d for d in det_dont_care))
    for gi in care:
        for di, b in enumerate(boxes):
            if gt_used[gi] or det_match[di] is not None or det_dont_care[di]:
                continue
            if polygon_iou(gt[gi].box, b) > IOU_THRESHOLD:
                gt_used[gi] = True
                det_match[di] = gi
                counts.matched += 1
                if texts is not None and transcription_match(gt[gi].text, texts[di]):
                    counts.correct += 1
    return counts, det_match


def find_scenes(root: str | Path) -> list[tuple[Path, Path]]:
    """(image, ground truth) pairs of an ICDAR 2015 folder: ``Imgs/img_N.jpg`` and ``Gts/gt_img_N.txt``
    (``images/``/``gts/`` or the folder itself also work), in natural order of N."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    img_dir = next((root / n for n in ("Imgs", "imgs", "images", "Images") if (root / n).is_dir()), root)
    gt_dir = next((root / n for n in ("Gts", "gts", "gt", "GT") if (root / n).is_dir()), root)
    images = [p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise DatasetError(f"{root}: no images (expected {root}/Imgs/img_N.jpg)")

    def natural(p: Path) -> list[Any]:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.stem)]

    pairs, missing = [], []
    for img in sorted(images, key=natural):
        gt = gt_dir / f"gt_{img.stem}.txt"
        (pairs if gt.is_file() else missing).append((img, gt))
    if missing:
        raise DatasetError(
            f"{root}: {len(missing)} image(s) without ground truth, e.g. {missing[0][1]} for {missing[0][0].name}"
        )
    return pairs


@dataclass
class SceneReport:
    """Detection and end-to-end results over a set of photos, with timings (seconds per photo)."""

    counts: SceneCounts
    photos: int
    seconds: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    per_photo: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"image", "error"} of unreadable photos

    def as_dict(self) -> dict[str, Any]:
        per = {k: v / self.photos if self.photos else 0.0 for k, v in self.seconds.items()}
        return {
            "detection": _rounded(self.counts.detection),
            "end_to_end": _rounded(self.counts.end_to_end),
            "counts": asdict(self.counts),
            "photos": self.photos,
            "skipped": len(self.skipped),
            "seconds_per_photo": _rounded(per, 4),
            "settings": self.settings,
        }

    def format(self, fmt: str = "table") -> str:
        """The report as ``table``, ``markdown``, ``csv`` or ``json`` text (ending with a newline)."""
        d = self.as_dict()
        if fmt == "json":
            return json.dumps(d, indent=2, ensure_ascii=False) + "\n"
        rows = [
            (name, d[key]["precision"], d[key]["recall"], d[key]["hmean"])
            for name, key in (("detection", "detection"), ("end-to-end", "end_to_end"))
        ]
        if fmt == "csv":
            lines = ["task,precision,recall,hmean"] + [f"{n},{p:.2f},{r:.2f},{h:.2f}" for n, p, r, h in rows]
            return "\n".join(lines) + "\n"
        speed = ", ".join(f"{k} {v:.3f}" for k, v in d["seconds_per_photo"].items())
        c = d["counts"]
        foot = (
            f"{d['photos']} photos, {c['gt']} words, {c['det']} detections, {c['matched']} matched, "
            f"{c['correct']} read right; s/photo: {speed}"
        )
        if d["skipped"]:
            foot += f"; {d['skipped']} photo(s) could not be read (their words count as missed)"
        if fmt == "markdown":
            lines = ["| task | precision | recall | hmean |", "|---|---:|---:|---:|"]
            lines += [f"| {n} | {p:.2f} | {r:.2f} | {h:.2f} |" for n, p, r, h in rows]
            return "\n".join(lines) + f"\n\n{foot}\n"
        lines = [f"{'task':<12}{'precision':>11}{'recall':>9}{'hmean':>8}"]
        lines += [f"{n:<12}{p:>11.2f}{r:>9.2f}{h:>8.2f}" for n, p, r, h in rows]
        return "\n".join(lines) + f"\n{foot}\n"


def _rounded(d: dict[str, float], ndigits: int = 2) -> dict[str, float]:
    return {k: round(v, ndigits) for k, v in d.items()}


def evaluate_scenes(
    reader: Any,
    root: str | Path,
    detector: Any = None,
    *,
    limit: int | None = None,
    photos_per_batch: int = 4,
    progress: bool = False,
    **read_options: Any,
) -> SceneReport:
    """Detect and read every photo of an ICDAR 2015 folder with ``reader`` (a Recognizer) and score it.

    ``read_options`` go to :func:`clip4str.detect.iter_photos` (e.g. ``orientation``); the detector is
    RapidOCR's unless given. A photo that cannot be read (truncated, not an image, too many pixels) is
    skipped and counted in ``skipped``: its ground-truth words count as missed, the other photos go on.
    """
    from clip4str.detect import iter_photos

    pairs = find_scenes(root)[:limit]
    gts = [load_gt(gt) for _, gt in pairs]
    total = SceneCounts()
    seconds: dict[str, float] = {}
    per_photo: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    from clip4str.progress import ProgressBar

    start = time.perf_counter()
    photos = iter_photos(
        reader,
        [str(p) for p, _ in pairs],
        detector,
        photos_per_batch=photos_per_batch,
        timer=seconds,
        **read_options,
    )
    with ProgressBar(total=len(pairs), desc="scenes", unit="photo", enabled=progress, leave=False) as bar:
        for (img, _), gt, (_, photo) in zip(pairs, gts, photos):
            if isinstance(photo, Exception):  # skipped and counted: its words count as missed
                skipped.append({"image": str(img), "error": str(photo)})
                counts, _ = score_photo(gt, [])
            else:
                counts, _ = score_photo(gt, [w.box for w in photo.words], [w.text for w in photo.words])
            total.add(counts)
            per_photo.append({"image": img.name, **asdict(counts)})
            bar.update(1)
    seconds["total"] = time.perf_counter() - start
    return SceneReport(counts=total, photos=len(pairs), seconds=seconds, per_photo=per_photo, skipped=skipped)
