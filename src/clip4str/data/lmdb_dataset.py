"""LMDB datasets in the standard STR layout, a label-file dataset, and recursive dataset building.

Layout (PARSeq's Datasets.md): each LMDB is a folder with ``data.mdb`` holding ``num-samples`` and,
for ``i = 1..num-samples``, ``image-%09d`` (encoded image bytes) and ``label-%09d`` (UTF-8). A dataset
root such as ``data/train/real`` is searched recursively and every LMDB found is concatenated.

Labels are read and filtered once, at construction (no image is decoded), so lengths and per-dataset
counts are known up front. Environments are opened lazily, read-only and without locks, once per
process: every DataLoader worker opens its own.

**Corrupt images.** An image that does not decode is never fatal: it is counted (``corrupt_count``,
shared by the workers), logged once with its LMDB and key, remembered so it is not retried, and the
next valid sample is returned instead. Only when every sample of a dataset fails does it raise.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset

from clip4str.data.labels import LabelFilter, read_label_file
from clip4str.data.lmdb_writer import is_temporary_lmdb
from clip4str.data.transforms import decode_image_bytes, image_size_of_bytes, load_image
from clip4str.errors import DatasetError, ImageReadError

log = logging.getLogger(__name__)

Transform = Callable[[Image.Image], Any]


def find_lmdbs(root: str | Path) -> list[Path]:
    """All LMDB folders (containing ``data.mdb``) at or under ``root``, sorted; unfinished writes skipped.

    Raises:
        DatasetError: ``root`` does not exist or holds no LMDB.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset path does not exist: {root}")
    if root.is_file():
        if root.name == "data.mdb":
            return [root.parent]
        raise DatasetError(f"expected an LMDB folder (with data.mdb) or a folder of them, got a file: {root}")
    found = []
    for mdb in sorted(root.rglob("data.mdb")):
        folder = mdb.parent
        if any(is_temporary_lmdb(p) for p in [folder, *folder.relative_to(root).parents]):
            log.warning("skipping unfinished LMDB write %s", folder)
            continue
        found.append(folder)
    if not found:
        raise DatasetError(f"no LMDB (a folder with data.mdb) found at or under {root}")
    return found


def open_lmdb(path: str | Path) -> lmdb.Environment:
    """A read-only, lock-free environment for the LMDB at ``path``, shared within the process.

    py-lmdb refuses to open one file twice in a process, so datasets that read the same LMDB share one
    environment. After a fork the child closes its inherited copy (never used across processes) and
    opens its own, which is what lets every DataLoader worker read.
    """
    path = Path(path)
    mdb = path / "data.mdb"
    try:
        st = mdb.stat()
    except OSError:
        raise DatasetError(f"not an LMDB folder (no data.mdb): {path}") from None
    key = (st.st_dev, st.st_ino)
    pid = os.getpid()
    entry = _ENVS.get(key)
    if entry is not None:
        owner, env = entry
        if owner == pid:
            return env
        env.close()  # inherited through fork: release this process's copy only
    try:
        env = lmdb.open(
            str(path), readonly=True, lock=False, readahead=False, meminit=False, create=False, max_readers=1
        )
    except lmdb.Error as err:
        raise DatasetError(f"cannot open LMDB {path}: {err}") from err
    _ENVS[key] = (pid, env)
    return env


_ENVS: dict[tuple[int, int], tuple[int, lmdb.Environment]] = {}


