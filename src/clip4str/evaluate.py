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
"""

from __future__ import annotations

import csv
import io
import json
import math
import string
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clip4str.charset import CHARSET_36, CharsetAdapter
from clip4str.errors import DatasetError

if TYPE_CHECKING:
    from clip4str.api import Recognizer

# --------------------------------------------------------------------------------------------------
# Benchmark names (the folder names of the PARSeq / CLIP4STR data bundles under ``<root>/test``)

#: The six-set "benchmark subset" (ABINet's split): IC13 857 and IC15 1811 images.
BENCHMARK_SUB: tuple[str, ...] = ("IIIT5k", "SVT", "IC13_857", "IC15_1811", "SVTP", "CUTE80")
#: The six-set "benchmark" (TRBA's split): IC13 1015 and IC15 2077 images.
BENCHMARK: tuple[str, ...] = ("IIIT5k", "SVT", "IC13_1015", "IC15_2077", "SVTP", "CUTE80")
#: Occluded scene text, the CLIP4STR tables' extra columns (heavily / weakly occluded).
OCCLUDED: tuple[str, ...] = ("HOST", "WOST")
#: PARSeq's newer, larger test sets.
NEW: tuple[str, ...] = ("ArT", "COCOv1.4", "Uber")
#: Union14M-Benchmark subsets, looked up under ``test/Union14M*/<subset>`` (or ``test/<subset>``).
UNION14M_SUBSETS: tuple[str, ...] = (
    "curve",
    "multi_oriented",
    "artistic",
    "contextless",
    "salient",
    "multi_words",
    "general",
)
UNION14M: tuple[str, ...] = tuple(f"Union14M/{s}" for s in UNION14M_SUBSETS)

#: Report groups, in report order.
GROUPS: dict[str, tuple[str, ...]] = {
    "Benchmark (Subset)": BENCHMARK_SUB,
    "Benchmark": BENCHMARK,
    "Occluded": OCCLUDED,
    "New": NEW,
    "Union14M": UNION14M,
}
#: Every standard name once, in report order.
STANDARD_NAMES: tuple[str, ...] = tuple(dict.fromkeys(n for names in GROUPS.values() for n in names))
OTHER_GROUP = "Other"


def test_charset(cased: bool = False, punctuation: bool = False) -> str:
    """The official test charset: 36 (digits + lowercase), + uppercase if ``cased``, + punctuation."""
    charset = CHARSET_36
    if cased:
        charset += string.ascii_uppercase
    if punctuation:
        charset += string.punctuation
    return charset


test_charset.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite its name


# --------------------------------------------------------------------------------------------------
# Metrics (dependency-free: usable by training's validation loop)


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


# --------------------------------------------------------------------------------------------------
# Evaluation sources: labels (filtered once) plus a way to fetch each image


@dataclass
class EvalSource:
    """A test set ready to evaluate: ``labels[i]`` (already filtered), ``keys[i]`` (an LMDB key or a
    path, for reports) and ``fetch(i)`` (encoded bytes or a path; may raise ``ImageReadError``)."""

    name: str
    labels: list[str]
    keys: list[str]
    fetch: Callable[[int], bytes | Path]
    filtered: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


def _drop_counts(counts: Counter[str]) -> dict[str, int]:
    keep = ("too_long", "empty", "out_of_charset", "too_small", "missing_label", "chars_removed")
    return {k: int(counts[k]) for k in keep if counts.get(k)}


def lmdb_source(name: str, path: str | Path, charset: str, max_label_length: int = 25) -> EvalSource:
    """Every LMDB at or under ``path`` as one test set, labels filtered with the test charset."""
    from clip4str.data.lmdb_dataset import LmdbDataset, find_lmdbs

    labels: list[str] = []
    keys: list[str] = []
    owners: list[tuple[LmdbDataset, int]] = []
    counts: Counter[str] = Counter()
    for folder in find_lmdbs(path):
        ds = LmdbDataset(folder, charset, max_label_length)
        counts.update(ds.filter_counts)
        labels.extend(ds.labels)
        keys.extend(ds.sample_key(i) for i in range(len(ds)))
        owners.extend((ds, i) for i in range(len(ds)))

    def fetch(i: int) -> bytes:
        ds, local = owners[i]
        return ds.raw(local)[0]

    return EvalSource(name, labels, keys, fetch, _drop_counts(counts))


def label_file_source(
    label_file: str | Path,
    images_dir: str | Path | None = None,
    charset: str = CHARSET_36,
    max_label_length: int = 25,
    name: str | None = None,
) -> EvalSource:
    """A label file (``path<TAB>label`` per line, see :func:`~clip4str.data.labels.read_label_file`) as a
    test set; labels pass the same rules as LMDB labels. ``name`` defaults to the file's folder name."""
    from clip4str.data.lmdb_dataset import LabelFileDataset

    ds = LabelFileDataset(label_file, images_dir, charset=charset, max_label_length=max_label_length)
    if name is None:
        parent = Path(label_file).resolve().parent.name
        name = parent or Path(label_file).stem
    paths = list(ds.paths)
    return EvalSource(
        name, list(ds.labels), [str(p) for p in paths], lambda i: paths[i], _drop_counts(ds.filter_counts)
    )


