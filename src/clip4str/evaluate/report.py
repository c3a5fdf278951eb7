"""What an evaluation produced (:class:`EvalReport`) and its formats: aligned table, markdown, csv, json,
and the tab-separated list of wrong readings."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clip4str.evaluate.metrics import DatasetResult, SampleRecord


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


def build_report(
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