def read_num_samples(txn: lmdb.Transaction, path: str | Path) -> int:
    """``num-samples`` of an LMDB, checked against the keys it really holds (a damaged or hostile value such
    as 10**12 or -5 would otherwise make readers loop for ever or skip everything)."""
    raw = txn.get(b"num-samples")
    if raw is None:
        raise DatasetError(
            f"LMDB {path} has no 'num-samples' key (unfinished or not in the image-%09d/label-%09d layout)"
        )
    try:
        n = int(bytes(raw[:40]).decode("ascii").strip())
    except (ValueError, UnicodeDecodeError) as err:
        raise DatasetError(f"LMDB {path}: 'num-samples' is not an integer: {bytes(raw[:40])!r}") from err
    if n < 0:
        raise DatasetError(f"LMDB {path}: 'num-samples' is {n}; it must be >= 0 (a damaged LMDB?)")
    entries = int(txn.stat()["entries"])  # keys of the main database
    if n > entries:  # each sample needs at least its image key
        raise DatasetError(
            f"LMDB {path}: 'num-samples' is {n:,} but the LMDB holds only {entries:,} keys; it is damaged or "
            "not in the image-%09d/label-%09d layout (rewrite it with `clip4str lmdb create`)"
        )
    return n


class PackedStrings(Sequence[str]):
    """An immutable list of strings stored as one UTF-8 blob plus an offsets array.

    Millions of labels held this way are two Python objects, not millions: DataLoader workers forked
    from the main process then share them instead of copying every page that reference counting
    touches. Compares equal to a list or tuple with the same strings.
    """

    def __init__(self, blob: bytes, offsets: np.ndarray) -> None:
        self._blob = blob
        self._offsets = offsets

    @classmethod
    def from_strings(cls, items: Sequence[str]) -> PackedStrings:
        encoded = [s.encode("utf-8") for s in items]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(b"".join(encoded), offsets)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"label index {index} out of range ({n} labels)")
        return self._blob[self._offsets[index] : self._offsets[index + 1]].decode("utf-8")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedStrings):
            return self._blob == other._blob and np.array_equal(self._offsets, other._offsets)
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self[:5])
        return f"PackedStrings([{head}{', ...' if len(self) > 5 else ''}], n={len(self)})"


class _CorruptTracker:
    """Indices whose image failed to decode, plus a counter shared between DataLoader workers."""

    def __init__(self) -> None:
        self.shared = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.local: set[int] = set()

    def add(self, index: int) -> bool:
        if index in self.local:
            return False
        self.local.add(index)
        self.shared += 1
        return True


class _ImageDataset(Dataset):
    """Common part: filtered ``labels`` and ``keys``, corrupt-image policy, transform."""

    name: str
    labels: list[str]
    transform: Transform | None

    def __init__(self, transform: Transform | None, skip_corrupt: bool) -> None:
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self._corrupt = _CorruptTracker()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def corrupt_count(self) -> int:
        """Images found undecodable so far, summed over all worker processes."""
        return int(self._corrupt.shared.item())

    def _load(self, index: int) -> Image.Image:
        raise NotImplementedError

    def sample_key(self, index: int) -> str:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, str]:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {self.name} with {n} samples")
        first_error: ImageReadError | None = None
        for attempt in range(n):
            i = (index + attempt) % n
            if i in self._corrupt.local:
                continue
            try:
                img = self._load(i)
            except ImageReadError as err:
                if not self.skip_corrupt:
                    raise
                first_error = first_error or err
                if self._corrupt.add(i):
                    log.warning("skipping undecodable image %s: %s", self.sample_key(i), err)
                continue
            if self.transform is not None:
                img = self.transform(img)
            return img, self.labels[i]
        raise DatasetError(f"no decodable image in {self.name} ({n} samples); first error: {first_error}")


