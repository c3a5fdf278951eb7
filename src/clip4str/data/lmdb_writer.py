"""Atomic writing of LMDBs in the standard STR layout (``image-%09d``, ``label-%09d``, ``num-samples``).

Samples are written into a sibling folder ``<out>.tmp-<pid>-<random>``; ``num-samples`` is written last,
and the folder is renamed to ``<out>`` only after everything is on disk. An interrupted run therefore
leaves at most a ``*.tmp-*`` folder without ``num-samples``, which the readers skip and refuse, and which
the next writer to the same ``<out>`` removes once its process is gone.

Nothing but an LMDB is ever replaced: ``overwrite`` refuses a folder holding anything other than
``data.mdb``/``lock.mdb``, and an LMDB that another process created at ``<out>`` during the run is left
alone (the new one is kept next to it, and the error says where).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import socket
from pathlib import Path
from types import TracebackType

import lmdb

from clip4str.errors import DatasetError

TMP_MARKER = ".tmp-"
_OWNER_FILE = "clip4str-writer"  # "<host> <pid>" of the writing process, inside its temporary folder
_LMDB_FILES = {"data.mdb", "lock.mdb"}


def check_replaceable(out: Path) -> None:
    """Raise :class:`DatasetError` unless ``out`` is missing, an empty folder or an LMDB folder."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise DatasetError(f"{out} exists and is not an LMDB folder; --overwrite only replaces an LMDB")
    others = sorted(p.name for p in out.iterdir() if p.name not in _LMDB_FILES)
    if others:
        shown = ", ".join(others[:3]) + (" ..." if len(others) > 3 else "")
        raise DatasetError(
            f"{out} is not an LMDB folder (it holds {shown}); --overwrite only replaces an LMDB: choose "
            "another output folder"
        )


def _alive(owner: str) -> bool:
    try:
        host, pid = owner.split()
        if host != socket.gethostname():
            return True  # another machine's writer: cannot tell, leave it
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (ValueError, OSError):
        return True
    return True


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove ``<out>.tmp-*`` folders left by writers that were killed (their process is gone)."""
    removed = []
    for tmp in out.parent.glob(f"{out.name}{TMP_MARKER}*"):
        try:
            owner = (tmp / _OWNER_FILE).read_text(encoding="utf-8").strip()
        except OSError:
            continue  # not ours, or still starting
        if not _alive(owner):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


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
        if (self.out.exists() or self.out.is_symlink()) and not overwrite:
            raise DatasetError(f"output exists: {self.out} (pass overwrite=True / --overwrite to replace it)")
        if overwrite:
            check_replaceable(self.out)
        self.overwrite = overwrite
        self.commit_every = max(1, commit_every)
        self.count = 0
        self._pending: list[tuple[bytes, bytes]] = []
        self._closed = True
        self._env: lmdb.Environment | None = None
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.stale_removed = remove_stale_temporaries(self.out)
            self.tmp = self.out.parent / f"{self.out.name}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
            self.tmp.mkdir()
        except OSError as err:
            raise DatasetError(
                f"cannot create the LMDB folder next to {self.out}: {err.strerror or err}"
            ) from err
        self._closed = False
        try:
            (self.tmp / _OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n", encoding="utf-8")
            self._map_size = map_size
            self._env = lmdb.open(str(self.tmp), map_size=map_size, subdir=True, lock=True)
        except (OSError, lmdb.Error) as err:
            self.abort()
            raise DatasetError(f"cannot create an LMDB next to {self.out}: {err}") from err

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
        try:
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
        except (lmdb.Error, OSError) as err:
            raise self._write_failed(err) from err
        self._pending = []

    def _write_failed(self, err: BaseException) -> DatasetError:
        full = "No space left" in str(err) or getattr(err, "errno", None) == errno.ENOSPC
        reason = "the disk is full" if full else f"writing failed ({err})"
        kept = "the existing LMDB there is unchanged" if self.out.exists() else "nothing was written there"
        return DatasetError(
            f"LMDB {self.out}: {reason}; {kept} (free space or choose another --out, then re-run)"
        )

    def close(self) -> Path:
        """Write ``num-samples``, sync, and move the LMDB into place. Returns the final path.

        Raises:
            DatasetError: writing failed (disk full: nothing is left behind), or ``out`` appeared while
                writing without ``overwrite`` (the new LMDB is kept beside it, the message says where).
        """
        if self._closed:
            return self.out
        try:
            self._flush([(b"num-samples", str(self.count).encode())])
            assert self._env is not None
            try:
                self._env.sync(True)
            except (lmdb.Error, OSError) as err:
                raise self._write_failed(err) from err
        except BaseException:
            self.abort()  # e.g. disk full: leave nothing half-written behind
            raise
        self._env.close()
        self._env = None
        self._closed = True
        (self.tmp / _OWNER_FILE).unlink(missing_ok=True)
        if self.overwrite and self.out.exists():
            try:
                check_replaceable(self.out)
            except DatasetError as err:
                raise self._keep(str(err)) from None
            old = self.out.parent / f"{self.out.name}.old-{secrets.token_hex(4)}"
            os.replace(self.out, old)
            os.replace(self.tmp, self.out)
            shutil.rmtree(old, ignore_errors=True)
            return self.out
        if self.out.exists() or self.out.is_symlink():
            raise self._keep(f"{self.out} was created by another process while this one was writing")
        try:
            os.rename(self.tmp, self.out)  # never replaces a non-empty folder
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise self._keep(
                    f"{self.out} was created by another process while this one was writing"
                ) from None
            raise
        return self.out

    def _keep(self, why: str) -> DatasetError:
        """Move the finished LMDB to a free sibling name and say so (nothing is lost or replaced)."""
        kept = self.out.parent / f"{self.out.name}.new-{secrets.token_hex(3)}"
        os.replace(self.tmp, kept)
        return DatasetError(
            f"{why}; it was left untouched and the new LMDB ({self.count} samples) is at {kept}"
        )

    def abort(self) -> None:
        """Discard everything written so far (removes the temporary folder)."""
        if self._env is not None:
            self._env.close()
            self._env = None
        self._closed = True
        if getattr(self, "tmp", None) is not None:
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
