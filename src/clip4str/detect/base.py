"""The one interface a word detector implements, and how a detector is chosen."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from clip4str.errors import Clip4strError

__all__ = ["Detector", "DetectorUnavailableError", "FunctionDetector", "as_detector", "default_detector"]


class DetectorUnavailableError(Clip4strError, ImportError):
    """The detector's optional dependencies are not installed."""


@runtime_checkable
class Detector(Protocol):
    """Finds the words of a photo.

    ``detect`` takes an (H, W, 3) uint8 RGB array and returns (K, 4, 2) float quads (x, y) in that
    array's pixel coordinates, one per word, corners in any order (K may be 0). That is all a detector
    must do: the pipeline orders corners, crops, reads and sorts.
    """

    def detect(self, image: np.ndarray) -> np.ndarray: ...


class FunctionDetector:
    """A plain function ``image (H, W, 3) uint8 RGB → quads (K, 4, 2)`` as a :class:`Detector`."""

    def __init__(self, fn: Callable[[np.ndarray], object]) -> None:
        self.fn = fn

    def detect(self, image: np.ndarray) -> np.ndarray:
        from clip4str.detect.geometry import as_quads

        return as_quads(self.fn(image))


_DEFAULT: Detector | None = None


def default_detector() -> Detector:
    """The default detector (RapidOCR's PP-OCR DBNet with word boxes), built once per process."""
    global _DEFAULT
    if _DEFAULT is None:
        from clip4str.detect.rapidocr import RapidOCRDetector

        _DEFAULT = RapidOCRDetector()
    return _DEFAULT


def as_detector(detector: Detector | Callable[[np.ndarray], object] | str | None) -> Detector:
    """``None`` or ``'rapidocr'`` → the default detector; ``'rapidocr-lines'`` → RapidOCR's line boxes;
    a :class:`Detector` as is; a function → :class:`FunctionDetector`."""
    if detector is None or detector == "rapidocr":
        return default_detector()
    if detector == "rapidocr-lines":
        from clip4str.detect.rapidocr import RapidOCRDetector

        return RapidOCRDetector(words=False)
    if isinstance(detector, str):
        raise ValueError(f"unknown detector {detector!r}: use 'rapidocr' or 'rapidocr-lines'")
    if isinstance(detector, Detector):
        return detector
    if callable(detector):
        return FunctionDetector(detector)
    raise TypeError(f"a detector needs a detect(image) method or must be callable, got {type(detector)}")