class LmdbDataset(_ImageDataset):
    """One LMDB: ``dataset[i] -> (transform(image), label)`` over the samples whose label passes the rules.

    Args:
        path: the LMDB folder (with ``data.mdb``).
        charset: training charset; labels are filtered by :class:`LabelFilter` with the options below.
        max_label_length, remove_whitespace, normalize, unsupported: see :class:`LabelFilter`.
        transform: ``PIL RGB image -> anything`` (e.g. :class:`~clip4str.data.transforms.Preprocess`).
        skip_corrupt: skip undecodable images (default) instead of raising ``ImageReadError``.
        min_image_dim: drop samples whose image is smaller than this on either side (decodes headers once).

    Attributes: ``labels``, ``indices`` (1-based LMDB indices), ``num_raw`` (``num-samples``),
    ``filter_counts`` (drops by reason), ``corrupt_count``.
    """

    def __init__(
        self,
        path: str | Path,
        charset: str,
        max_label_length: int = 25,
        transform: Transform | None = None,
        remove_whitespace: bool = True,
        normalize: str | bool = "auto",
        unsupported: str = "remove",
        skip_corrupt: bool = True,
        min_image_dim: int = 0,
    ) -> None:
        super().__init__(transform, skip_corrupt)
        self.path = Path(path)
        self.name = str(self.path)
        self._env: lmdb.Environment | None = None
        self._env_pid = -1
        label_filter = LabelFilter(charset, max_label_length, remove_whitespace, normalize, unsupported)
        blob, offsets, indices = bytearray(), [0], []
        with open_lmdb(self.path).begin() as txn:
            self.num_raw = read_num_samples(txn, self.path)
            missing = 0
            for index in range(1, self.num_raw + 1):
                raw = txn.get(f"label-{index:09d}".encode())
                if raw is None:
                    missing += 1
                    continue
                label = label_filter(raw.decode("utf-8", errors="replace"))
                if label is None:
                    continue
                if min_image_dim > 0 and not self._big_enough(txn, index, min_image_dim):
                    label_filter.counts["too_small"] += 1
                    continue
                blob += label.encode("utf-8")
                offsets.append(len(blob))
                indices.append(index)
        self.labels = PackedStrings(bytes(blob), np.asarray(offsets, dtype=np.int64))
        self.indices = np.asarray(indices, dtype=np.int64)
        self.filter_counts: Counter[str] = label_filter.counts
        self.unsupported_chars = label_filter.unsupported_chars
        if missing:
            self.filter_counts["missing_label"] = missing
            log.warning("%s: %d of %d samples have no label key; skipped", self.path, missing, self.num_raw)

    @staticmethod
    def _big_enough(txn: lmdb.Transaction, index: int, min_dim: int) -> bool:
        raw = txn.get(f"image-{index:09d}".encode())
        try:
            w, h = image_size_of_bytes(raw or b"")  # the header only: nothing is decoded
        except ImageReadError:
            return True  # left for the corrupt-image policy at load time
        return w >= min_dim and h >= min_dim

    @property
    def env(self) -> lmdb.Environment:
        """This process's environment (opened on first use in each DataLoader worker)."""
        if self._env is None or self._env_pid != os.getpid():
            self._env = open_lmdb(self.path)
            self._env_pid = os.getpid()
        return self._env

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_env"] = None
        state["_env_pid"] = -1
        return state

    def sample_key(self, index: int) -> str:
        """``'<lmdb path>:image-%09d'`` of the ``index``-th kept sample (for error reports)."""
        return f"{self.path}:image-{int(self.indices[index]):09d}"

    def raw(self, index: int) -> tuple[bytes, str]:
        """The stored image bytes and the (filtered) label of the ``index``-th kept sample."""
        with self.env.begin() as txn:
            data = txn.get(f"image-{int(self.indices[index]):09d}".encode())
        if data is None:
            raise ImageReadError(f"{self.sample_key(index)}: key missing")
        return bytes(data), self.labels[index]

    def _load(self, index: int) -> Image.Image:
        data, _ = self.raw(index)
        return decode_image_bytes(data, self.sample_key(index))