# --------------------------------------------------------------------------------------------------
# Finding the benchmarks under <root>/test


def _children(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_dir()} if folder.is_dir() else {}


def _union_roots(test_dir: Path) -> list[Path]:
    return [p for key, p in _children(test_dir).items() if key.startswith(("union14m", "u14m"))]


def _canonical(name: str) -> str:
    """A user's spelling → the standard name when it is one (case-insensitive; bare Union14M subsets)."""
    lowered = name.strip().strip("/").lower()
    for std in STANDARD_NAMES:
        if lowered == std.lower():
            return std
    if lowered in UNION14M_SUBSETS:
        return f"Union14M/{lowered}"
    return name.strip().strip("/")


def _locate(test_dir: Path, name: str) -> Path | None:
    if name in UNION14M:
        subset = name.split("/", 1)[1]
        for root in [*_union_roots(test_dir), test_dir]:
            hit = _children(root).get(subset)
            if hit is not None:
                return hit
        return None
    if name in STANDARD_NAMES:
        return _children(test_dir).get(name.lower())
    path = test_dir / name
    return path if path.exists() else None


@dataclass
class BenchmarkLayout:
    """What :func:`find_benchmarks` found: ``paths`` (name → folder, report order) and ``ignored`` (folders
    under ``test/`` that are not standard benchmarks and were not asked for)."""

    test_dir: Path
    paths: dict[str, Path]
    ignored: list[str] = field(default_factory=list)


def find_benchmarks(root: str | Path, names: Sequence[str] | None = None) -> BenchmarkLayout:
    """Locate the test sets under ``root/test`` (PARSeq's layout; ``root`` may also be the ``test`` folder).

    Without ``names``: every standard benchmark present (``STANDARD_NAMES``). With ``names``: exactly those
    (standard names case-insensitively, bare Union14M subsets, or any folder relative to ``test/``).

    Raises:
        DatasetError: ``root`` has no ``test`` folder, a named set is absent, or no benchmark is found.
    """
    root = Path(root)
    test_dir = root / "test"
    if not test_dir.is_dir():
        if root.is_dir() and root.name.lower() == "test":
            test_dir = root
        else:
            raise DatasetError(
                f"no test folder at {test_dir}: --data expects the dataset root holding test/<NAME>/ LMDBs "
                "(PARSeq's layout, e.g. data/test/IIIT5k/data.mdb)"
            )
    paths: dict[str, Path] = {}
    if names:
        missing = []
        for raw in names:
            name = _canonical(raw)
            path = _locate(test_dir, name)
            if path is None:
                missing.append(name)
            else:
                paths[name] = path
        if missing:
            present = [n for n in STANDARD_NAMES if _locate(test_dir, n) is not None]
            raise DatasetError(
                f"not found under {test_dir}: {', '.join(missing)}; present: "
                f"{', '.join(present) or 'no standard benchmark'}"
            )
        return BenchmarkLayout(test_dir, paths)
    for name in STANDARD_NAMES:
        path = _locate(test_dir, name)
        if path is not None:
            paths[name] = path
    used = {p.resolve() for p in paths.values()} | {p.resolve() for p in _union_roots(test_dir)}
    ignored = [p.name for p in _children(test_dir).values() if p.resolve() not in used]
    if not paths:
        raise DatasetError(
            f"no standard benchmark under {test_dir} (looked for {', '.join(STANDARD_NAMES[:11])}, ...); "
            + (f"found {', '.join(ignored)}: name them with --datasets" if ignored else "the folder is empty")
        )
    return BenchmarkLayout(test_dir, paths, ignored)


