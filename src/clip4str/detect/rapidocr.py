"""RapidOCR's PP-OCR detector (DBNet, ONNX, shipped inside the ``rapidocr`` wheel) as a :class:`Detector`.

DBNet finds text *lines*. With ``words=True`` (the default) RapidOCR also runs its own recognizer on each
line and splits it into word boxes at the spaces it reads (``return_word_box``); only those boxes are kept,
the text is read again by CLIP4STR. On the 150 IC15 test photos word boxes score detection hmean 67.7
against 39.4 for line boxes (docs/photos.md), so words are the default.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clip4str.detect.base import DetectorUnavailableError

__all__ = ["RapidOCRDetector"]


class RapidOCRDetector:
    """Word (or line) quads from RapidOCR 3.x, offline, on CPU.

    Args:
        words: split lines into word boxes with RapidOCR's recognizer (default) or return DBNet's lines.
        threads: ONNX Runtime intra-op threads (default: ``torch.get_num_threads()``, so that
            ``OMP_NUM_THREADS`` bounds both models).
        params: further RapidOCR settings, e.g. ``{"Det.box_thresh": 0.6}``.
    """

    def __init__(self, words: bool = True, threads: int | None = None, params: dict[str, Any] | None = None):
        try:
            from rapidocr import RapidOCR
        except ImportError as err:
            raise DetectorUnavailableError(
                "word detection needs RapidOCR: pip install 'clip4str[detect]' (or rapidocr onnxruntime)"
            ) from err
        if threads is None:
            import torch

            threads = torch.get_num_threads()
        self.words = words
        settings = {
            "Global.log_level": "error",
            "EngineConfig.onnxruntime.intra_op_num_threads": int(threads),
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            **(params or {}),
        }
        self.engine = RapidOCR(params=settings)

    def detect(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB → (K, 4, 2) float32 quads."""
        bgr = np.ascontiguousarray(image[:, :, ::-1])  # RapidOCR reads arrays as OpenCV's BGR
        # every step flag is passed on each call: RapidOCR remembers the last call's flags
        out = self.engine(
            bgr, use_det=True, use_cls=self.words, use_rec=self.words, return_word_box=self.words
        )
        if not self.words:
            boxes = getattr(out, "boxes", None)
            return np.zeros((0, 4, 2), np.float32) if boxes is None else np.asarray(boxes, np.float32)
        if getattr(out, "txts", None) is None:  # nothing found, or nothing the recognizer could read
            return np.zeros((0, 4, 2), np.float32)
        quads = [np.asarray(box, np.float32) for line in out.word_results for (_, _, box) in line]
        return np.stack(quads) if quads else np.zeros((0, 4, 2), np.float32)
