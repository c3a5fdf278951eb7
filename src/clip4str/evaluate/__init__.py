"""Evaluation the way the papers measure it: metrics, benchmark discovery, the runner and its reports.

Protocol (PARSeq / CLIP4STR ``test.py``):

* **Test charset**: 36 characters (digits + lowercase) by default; ``cased`` adds upper case,
  ``punctuation`` adds ``string.punctuation``. The test charset is also given to the model
  (``charset_test``): the caption that the cross-modal branch feeds to the text encoder is restricted to it,
  which changes the logits, exactly as the official evaluation does.
* **Labels** pass the data module's rules (:class:`~clip4str.data.labels.LabelFilter` with the test charset
  and the model's ``max_label_length``): whitespace removed, NFKD→ASCII for an ASCII charset, samples longer
  than ``max_label_length`` dropped, case folded and unsupported characters deleted, empty labels dropped.
* **Predictions** pass the test-charset adapter (:class:`~clip4str.charset.CharsetAdapter`) before they are
  compared; the confidence is taken before the adapter (product of the kept characters' and EOS
  probabilities).
* **Metrics** per dataset: word accuracy, 1 − NED with ``NED = edit_distance(pred, gt) / max(len(pred),
  len(gt))`` per sample (ICDAR 2019, as PARSeq), mean confidence, mean label length, sample count. Group
  and overall numbers are sample-weighted averages.
* **Unreadable samples** stay in the denominator: they count as wrong with an empty prediction and zero
  confidence, and are reported in the ``failed`` column.

Modules: :mod:`~clip4str.evaluate.metrics` (edit distance, :class:`DatasetResult`),
:mod:`~clip4str.evaluate.benchmarks` (names, groups, test sets, discovery), :mod:`~clip4str.evaluate.runner`
(:func:`evaluate` and friends), :mod:`~clip4str.evaluate.report` (:class:`EvalReport` and its formats).
"""

from __future__ import annotations

from clip4str.evaluate.benchmarks import (
    BENCHMARK,
    BENCHMARK_SUB,
    GROUPS,
    NEW,
    OCCLUDED,
    OTHER_GROUP,
    STANDARD_NAMES,
    UNION14M,
    UNION14M_SUBSETS,
    BenchmarkLayout,
    EvalSource,
    find_benchmarks,
    label_file_source,
    lmdb_source,
    test_charset,
)
from clip4str.evaluate.metrics import (
    DatasetResult,
    SampleRecord,
    edit_distance,
    normalized_edit_distance,
    one_minus_ned,
    score,
    word_accuracy,
)
from clip4str.evaluate.report import EvalReport, GroupResult
from clip4str.evaluate.runner import (
    evaluate,
    evaluate_benchmarks,
    evaluate_label_file,
    evaluate_layout,
    evaluate_source,
)

__all__ = [
    "BENCHMARK",
    "BENCHMARK_SUB",
    "GROUPS",
    "NEW",
    "OCCLUDED",
    "OTHER_GROUP",
    "STANDARD_NAMES",
    "UNION14M",
    "UNION14M_SUBSETS",
    "BenchmarkLayout",
    "DatasetResult",
    "EvalReport",
    "EvalSource",
    "GroupResult",
    "SampleRecord",
    "edit_distance",
    "evaluate",
    "evaluate_benchmarks",
    "evaluate_label_file",
    "evaluate_layout",
    "evaluate_source",
    "find_benchmarks",
    "label_file_source",
    "lmdb_source",
    "normalized_edit_distance",
    "one_minus_ned",
    "score",
    "test_charset",
    "word_accuracy",
]