# --------------------------------------------------------------------------------------------------
# The runner


def evaluate_source(
    recognizer: Recognizer,
    source: EvalSource,
    charset: str,
    batch_size: int | None = None,
    workers: int = 4,
    progress: bool = True,
) -> tuple[DatasetResult, list[SampleRecord]]:
    """Run the recognizer over one test set and score it. The recognizer is used as it is (call
    :func:`evaluate` to also apply the test charset to the model). Returns the result and one
    :class:`SampleRecord` per sample, in order."""
    from tqdm import tqdm

    from clip4str.data.transforms import decode_image_bytes, load_image

    if len(source) == 0:
        raise DatasetError(
            f"{source.name}: no sample survives the label rules for the test charset "
            f"(dropped: {source.filtered or 'all'}); check --cased/--punctuation/--charset"
        )
    adapter = CharsetAdapter(charset)
    size = batch_size or recognizer.batch_size
    result = DatasetResult(source.name, filtered=dict(source.filtered))
    records: list[SampleRecord | None] = [None] * len(source)
    start = time.perf_counter()

    def record(i: int, raw: str, confidence: float, error: str | None = None) -> None:
        text = adapter(raw)
        label = source.labels[i]
        records[i] = SampleRecord(source.name, i, source.keys[i], label, raw, text, confidence, error)
        result.add(text, label, confidence, failed=error is not None)

    def fetch(i: int) -> tuple[Any, str]:
        return source.fetch(i), source.keys[i]

    def load(fetched: tuple[Any, str]) -> Any:
        data, key = fetched
        if isinstance(data, (bytes, bytearray, memoryview)):
            return decode_image_bytes(data, key)
        return load_image(data)

    bar = tqdm(total=len(source), desc=source.name, unit="img", file=sys.stderr, disable=not progress or None)
    with bar:
        # LMDB bytes are fetched on this thread; decoding and preprocessing overlap the model.
        stream = recognizer.read_stream(range(len(source)), fetch, load, batch_size=size, workers=workers)
        for i, pred in stream:
            if isinstance(pred, Exception):
                record(i, "", 0.0, f"{type(pred).__name__}: {pred}")
            else:
                record(i, pred.text, pred.confidence)
            bar.update(1)
    result.seconds = time.perf_counter() - start
    return result, [r for r in records if r is not None]


@dataclass
class GroupResult:
    """A report group: its ``combined`` result over the ``present`` members; ``missing`` members were not
    evaluated (the combined number then is not comparable with the papers' column)."""

    name: str
    present: list[str]
    missing: list[str]
    combined: DatasetResult


