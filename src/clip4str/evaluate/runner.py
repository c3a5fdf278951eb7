"""The runner: a recognizer over test sets, scored with the official protocol (see :mod:`clip4str.evaluate`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clip4str.charset import CHARSET_36, CharsetAdapter
from clip4str.errors import DatasetError
from clip4str.evaluate.benchmarks import (
    GROUPS,
    OTHER_GROUP,
    STANDARD_NAMES,
    BenchmarkLayout,
    EvalSource,
    find_benchmarks,
    label_file_source,
    lmdb_source,
)
from clip4str.evaluate.metrics import DatasetResult, SampleRecord
from clip4str.evaluate.report import EvalReport, build_report

if TYPE_CHECKING:
    from clip4str.api import Recognizer


def evaluate_source(
    recognizer: Recognizer,
    source: EvalSource,
    charset: str,
    batch_size: int | None = None,
    workers: int = 4,
    progress: bool = True,
) -> tuple[DatasetResult, list[SampleRecord]]:
    """Run the recognizer over one test set and score it. The recognizer is used as it is (call
    :func:`evaluate` to also decode with the test charset). Returns the result and one
    :class:`SampleRecord` per sample, in order."""
    from tqdm import tqdm

    from clip4str.data.transforms import decode_image_bytes, load_image

    if len(source) == 0:
        raise DatasetError(
            f"{source.name}: no sample survives the label rules for the test charset "
            f"(dropped: {source.filtered or 'all'}); check --cased/--punctuation/--charset"
        )
    adapter = CharsetAdapter(charset)
    size = recognizer.options.replace(batch_size=batch_size).batch_size
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
        apply_charset_to_model: decode with ``charset`` as ``charset_test`` (the caption fed to the text
            encoder is restricted to it), as the official evaluation does.
    """
    if not sources:
        raise DatasetError("nothing to evaluate: no test set given")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise DatasetError(f"test set names must be unique, got {names}")
    reader = recognizer.with_options(
        batch_size=batch_size, charset_test=charset if apply_charset_to_model else None
    )
    results: dict[str, DatasetResult] = {}
    records: dict[str, list[SampleRecord]] = {}
    start = time.perf_counter()
    for source in sources:
        results[source.name], records[source.name] = evaluate_source(
            reader, source, charset, workers=workers, progress=progress
        )
    seconds = time.perf_counter() - start
    options = reader.options
    settings = {
        "mode": options.mode,
        "refine_iters": options.refine_iters,
        "visual_only": options.visual_only,
        "precision": options.precision,
        "device": str(reader.device),
        "batch_size": options.batch_size,
        "max_label_length": reader.config.max_label_length,
        "charset_applied_to_model": apply_charset_to_model,
    }
    return build_report(results, records, groups or {"Results": names}, charset, seconds, settings)


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
