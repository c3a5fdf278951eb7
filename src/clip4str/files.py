"""Reading input files defensively: regular files only (never a FIFO, device or socket), bounded in size.

A path in a label file may be a symlink to ``/dev/zero`` or a FIFO named ``x.png``: reading it whole would
exhaust memory or block forever. :func:`read_regular_file` opens without blocking, checks the opened file
(so a swap between check and open cannot fool it) and reads at most a given number of bytes.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["MAX_IMAGE_BYTES", "MAX_TEXT_BYTES", "read_regular_file", "read_text_file", "write_failure"]

MAX_IMAGE_BYTES = 256 << 20  # one image file; word crops are kilobytes, scene photos megabytes
MAX_TEXT_BYTES = 4 << 30  # label files, vocabularies, configs (RBU's 6.5M labels take ~0.3 GB)


def _size_text(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def read_regular_file(
    path: str | os.PathLike[str],
    max_bytes: int = MAX_IMAGE_BYTES,
    what: str = "file",
    error: type[Exception] = OSError,
) -> bytes:
    """The bytes of ``path`` if it is a regular file (symlinks followed) of at most ``max_bytes``.

    Raises ``error`` (one line naming the path and what to do) for anything else: a missing file, a
    directory, a FIFO, a device, a socket, a file too large, or a read failure.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a directory, not a file") from None
    except OSError as err:
        raise error(f"cannot open {what} {path}: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise error(f"{what} {path} is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            kind = (
                "a FIFO"
                if stat.S_ISFIFO(info.st_mode)
                else "a device"
                if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                else "a socket"
                if stat.S_ISSOCK(info.st_mode)
                else "not a regular file"
            )
            raise error(f"{what} {path} is {kind}, not a regular file; refusing to read it")
        if info.st_size > max_bytes:
            raise error(
                f"{what} {path} is {_size_text(info.st_size)}, over the {_size_text(max_bytes)} limit; not read"
            )
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 24, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # grew while being read
                raise error(f"{what} {path} is over the {_size_text(max_bytes)} limit; not read")
        return b"".join(chunks)
    except OSError as err:
        if isinstance(err, error):
            raise
        raise error(f"cannot read {what} {path}: {err.strerror or err}") from None
    finally:
        os.close(fd)


def read_text_file(
    path: str | os.PathLike[str],
    what: str = "file",
    error: type[Exception] = OSError,
    encoding: str = "utf-8-sig",
    max_bytes: int = MAX_TEXT_BYTES,
) -> str:
    """Text of a regular file (see :func:`read_regular_file`); undecodable bytes raise ``error``."""
    data = read_regular_file(path, max_bytes, what, error)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        name = "UTF-8" if encoding.lower().startswith("utf-8") else encoding
        raise error(
            f"{what} {path} is not {name} text (line {line}: {err.reason}); save it as UTF-8"
        ) from None


def write_failure(path: Path, err: BaseException) -> str:
    """One line for a failed atomic write: what happened, that nothing was lost, what to do."""
    full = getattr(err, "errno", None) == errno.ENOSPC or "space" in str(err).lower()
    reason = "the disk is full" if full else f"the write failed ({err})"
    kept = "the previous one is intact" if path.exists() else "no earlier one existed"
    return (
        f"could not save {path}: {reason}; {kept} and nothing else was changed (free space and retry; a "
        "training run continues with --resume)"
    )
