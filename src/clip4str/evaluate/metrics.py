"""Metrics (dependency-free: training's validation sums into :class:`DatasetResult` too): word accuracy and
1 - NED per sample, and per-dataset sums whose means are the reported numbers (NaN for an empty set)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions and substitutions all cost 1; no transpositions)."""
    if a == b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def normalized_edit_distance(pred: str, gt: str) -> float:
    """``edit_distance / max(len(pred), len(gt))`` in [0, 1] (ICDAR 2019, PARSeq); 0 when both are empty."""
    longest = max(len(pred), len(gt))
    return edit_distance(pred, gt) / longest if longest else 0.0


def _check_pairs(preds: Sequence[str], labels: Sequence[str]) -> None:
    if len(preds) != len(labels):
        raise ValueError(f"got {len(preds)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("no samples: accuracy of an empty set is undefined")


def word_accuracy(preds: Sequence[str], labels: Sequence[str]) -> float:
    """Fraction in [0, 1] of exact matches (compare adapted predictions with filtered labels)."""
    _check_pairs(preds, labels)
    return sum(p == g for p, g in zip(preds, labels)) / len(labels)


def one_minus_ned(preds: Sequence[str], labels: Sequence[str]) -> float:
    """1 − mean normalised edit distance, in [0, 1] (PARSeq's ``1 - NED``)."""
    _check_pairs(preds, labels)
    return 1.0 - sum(normalized_edit_distance(p, g) for p, g in zip(preds, labels)) / len(labels)


@dataclass(slots=True)
class SampleRecord:
    """One evaluated sample. ``raw_text`` is the model's reading (what ``clip4str read`` prints), ``text``
    the same after the test-charset adapter; ``error`` is set when the image could not be read."""

    dataset: str
    index: int
    key: str
    label: str
    raw_text: str
    text: str
    confidence: float
    error: str | None = None

    @property
    def correct(self) -> bool:
        return self.error is None and self.text == self.label


@dataclass
class DatasetResult:
    """Sums over a dataset (or a group of them); the metric properties are means, percentages as in the
    papers (``accuracy``, ``one_minus_ned``, ``confidence``) or characters (``label_length``,
    ``pred_length``). Means of an empty result are NaN.

    ``label_length`` is the mean ground-truth length. The official ``test.py`` column called
    "Label Length" averages the *prediction* lengths (after the adapter): that is ``pred_length`` here.
    """

    name: str
    num_samples: int = 0
    correct: int = 0
    ned_sum: float = 0.0
    confidence_sum: float = 0.0
    label_length_sum: int = 0
    pred_length_sum: int = 0
    failed: int = 0
    filtered: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, pred: str, label: str, confidence: float, failed: bool = False) -> None:
        """Count one sample: the adapted prediction, the filtered label and the confidence in [0, 1]."""
        self.num_samples += 1
        self.correct += (pred == label) and not failed
        self.ned_sum += normalized_edit_distance(pred, label)
        self.confidence_sum += confidence
        self.label_length_sum += len(label)
        self.pred_length_sum += len(pred)
        self.failed += failed

    def _mean(self, total: float, scale: float = 1.0) -> float:
        return scale * total / self.num_samples if self.num_samples else math.nan

    @property
    def accuracy(self) -> float:
        return self._mean(self.correct, 100.0)

    @property
    def one_minus_ned(self) -> float:
        return 100.0 - self._mean(self.ned_sum, 100.0)

    @property
    def confidence(self) -> float:
        return self._mean(self.confidence_sum, 100.0)

    @property
    def label_length(self) -> float:
        return self._mean(self.label_length_sum)

    @property
    def pred_length(self) -> float:
        return self._mean(self.pred_length_sum)

    @classmethod
    def combine(cls, name: str, results: Iterable[DatasetResult]) -> DatasetResult:
        """Sample-weighted aggregate of several results (sums added)."""
        out = cls(name)
        filtered: Counter[str] = Counter()
        for r in results:
            out.num_samples += r.num_samples
            out.correct += r.correct
            out.ned_sum += r.ned_sum
            out.confidence_sum += r.confidence_sum
            out.label_length_sum += r.label_length_sum
            out.pred_length_sum += r.pred_length_sum
            out.failed += r.failed
            out.seconds += r.seconds
            filtered.update(r.filtered)
        out.filtered = dict(filtered)
        return out

    def metrics(self) -> dict[str, Any]:
        """The reported numbers: name, num_samples, accuracy, one_minus_ned, confidence, label_length,
        pred_length, failed."""
        return {
            "dataset": self.name,
            "num_samples": self.num_samples,
            "accuracy": self.accuracy,
            "one_minus_ned": self.one_minus_ned,
            "confidence": self.confidence,
            "label_length": self.label_length,
            "pred_length": self.pred_length,
            "failed": self.failed,
        }


def score(
    preds: Sequence[str],
    labels: Sequence[str],
    confidences: Sequence[float] | None = None,
    name: str = "",
) -> DatasetResult:
    """Score already-adapted predictions against filtered labels (e.g. in a validation loop)."""
    if len(preds) != len(labels) or (confidences is not None and len(confidences) != len(labels)):
        raise ValueError("preds, labels and confidences must have the same length")
    result = DatasetResult(name)
    for i, (p, g) in enumerate(zip(preds, labels)):
        result.add(p, g, 0.0 if confidences is None else float(confidences[i]))
    return result
