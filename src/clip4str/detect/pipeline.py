"""Whole photos: detect words, rectify each box to an upright crop, read all crops of a batch of photos in
batches with the recognizer, and return the words in reading order."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from clip4str.data.transforms import ImageSource, load_image
from clip4str.detect.base import Detector, as_detector
from clip4str.detect.crops import orientation_candidates, rectify
from clip4str.detect.geometry import as_quads, clockwise, order_quad, reading_order

__all__ = [
    "MAX_BOXES_PER_IMAGE",
    "ORIENTATIONS",
    "Photo",
    "Word",
    "detect_quads",
    "iter_photos",
    "read_photos",
    "read_photos_timed",
    "read_quads",
    "read_regions",
]

ORIENTATIONS = {"auto": 1.5, "none": None}  # name → height/width ratio above which quarter turns are tried
MAX_DETECT_SIDE = 2048  # photos are shrunk to this longest side for detection; crops come from full size
MAX_BOXES_PER_IMAGE = 2000  # boxes read in one image (--boxes files, read_regions)
CROPS_PER_READ = 64  # crops made, then read, at a time ...
PIXELS_PER_READ = 16 << 20  # ... or fewer when they hold this many pixels (48 MiB of RGB)


class Reader(Protocol):
    """What the pipeline needs from a recognizer: ``read(list of PIL images)`` → objects with ``text``
    and ``confidence`` (a :class:`clip4str.Recognizer` is one)."""

    def read(self, images: Sequence[Image.Image]) -> Sequence[Any]: ...


@dataclass
class Word:
    """One word: ``box`` = 4 × [x, y] in image pixels, clockwise from the text's top-left corner."""

    box: list[list[float]]
    text: str
    confidence: float


@dataclass
class Photo:
    """One photo's words in reading order; ``path`` is None for in-memory images."""

    path: str | None
    width: int
    height: int
    words: list[Word] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """``{"path", "width", "height", "words": [{"box", "text", "confidence"}]}``, ready for JSON."""
        return asdict(self)


def _tall_ratio(orientation: str) -> float | None:
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {', '.join(ORIENTATIONS)}, got {orientation!r}")
    return ORIENTATIONS[orientation]


def detect_quads(detector: Detector, image: Image.Image, max_side: int = MAX_DETECT_SIDE) -> np.ndarray:
    """Ordered quads (K, 4, 2) in ``image``'s coordinates, detected on a copy at most ``max_side`` pixels
    long (corners clockwise from the top-left, see :func:`~clip4str.detect.geometry.order_quad`)."""
    scale = min(1.0, max_side / max(image.size))
    small = image
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        small = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    quads = as_quads(detector.detect(np.asarray(small)))
    if scale < 1.0:
        quads = quads * np.array([image.width / small.width, image.height / small.height])
    quads[..., 0] = quads[..., 0].clip(0, image.width)
    quads[..., 1] = quads[..., 1].clip(0, image.height)
    return np.array([order_quad(q) for q in quads]).reshape(-1, 4, 2)


def _add(timer: dict[str, float], name: str, start: float) -> float:
    """Add the seconds since ``start`` to ``timer[name]``; returns now."""
    now = time.perf_counter()
    timer[name] = timer.get(name, 0.0) + now - start
    return now


def read_quads(
    reader: Reader,
    jobs: Sequence[tuple[Image.Image, np.ndarray]],
    orientation: str = "auto",
    timer: dict[str, float] | None = None,
) -> list[Word]:
    """Read each (image, quad) job; tall quads are read in every candidate orientation and the most
    confident reading wins. One :class:`Word` per job, in order; ``timer`` accumulates the seconds of
    ``cropping`` and ``recognition``.

    Crops are made and read a batch at a time (at most :data:`CROPS_PER_READ` crops or
    :data:`PIXELS_PER_READ` pixels), so memory does not grow with the number of boxes.
    """
    tall_ratio = _tall_ratio(orientation)
    timer = {} if timer is None else timer
    best: list[tuple[float, str, np.ndarray] | None] = [None] * len(jobs)
    crops: list[Image.Image] = []
    owners: list[tuple[int, np.ndarray]] = []
    pixels = 0

    def read_batch() -> None:
        nonlocal pixels
        t = time.perf_counter()
        preds = reader.read(crops) if crops else []
        _add(timer, "recognition", t)
        for (j, cand), pred in zip(owners, preds):
            if best[j] is None or pred.confidence > best[j][0]:  # type: ignore[index]
                best[j] = (float(pred.confidence), pred.text, cand)
        crops.clear()
        owners.clear()
        pixels = 0

    for j, (image, quad) in enumerate(jobs):
        for cand in orientation_candidates(quad, tall_ratio):
            t = time.perf_counter()
            crop = rectify(image, cand)
            _add(timer, "cropping", t)
            crops.append(crop)
            owners.append((j, cand))
            pixels += crop.width * crop.height
            if len(crops) >= CROPS_PER_READ or pixels >= PIXELS_PER_READ:
                read_batch()
    read_batch()
    words = []
    for b in best:
        assert b is not None
        conf, text, quad = b
        words.append(Word(box=np.round(quad, 1).tolist(), text=text, confidence=round(conf, 6)))
    return words