@dataclass
class EvalReport:
    """Everything an evaluation produced: per-dataset ``results`` (in order), ``groups``, the ``total`` over
    every distinct dataset, per-sample ``records``, the test ``charset`` and the wall time."""

    results: dict[str, DatasetResult]
    groups: list[GroupResult]
    total: DatasetResult
    records: dict[str, list[SampleRecord]]
    charset: str
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return self.total.num_samples

    @property
    def images_per_second(self) -> float:
        return self.num_samples / self.seconds if self.seconds > 0 else math.nan

    @property
    def failures(self) -> list[SampleRecord]:
        return [r for recs in self.records.values() for r in recs if r.error is not None]

    def errors(self) -> list[SampleRecord]:
        """Every wrong prediction (failed samples included), dataset by dataset."""
        return [r for recs in self.records.values() for r in recs if not r.correct]

    def write_errors(self, path: str | Path) -> int:
        """Write the wrong predictions as TSV (dataset, key, label, prediction, raw prediction,
        confidence, error); returns how many."""
        rows = self.errors()
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
            w.writerow(["dataset", "key", "label", "prediction", "raw_prediction", "confidence", "error"])
            for r in rows:
                w.writerow(
                    [r.dataset, r.key, r.label, r.text, r.raw_text, f"{r.confidence:.6f}", r.error or ""]
                )
        return len(rows)

    def format(self, fmt: str = "table") -> str:
        """The report as ``table`` (aligned text), ``markdown``, ``csv`` or ``json``."""
        if fmt == "json":
            return (
                json.dumps(_json_safe(self.to_dict()), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
            )
        if fmt == "csv":
            return self._csv()
        if fmt in ("table", "markdown"):
            return self._tables(markdown=fmt == "markdown")
        raise ValueError(f"unknown report format {fmt!r}; use table, markdown, csv or json")

    def _sections(self) -> list[tuple[str, list[DatasetResult], DatasetResult, list[str]]]:
        sections = [
            (g.name, [self.results[n] for n in g.present], g.combined, g.missing) for g in self.groups
        ]
        # The "All" table only when no group already holds every evaluated set.
        if not any(set(g.present) == set(self.results) for g in self.groups):
            sections.append(("All", [], self.total, []))
        return sections

    def _tables(self, markdown: bool) -> str:
        headers = ["Dataset", "# samples", "Accuracy", "1 - NED", "Confidence", "Label length", "Failed"]
        out: list[str] = []
        for title, rows, combined, missing in self._sections():
            lines = [_row_cells(r) for r in rows]
            if len(rows) != 1:  # one dataset: its row is already the combined one
                label = "Combined" if rows else f"All ({len(self.results)} datasets)"
                lines.append(_row_cells(combined, label))
            out.append(f"### {title}" if markdown else f"{title}:")
            out.append(_render(headers, lines, markdown, separator_before_last=len(rows) > 1))
            if missing:
                out.append(
                    f"(missing: {', '.join(missing)}; combined over {len(rows)} of "
                    f"{len(rows) + len(missing)} sets, not comparable with the papers' column)"
                )
            out.append("")
        return "\n".join(out).rstrip() + "\n"

    def _csv(self) -> str:
        buf = io.StringIO()
        fields = ["group", "dataset", "num_samples", "accuracy", "one_minus_ned", "confidence"]
        fields += ["label_length", "pred_length", "failed"]
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for title, rows, combined, _ in self._sections():
            for r in [*rows, combined]:
                m = r.metrics()
                if r is combined:
                    m["dataset"] = "Combined" if rows else "All"
                w.writerow({"group": title, **{k: _csv_value(v) for k, v in m.items()}})
        return buf.getvalue()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: settings, per-dataset metrics (with label-rule drops), groups, total, timing."""
        return {
            "settings": {"charset_test": self.charset, **self.settings},
            "datasets": {
                n: {**r.metrics(), "filtered": r.filtered, "seconds": r.seconds}
                for n, r in self.results.items()
            },
            "groups": [
                {"group": g.name, "datasets": g.present, "missing": g.missing, **g.combined.metrics()}
                for g in self.groups
            ],
            "total": self.total.metrics(),
            "seconds": self.seconds,
            "images_per_second": self.images_per_second,
        }


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4f}"
    return v


def _fmt(v: float, digits: int = 2) -> str:
    return "-" if math.isnan(v) else f"{v:.{digits}f}"


def _row_cells(r: DatasetResult, name: str | None = None) -> list[str]:
    return [
        name or r.name,
        str(r.num_samples),
        _fmt(r.accuracy),
        _fmt(r.one_minus_ned),
        _fmt(r.confidence),
        _fmt(r.label_length),
        str(r.failed),
    ]


def _render(headers: list[str], rows: list[list[str]], markdown: bool, separator_before_last: bool) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        parts = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(parts) + " |" if markdown else "  ".join(parts)

    if markdown:
        rule = "|" + "|".join(
            ":" + "-" * (w + 1) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)
        )
        lines = [line(headers), rule + "|"]
    else:
        lines = [line(headers)]
    body = [line(r) for r in rows]
    if separator_before_last and not markdown:
        body.insert(len(body) - 1, "-" * len(lines[0]))
    return "\n".join(lines + body)


def _json_safe(obj: Any) -> Any:
    """NaN (the mean of an empty set) → null, so the output is strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _build_report(
    results: dict[str, DatasetResult],
    records: dict[str, list[SampleRecord]],
    groups: dict[str, Sequence[str]],
    charset: str,
    seconds: float,
    settings: dict[str, Any],
) -> EvalReport:
    group_results = []
    for gname, members in groups.items():
        present = [n for n in members if n in results]
        if not present:
            continue
        missing = [n for n in members if n not in results]
        group_results.append(
            GroupResult(gname, present, missing, DatasetResult.combine(gname, (results[n] for n in present)))
        )
    total = DatasetResult.combine("All", results.values())
    return EvalReport(results, group_results, total, records, charset, seconds, settings)


def evaluate(
    recognizer: Recognizer,
    sources: Sequence[EvalSource],
    charset: str = CHARSET_36,
    groups: dict[str, Sequence[str]] | None = None,
    batch_size: int | None = None,
    workers: int = 4,
    progress: bool = True,
    apply_charset_to_model: bool = True,
) -> EvalReport:
    """Evaluate several test sets with the official protocol and build the report.

    Args:
        recognizer: the model with its decoding options (see :func:`clip4str.load`).
        sources: test sets (:func:`lmdb_source`, :func:`label_file_source`).
        charset: the test charset (:func:`test_charset`); labels of ``sources`` must be filtered with it.
        groups: report groups (name → dataset names); default one group "Results" with every source.
        apply_charset_to_model: give ``charset`` to the model for the caption fed to the text encoder, as
            the official evaluation does (restored afterwards).
    """
    if not sources:
        raise DatasetError("nothing to evaluate: no test set given")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise DatasetError(f"test set names must be unique, got {names}")
    model = recognizer.model
    previous = model.config.charset_test
    if apply_charset_to_model:
        model.set_charset_test(charset)
    results: dict[str, DatasetResult] = {}
    records: dict[str, list[SampleRecord]] = {}
    start = time.perf_counter()
    try:
        for source in sources:
            results[source.name], records[source.name] = evaluate_source(
                recognizer, source, charset, batch_size=batch_size, workers=workers, progress=progress
            )
    finally:
        if apply_charset_to_model:
            model.set_charset_test(previous)
    seconds = time.perf_counter() - start
    settings = {
        "mode": recognizer.mode,
        "refine_iters": recognizer.refine_iters,
        "visual_only": recognizer.visual_only,
        "precision": recognizer.precision,
        "device": str(recognizer.device),
        "batch_size": batch_size or recognizer.batch_size,
        "max_label_length": model.config.max_label_length,
        "charset_applied_to_model": apply_charset_to_model,
    }
    return _build_report(results, records, groups or {"Results": names}, charset, seconds, settings)


def evaluate_benchmarks(
    recognizer: Recognizer,
    root: str | Path,
    datasets: Sequence[str] | None = None,
    charset: str = CHARSET_36,
    max_label_length: int | None = None,
    **kwargs: Any,
) -> EvalReport:
    """Evaluate the benchmarks under ``root/test`` (all standard ones present, or exactly ``datasets``),
    grouped as the papers' tables. ``kwargs`` go to :func:`evaluate`."""
    layout = find_benchmarks(root, datasets)
    return evaluate_layout(recognizer, layout, charset, max_label_length, **kwargs)


def evaluate_layout(
    recognizer: Recognizer,
    layout: BenchmarkLayout,
    charset: str = CHARSET_36,
    max_label_length: int | None = None,
    **kwargs: Any,
) -> EvalReport:
    """:func:`evaluate_benchmarks` for an already located :class:`BenchmarkLayout`."""
    max_len = max_label_length or recognizer.config.max_label_length
    sources = [lmdb_source(name, path, charset, max_len) for name, path in layout.paths.items()]
    groups: dict[str, Sequence[str]] = dict(GROUPS)
    others = [n for n in layout.paths if n not in STANDARD_NAMES]
    if others:
        groups[OTHER_GROUP] = others
    return evaluate(recognizer, sources, charset, groups=groups, **kwargs)


def evaluate_label_file(
    recognizer: Recognizer,
    label_file: str | Path,
    images_dir: str | Path | None = None,
    charset: str = CHARSET_36,
    max_label_length: int | None = None,
    name: str | None = None,
    **kwargs: Any,
) -> EvalReport:
    """Evaluate a folder of images listed in a label file (``path<TAB>label``); see :func:`evaluate`."""
    max_len = max_label_length or recognizer.config.max_label_length
    source = label_file_source(label_file, images_dir, charset, max_len, name=name)
    return evaluate(recognizer, [source], charset, **kwargs)
