"""Whole photos: a word detector finds the words, CLIP4STR reads them.

>>> import clip4str
>>> reader = clip4str.load()
>>> photo = reader.read_photos("street.jpg")[0]          # needs: pip install 'clip4str[detect]'
>>> [(w.text, w.box) for w in photo.words]
>>> reader.read_regions("street.jpg", [[10, 20, 110, 60]])  # your own boxes; no detector needed

Any object with ``detect(image (H, W, 3) uint8 RGB) → quads (K, 4, 2)`` is a detector (see
:class:`Detector`); the default is RapidOCR's PP-OCR DBNet with word boxes.
"""

from clip4str.detect.base import Detector, DetectorUnavailableError, FunctionDetector, as_detector
from clip4str.detect.draw import draw_words, save_drawing
from clip4str.detect.pipeline import (
    ORIENTATIONS,
    Photo,
    Word,
    detect_quads,
    iter_photos,
    read_photos,
    read_photos_timed,
    read_quads,
    read_regions,
)

__all__ = [
    "ORIENTATIONS",
    "Detector",
    "DetectorUnavailableError",
    "FunctionDetector",
    "Photo",
    "Word",
    "as_detector",
    "detect_quads",
    "draw_words",
    "iter_photos",
    "read_photos",
    "read_photos_timed",
    "read_quads",
    "read_regions",
    "save_drawing",
]