class LabelFileDataset(_ImageDataset):
    """A folder of images and a label file (see :func:`~clip4str.data.labels.read_label_file`).

    With ``charset`` given, labels pass the same :class:`LabelFilter` rules as LMDB labels; with
    ``charset=None`` they are kept verbatim (e.g. for evaluation that applies its own rules).
    """

    def __init__(
        self,
        label_file: str | Path,
        images_dir: str | Path | None = None,
        charset: str | None = None,
        max_label_length: int = 25,
        transform: Transform | None = None,
        remove_whitespace: bool = True,
        normalize: str | bool = "auto",
        unsupported: str = "remove",
        skip_corrupt: bool = True,
    ) -> None:
        super().__init__(transform, skip_corrupt)
        self.label_file = Path(label_file)
        self.name = str(self.label_file)
        records = read_label_file(label_file, images_dir)
        self.filter_counts: Counter[str] = Counter()
        if charset is not None:
            label_filter = LabelFilter(charset, max_label_length, remove_whitespace, normalize, unsupported)
            kept = [(p, label_filter(t)) for p, t in records]
            records = [(p, t) for p, t in kept if t is not None]
            self.filter_counts = label_filter.counts
        self.paths = [p for p, _ in records]
        self.labels = [t for _, t in records]

    def sample_key(self, index: int) -> str:
        return str(self.paths[index])

    def _load(self, index: int) -> Image.Image:
        return load_image(self.paths[index])


class LmdbConcatDataset(ConcatDataset):
    """Several datasets as one, with ``counts`` (kept samples per dataset name) and aggregate statistics."""

    def __init__(self, datasets: Sequence[_ImageDataset], names: Sequence[str]) -> None:
        super().__init__(datasets)
        self.names = list(names)

    @property
    def counts(self) -> dict[str, int]:
        return {name: len(ds) for name, ds in zip(self.names, self.datasets)}

    @property
    def filter_counts(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for ds in self.datasets:
            total.update(ds.filter_counts)  # type: ignore[attr-defined]
        return total

    @property
    def corrupt_count(self) -> int:
        return sum(ds.corrupt_count for ds in self.datasets)  # type: ignore[attr-defined]

    def locate(self, index: int) -> tuple[_ImageDataset, int]:
        """The member dataset and its local index for a global ``index``."""
        if index < 0:
            index += len(self)
        d = bisect.bisect_right(self.cumulative_sizes, index)
        start = self.cumulative_sizes[d - 1] if d else 0
        return self.datasets[d], index - start  # type: ignore[return-value]

    def sample_key(self, index: int) -> str:
        ds, i = self.locate(index)
        return ds.sample_key(i)

    def summary(self) -> str:
        """Multi-line report: samples per dataset, then the label-filter drops."""
        lines = [f"{name}\t{n:,}" for name, n in self.counts.items()]
        lines.append(f"total\t{len(self):,}")
        drops = {k: v for k, v in self.filter_counts.items() if k not in ("seen", "kept") and v}
        if drops:
            lines.append("dropped/changed: " + ", ".join(f"{k} {v:,}" for k, v in sorted(drops.items())))
        return "\n".join(lines)


def build_dataset(
    roots: str | Path | Sequence[str | Path],
    charset: str,
    max_label_length: int = 25,
    transform: Transform | None = None,
    allow_empty: bool = False,
    **kwargs: Any,
) -> LmdbConcatDataset:
    """Every LMDB at or under ``roots`` (searched recursively), concatenated.

    ``kwargs`` go to :class:`LmdbDataset` (``remove_whitespace``, ``normalize``, ``unsupported``,
    ``skip_corrupt``, ``min_image_dim``). Dataset names are paths relative to their root.

    Raises:
        DatasetError: a root is missing or has no LMDB, or (unless ``allow_empty``) no sample survives
            the label rules.
    """
    if isinstance(roots, (str, Path)):
        roots = [roots]
    datasets, names = [], []
    for root in roots:
        root = Path(root)
        for folder in find_lmdbs(root):
            ds = LmdbDataset(folder, charset, max_label_length, transform=transform, **kwargs)
            rel = folder.relative_to(root) if folder != root else Path(folder.name)
            name = str(rel) if len(roots) == 1 else str(root.name / rel)
            log.info("lmdb %s: %d samples (%d raw)", name, len(ds), ds.num_raw)
            datasets.append(ds)
            names.append(name)
    concat = LmdbConcatDataset(datasets, names)
    if len(concat) == 0 and not allow_empty:
        where = ", ".join(str(r) for r in roots)
        raise DatasetError(
            f"no usable samples in {where}: every label was dropped ({dict(concat.filter_counts)}); "
            "check the charset and max_label_length"
        )
    return concat
