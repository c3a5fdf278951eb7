"""The test sets: the standard benchmark names and report groups, test sets as labels plus a way to fetch
each image (:class:`EvalSource`), and finding the benchmarks under ``<root>/test``."""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clip4str.charset import CHARSET_36
from clip4str.errors import DatasetError

# Benchmark names: the folder names of the PARSeq / CLIP4STR data bundles under ``<root>/test``.
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
