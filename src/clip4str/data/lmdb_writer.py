"""Atomic writing of LMDBs in the standard STR layout (``image-%09d``, ``label-%09d``, ``num-samples``).

Samples are written into a sibling folder ``<out>.tmp-<random>``; ``num-samples`` is written last, and
the folder is renamed to ``<out>`` only after everything is on disk. An interrupted run therefore leaves
at most a ``*.tmp-*`` folder without ``num-samples``, which the readers skip and refuse.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from types import TracebackType

import lmdb

from clip4str.errors import DatasetError

TMP_MARKER = ".tmp-"


def is_temporary_lmdb(path: str | Path) -> bool:
    """True for the work folders of an unfinished :class:`LmdbWriter` (``<name>.tmp-<random>``)."""
    return TMP_MARKER in Path(path).name


class LmdbWriter:
    """Write ``(image bytes, label)`` samples to a new LMDB at ``out``, atomically.

    Use as a context manager; leaving the block normally commits and renames, an exception discards the
    temporary folder. ``overwrite=True`` replaces an existing LMDB at ``out`` (only after success).

    Example::

        with LmdbWriter("data/train/mine") as w:
            w.add(open("a.jpg", "rb").read(), "hello")
    """

    def __init__(
        self,
        out: str | Path,
        overwrite: bool = False,
        commit_every: int = 1000,
        map_size: int = 1 << 28,
    ) -> None:
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise DatasetError(f"output exists: {self.out} (pass overwrite=True / --overwrite to replace it)")
        self.overwrite = overwrite
        self.commit_every = max(1, commit_every)
        self.count = 0
        self._pending: list[tuple[bytes, bytes]] = []
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.parent / f"{self.out.name}{TMP_MARKER}{secrets.token_hex(4)}"
        self.tmp.mkdir()
        self._map_size = map_size
        self._env: lmdb.Environment | None = lmdb.open(
            str(self.tmp), map_size=map_size, subdir=True, lock=True
        )
        self._closed = False

    def add(self, image: bytes, label: str) -> int:
        """Append one sample; returns its 1-based index (the number in its keys)."""
        if self._closed:
            raise RuntimeError("LmdbWriter is closed")
        self.count += 1
        self._pending.append((f"image-{self.count:09d}".encode(), bytes(image)))
        self._pending.append((f"label-{self.count:09d}".encode(), label.encode("utf-8")))
        if len(self._pending) >= 2 * self.commit_every:
            self._flush()
        return self.count

    def put_meta(self, key: bytes, value: bytes) -> None:
        """Store an extra key (e.g. provenance JSON); readers of the standard layout ignore it."""
        if key == b"num-samples" or key.startswith((b"image-", b"label-")):
            raise ValueError(f"meta key {key!r} collides with the sample keys")
        self._pending.append((key, value))

    def _flush(self, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        items = self._pending + (extra or [])
        assert self._env is not None
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value in items:
                        txn.put(key, value)
                break
            except lmdb.MapFullError:
                # The aborted transaction wrote nothing: grow the map and write the batch again.
                self._map_size *= 2
                self._env.set_mapsize(self._map_size)
        self._pending = []

    def close(self) -> Path:
        """Write ``num-samples``, sync, and move the LMDB into place. Returns the final path."""
        if self._closed:
            return self.out
        try:
            self._flush([(b"num-samples", str(self.count).encode())])
            assert self._env is not None
            self._env.sync(True)
        except BaseException:
            self.abort()  # e.g. disk full: leave nothing half-written behind
            raise
        self._env.close()
        self._env = None
        self._closed = True
        if self.out.exists():
            old = self.out.parent / f"{self.out.name}.old-{secrets.token_hex(4)}"
            os.replace(self.out, old)
            os.replace(self.tmp, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        """Discard everything written so far (removes the temporary folder)."""
        if self._env is not None:
            self._env.close()
            self._env = None
        self._closed = True
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> LmdbWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_lmdb(out: str | Path, samples, overwrite: bool = False) -> int:
    """Write an iterable of ``(image_bytes, label)`` to a new LMDB at ``out``; returns the sample count."""
    with LmdbWriter(out, overwrite=overwrite) as writer:
        for image, label in samples:
            writer.add(image, label)
    return writer.count