def iter_photos(
    reader: Reader,
    images: Iterable[ImageSource],
    detector: Detector | Callable[[np.ndarray], object] | str | None = None,
    *,
    orientation: str = "auto",
    photos_per_batch: int = 4,
    max_side: int = MAX_DETECT_SIDE,
    timer: dict[str, float] | None = None,
) -> Iterator[tuple[ImageSource, Photo | Exception]]:
    """Yield ``(image, Photo)`` per input in order, or ``(image, error)`` for one that cannot be loaded.

    The words of each run of ``photos_per_batch`` inputs (unreadable ones included, so the grouping depends
    only on the positions) are read together in the reader's batches. ``timer``, when
    given, accumulates seconds of ``loading``, ``detection``, ``cropping`` and ``recognition``.
    """
    det = as_detector(detector)
    _tall_ratio(orientation)  # a bad value fails before any work
    clock: dict[str, float] = {} if timer is None else timer
    batch: list[tuple[ImageSource, Image.Image | None, np.ndarray | Exception]] = []

    def flush() -> Iterator[tuple[ImageSource, Photo | Exception]]:
        jobs = [(img, q) for _, img, quads in batch if isinstance(quads, np.ndarray) for q in quads]
        words = read_quads(reader, jobs, orientation, clock)
        at = 0
        for src, img, quads in batch:
            if isinstance(quads, Exception) or img is None:
                yield src, quads  # type: ignore[misc]
                continue
            mine = words[at : at + len(quads)]
            at += len(quads)
            ordered = [mine[i] for i in reading_order([np.array(w.box) for w in mine])]
            path = str(src) if isinstance(src, (str, Path)) else None
            yield src, Photo(path=path, width=img.width, height=img.height, words=ordered)
        batch.clear()

    for src in images:
        t = time.perf_counter()
        try:
            img = load_image(src)
        except Exception as err:  # noqa: BLE001 - reported with its input, in order
            _add(clock, "loading", t)
            batch.append((src, None, err))
            continue
        t = _add(clock, "loading", t)
        try:
            quads: np.ndarray | Exception = detect_quads(det, img, max_side)
        except Exception as err:  # noqa: BLE001 - a detector failing on one photo spoils only that one
            quads = _detector_failure(err, img)
        _add(clock, "detection", t)
        batch.append((src, img, quads))
        if (
            len(batch) >= photos_per_batch
        ):  # runs of inputs (failures too): the groups depend on positions only
            yield from flush()
    if batch:
        yield from flush()


def _detector_failure(err: Exception, image: Image.Image) -> Exception:
    """A detector's error as one line that always says something (some raise errors with no message)."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
    detail = f"{type(err).__name__}: {reason}" if reason else type(err).__name__
    shape = f"{image.width}x{image.height}"
    hint = (
        "; a very thin or tiny photo?"
        if min(image.size) < 32 or max(image.size) > 50 * min(image.size)
        else ""
    )
    return RuntimeError(f"the word detector failed on this {shape} photo ({detail}{hint})")


def read_photos(
    reader: Reader,
    images: ImageSource | Sequence[ImageSource],
    detector: Detector | Callable[[np.ndarray], object] | str | None = None,
    **options: Any,
) -> list[Photo]:
    """Find and read the words of one photo or a sequence of photos (paths, PIL images, arrays).

    ``detector``: a :class:`Detector`, a function ``image → quads``, or None for RapidOCR's. Options:
    ``orientation`` ('auto': tall boxes are also read turned a quarter either way and the most confident
    reading wins; 'none'), ``photos_per_batch``, ``max_side``. Raises on an unreadable image.
    """
    return read_photos_timed(reader, images, detector, **options)[0]


def read_photos_timed(
    reader: Reader,
    images: ImageSource | Sequence[ImageSource],
    detector: Detector | Callable[[np.ndarray], object] | str | None = None,
    **options: Any,
) -> tuple[list[Photo], dict[str, float]]:
    """:func:`read_photos` and the seconds spent loading, detecting, cropping and recognizing."""
    timer: dict[str, float] = {}
    photos = []
    for _, result in iter_photos(reader, _as_list(images), detector, timer=timer, **options):
        if isinstance(result, Exception):
            raise result
        photos.append(result)
    return photos, timer


def read_regions(reader: Reader, image: ImageSource, boxes: Any, *, orientation: str = "auto") -> list[Word]:
    """Read given regions of one image: one :class:`Word` per box, in the boxes' order.

    ``boxes``: quads ``[[x, y] × 4]`` (clockwise from the text's top-left, as ICDAR writes them; a
    counter-clockwise quad is reversed), 8 numbers, or ``[x0, y0, x1, y1]`` rectangles.
    """
    quads = as_quads(boxes)
    if len(quads) > MAX_BOXES_PER_IMAGE:
        raise ValueError(
            f"{len(quads)} boxes for one image; at most {MAX_BOXES_PER_IMAGE} are read per image (split them "
            "over several images or calls)"
        )
    img = load_image(image)
    return read_quads(reader, [(img, clockwise(q)) for q in quads], orientation)


def _as_list(images: Any) -> list[Any]:
    if isinstance(images, (str, Path, bytes, bytearray, memoryview, Image.Image, np.ndarray)):
        return [images]
    return list(images)
