"""Validation sums that add across ranks: :class:`~clip4str.evaluate.DatasetResult` (word accuracy, 1 - NED,
as the official ``BaseSystem._eval_step`` and ``clip4str eval``) and the per-token loss.

Each rank scores its share of the validation set; the sums are packed into one list of floats, all-reduced,
and unpacked: the rates are then those of one pass over the whole set (NaN for an empty one).
"""

from __future__ import annotations

from collections.abc import Sequence

from clip4str.evaluate import DatasetResult

__all__ = ["pack", "unpack"]

# DatasetResult's sums, in packing order; the integer ones are rounded back.
_SUMS = (
    "num_samples",
    "correct",
    "ned_sum",
    "confidence_sum",
    "label_length_sum",
    "pred_length_sum",
    "failed",
)
_FLOAT_SUMS = ("ned_sum", "confidence_sum")


def pack(result: DatasetResult, loss_sum: float, loss_numel: int) -> list[float]:
    """``result``'s sums, then the loss summed over tokens (loss × token count) and the token count."""
    return [float(getattr(result, name)) for name in _SUMS] + [float(loss_sum), float(loss_numel)]


def unpack(values: Sequence[float], name: str = "val") -> tuple[DatasetResult, float]:
    """Inverse of :func:`pack` (after the lists of every rank were added) → (result, mean per-token loss)."""
    *sums, loss_sum, loss_numel = values
    result = DatasetResult(name)
    for field_name, value in zip(_SUMS, sums, strict=True):
        setattr(result, field_name, float(value) if field_name in _FLOAT_SUMS else int(round(value)))
    return result, loss_sum / loss_numel if loss_numel else float("nan")
