"""How to decode: one frozen, checked value shared by the API, the CLI, the service and the model.

>>> options = DecodeOptions(refine_iters=2)
>>> options.replace(mode="nar")          # a checked copy; None values keep the current ones
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from clip4str.config import ModelConfig

MODES = ("ar", "nar")
MAX_REFINE_ITERS = 100  # a larger count would never finish
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class DecodeOptions:
    """Decoding options, checked when built (ValueError naming the option).

    Args:
        mode: 'ar' (autoregressive) or 'nar' (one pass) for both decoders.
        refine_iters: cloze refinement iterations, in [0, MAX_REFINE_ITERS].
        visual_only: return the visual branch's logits, skipping the text and cross-modal branch.
        charset_test: characters the visual prediction is restricted to before it becomes the caption read
            by the text encoder (changes the cross-modal logits, as the official evaluation does); None: the
            model's own (``config.charset_test``, else ``charset_train``).
        precision: 'fp32', 'bf16' or 'fp16' autocast, or 'auto': the fastest on the device, measured
            (:func:`clip4str.precision.choose_precision`; a Recognizer replaces it by its choice).
        batch_size: images per forward pass (used by :class:`~clip4str.api.Recognizer`).
    """

    mode: str = "ar"
    refine_iters: int = 1
    visual_only: bool = False
    charset_test: str | None = None
    precision: str = "auto"
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be 'ar' or 'nar', got {self.mode!r}")
        if not _is_int(self.refine_iters) or not 0 <= self.refine_iters <= MAX_REFINE_ITERS:
            # a huge count would never finish
            raise ValueError(f"refine_iters must be in [0, {MAX_REFINE_ITERS}], got {self.refine_iters!r}")
        if not isinstance(self.visual_only, bool):
            raise ValueError(f"visual_only must be True or False, got {self.visual_only!r}")
        if self.charset_test is not None and (
            not isinstance(self.charset_test, str) or not self.charset_test
        ):
            raise ValueError("charset_test must not be empty (None keeps the model's)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")

    @classmethod
    def of_model(cls, config: ModelConfig, **changes: Any) -> DecodeOptions:
        """The decoding a model's config asks for (``config.decoding``), with the non-None ``changes``."""
        dec = config.decoding
        return cls(mode=dec.mode, refine_iters=dec.refine_iters, visual_only=dec.visual_only).replace(
            **changes
        )

    def replace(self, **changes: Any) -> DecodeOptions:
        """A checked copy with the non-None ``changes`` (field names of this class)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown decoding option(s): {', '.join(unknown)}")
        given = {name: value for name, value in changes.items() if value is not None}
        return dataclasses.replace(self, **given) if given else self


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def cloze_mask_array(num_steps: int) -> np.ndarray:
    """(num_steps, num_steps) float32 additive mask of refinement: query i hides only content i + 1 (its
    own target). Shared by the PyTorch model and the ONNX reader."""
    mask = np.zeros((num_steps, num_steps), dtype=np.float32)
    idx = np.arange(num_steps - 1)
    mask[idx, idx + 1] = -np.inf
    return mask


def causal_mask_array(size: int) -> np.ndarray:
    """(size, size) float32 additive mask: position i sees 0..i."""
    return np.triu(np.full((size, size), -np.inf, dtype=np.float32), 1)
