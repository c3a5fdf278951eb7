"""Validation metrics as the official ``BaseSystem._eval_step``: word accuracy and 1 - NED.

NED follows the ICDAR 2019 definition used there: ``edit_distance(pred, gt) / max(len(pred), len(gt))``,
averaged over samples; 1 - NED is reported. Predictions pass through the test-charset adapter before the
comparison (done by the caller). The distance functions are :mod:`clip4str.evaluate`'s; this module only
adds sums that can be added across ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clip4str.evaluate import edit_distance, normalized_edit_distance

__all__ = ["EvalTotals", "edit_distance", "normalized_edit_distance"]


@dataclass
class EvalTotals:
    """Sums over validation batches; add them across ranks, then read the rates."""

    samples: int = 0
    correct: int = 0
    ned_sum: float = 0.0
    loss_sum: float = 0.0  # loss x token count, so the mean is per token as in the official aggregate
    loss_numel: int = 0

    def add(self, preds: Sequence[str], gts: Sequence[str], loss: float = 0.0, numel: int = 0) -> None:
        if len(preds) != len(gts):
            raise ValueError(f"{len(preds)} predictions for {len(gts)} labels")
        for p, g in zip(preds, gts):
            self.correct += int(p == g)
            self.ned_sum += normalized_edit_distance(p, g)
        self.samples += len(gts)
        self.loss_sum += float(loss) * numel
        self.loss_numel += numel

    @property
    def accuracy(self) -> float:
        """Word accuracy in percent."""
        return 100.0 * self.correct / self.samples if self.samples else 0.0

    @property
    def one_minus_ned(self) -> float:
        """1 - mean NED, in percent (the official ``val_NED``)."""
        return 100.0 * (1.0 - self.ned_sum / self.samples) if self.samples else 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / self.loss_numel if self.loss_numel else float("nan")

    def as_list(self) -> list[float]:
        return [self.samples, self.correct, self.ned_sum, self.loss_sum, self.loss_numel]

    @classmethod
    def from_list(cls, values: Sequence[float]) -> EvalTotals:
        s, c, n, ls, ln = values
        return cls(int(round(s)), int(round(c)), float(n), float(ls), int(round(ln)))
