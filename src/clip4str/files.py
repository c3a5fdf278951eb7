"""Files in and out, each through one guarded path.

**Input** — :func:`read_regular_file` / :func:`read_text_file`: regular files only (never a FIFO, device or
socket), bounded in size. A path in a label file may be a symlink to ``/dev/zero`` or a FIFO named ``x.png``:
reading it whole would exhaust memory or block forever. The reader opens without blocking, checks the opened
file (so a swap between check and open cannot fool it) and reads at most a given number of bytes. Every file
a user names (images, labels, boxes, configs, ground truth, charsets) is read through it.

**Output** — :class:`OutputGuard`: every file a command writes (reports, drawings, figures, exported models,
batch results) goes through one guard, which never writes over an input, a model file or a ground-truth
file, and never replaces a file this run did not create unless ``--overwrite`` was given. Writes are atomic
(:func:`atomic_write`): a temporary sibling, fsync, then a rename; without ``overwrite`` the new file is
linked into place, so a file that appears meanwhile is not replaced either.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from clip4str.errors import Clip4strError, OutputError

__all__ = [
    "MAX_BOX_FILE_BYTES",
    "MAX_CONFIG_BYTES",
    "MAX_IMAGE_BYTES",
    "MAX_TEXT_BYTES",
    "OutputGuard",
    "atomic_write",
    "read_regular_file",
    "read_text_file",
    "write_failure",
]

MAX_IMAGE_BYTES = 256 << 20  # one image file; word crops are kilobytes, scene photos megabytes
MAX_TEXT_BYTES = 4 << 30  # label files and vocabularies (RBU's 6.5M labels take ~0.3 GB)
MAX_CONFIG_BYTES = 16 << 20  # configs, charsets, one photo's ground truth
MAX_BOX_FILE_BYTES = 256 << 20  # --boxes files (the --detect --json output of ~100k photos)


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


# ------------------------------------------------------------------------------------------------ writing
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the rename is still atomic
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _link_new(tmp: Path, target: Path) -> None:
    """Put ``tmp`` at ``target`` only if nothing is there (FileExistsError otherwise), atomically where the
    file system has hard links."""
    try:
        os.link(tmp, target, follow_symlinks=False)
        return
    except FileExistsError:
        raise
    except OSError as err:  # no hard links here (some network or FAT file systems): check, then rename
        if err.errno not in (
            errno.EPERM,
            errno.ENOTSUP,
            errno.EOPNOTSUPP,
            errno.EMLINK,
            errno.EXDEV,
            errno.ENOSYS,
        ):
            raise
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "file exists", str(target))
    os.replace(tmp, target)


def atomic_write(
    target: str | os.PathLike[str], write: Callable[[Path], None], *, replace: bool = True
) -> Path:
    """Call ``write(tmp_path)`` for a temporary sibling of ``target``, fsync it, move it onto ``target`` and
    fsync the folder: a kill at any moment leaves the old file or the new one, never a torn one.

    ``replace=False`` never replaces anything at ``target``: a file there (even one that appeared during
    the write) raises FileExistsError and is left alone. An exception from ``write`` (or the disk) leaves
    ``target`` untouched and is raised unchanged. The new file gets the usual permissions (0666 less umask).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # the target's suffix last, so writers that infer the format from the name (PIL, matplotlib) still can
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)
        if replace:
            os.replace(tmp, target)
        else:
            _link_new(tmp, target)
        try:
            _fsync(target.parent)  # make the rename itself durable
        except OSError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return target


class OutputGuard:
    """The one guarded path for every file a command writes.

    Rules, checked when a target is claimed and again when it is written:

    * never write over a protected path: an input (:meth:`protect`), a model file or folder
      (:meth:`protect_model`, also the shipped weights and the download cache) or a ground-truth file, even
      with ``overwrite``; a protected folder protects every file already in it;
    * never replace an existing file that this guard did not write, unless ``overwrite`` (``--overwrite``);
    * two options never name the same file; a folder is never a file target;
    * a target's folder must be creatable and writable; writes are atomic (:func:`atomic_write`).

    Every refusal is an :class:`~clip4str.errors.OutputError` (one line naming the option, the path, why,
    and what to do); a failed write is a :class:`~clip4str.errors.WriteError`.

    Use: build one per command, protect the inputs, claim every target before the slow work (model load),
    then write through the guard::

        guard = OutputGuard("clip4str eval", overwrite=args.overwrite)
        guard.protect(args.labels, "the label file (--labels)")
        guard.protect_model(args.model)
        guard.claim(args.out, "--out")                       # fails now, before the model loads
        ...
        guard.write_text(args.out, report, "--out")          # or write_bytes / save_image / write(path, fn)

    ``write(path, writer, option)`` calls ``writer(tmp_path)`` for any format (safetensors, ONNX, ...).
    :meth:`claim_folder` checks (and makes) a folder that files are written into, e.g. ``--draw DIR``.
    """

    def __init__(self, command: str = "clip4str", *, overwrite: bool = False) -> None:
        self.command = command
        self.overwrite = overwrite
        self._inodes: dict[tuple[int, int], str] = {}  # protected files: (device, inode) → what
        self._folders: list[tuple[Path, str]] = []  # protected folders (resolved) → what
        self._claimed: dict[Path, str] = {}  # resolved target → the option that claimed it
        self._created: set[Path] = set()  # targets this guard wrote

    # -------------------------------------------------------------------------------------- protecting
    def protect(self, path: str | os.PathLike[str] | None, what: str) -> None:
        """Never write over ``path`` (a file, or every file already in a folder). ``what`` names it in
        errors, e.g. ``"an input image"`` or ``"the label file (--labels)"``. A missing path is ignored."""
        if path is None or str(path) == "":
            return
        try:
            info = os.stat(path)
            resolved = Path(path).resolve()
        except (OSError, RuntimeError, ValueError):
            return
        if stat.S_ISDIR(info.st_mode):
            self._folders.append((resolved, what))
            try:  # the files directly in it, so a hard link to one elsewhere is seen too
                with os.scandir(path) as entries:
                    for _, entry in zip(range(4096), entries):
                        if entry.is_file():
                            child = entry.stat()
                            self._inodes.setdefault((child.st_dev, child.st_ino), what)
            except OSError:
                pass
        else:
            self._inodes.setdefault((info.st_dev, info.st_ino), what)

    def protect_all(self, paths: Iterable[str | os.PathLike[str]], what: str) -> None:
        """:meth:`protect` each of ``paths``."""
        for path in paths:
            self.protect(path, what)

    def protect_model(self, spec: str | os.PathLike[str] | None, option: str = "--model") -> None:
        """Protect a model given by name or path: the file (and a ``config.json`` beside it, which the
        reader also uses) or the folder; always also the shipped weights and the download cache."""
        what = f"a file of the model ({option})"
        self.protect(Path(__file__).parent / "weights", "a file of a shipped model")
        try:
            from clip4str.hub import cache_root

            self.protect(cache_root(), "a file in the model download cache")
        except Exception:  # noqa: BLE001 - no cache location: nothing there to protect
            pass
        if spec is None:
            return
        path = Path(spec).expanduser()
        self.protect(path, what)
        if path.is_file():
            self.protect(path.with_name("config.json"), what)

    # -------------------------------------------------------------------------------------- checking
    def _refuse(self, option: str, path: Path, why: str) -> OutputError:
        return OutputError(f"{option} {path}: {why}")

    def _protected(self, target: Path) -> str | None:
        try:
            info = os.stat(target)
        except (OSError, ValueError):
            info = None
        if info is not None:
            what = self._inodes.get((info.st_dev, info.st_ino))
            if what is not None:
                return what
        if info is not None or os.path.lexists(target):
            resolved = target.resolve()
            for folder, what in self._folders:
                if resolved == folder or resolved.is_relative_to(folder):
                    return what
        return None

    def _check(self, target: Path, option: str) -> Path:
        """Raise OutputError if ``target`` may not be written now; return its resolved path."""
        what = self._protected(target)
        if what is not None:
            raise self._refuse(
                option,
                target,
                f"is {what}; it would be overwritten (--overwrite never allows that); write elsewhere",
            )
        if target.is_dir():
            raise self._refuse(option, target, "is a folder; name a file to write")
        resolved = target.resolve()
        if os.path.lexists(target) and resolved not in self._created and not self.overwrite:
            raise self._refuse(
                option,
                target,
                "already exists and this run did not write it; give --overwrite to replace it, or choose "
                "another path",
            )
        return resolved

    def _check_folder_writable(self, folder: Path, option: str, shown: Path) -> None:
        """``folder`` (or its nearest existing ancestor) must be a folder we can create files in."""
        probe = folder
        while not probe.exists() and probe != probe.parent:
            if os.path.lexists(probe):  # a dangling link
                break
            probe = probe.parent
        if not probe.is_dir():
            raise self._refuse(option, shown, f"cannot be written: {probe} is not a folder")
        try:
            fd, name = tempfile.mkstemp(prefix=".clip4str-probe.", dir=probe)
            os.close(fd)
            os.unlink(name)
        except OSError as err:
            raise self._refuse(
                option, shown, f"cannot be written: {probe} is not writable ({err.strerror or err})"
            ) from None

    def claim(self, path: str | os.PathLike[str], option: str = "output", *, parents: bool = False) -> Path:
        """Check now (before the slow work) that ``path`` may be written, and reserve it for ``option``.

        Raises :class:`~clip4str.errors.OutputError` when it is protected, a folder, exists (without
        ``overwrite``), was claimed by another option, or its folder is missing (unless ``parents``: then
        it is made when the file is written) or cannot be written. Returns the path.
        """
        target = Path(path)
        resolved = self._check(target, option)
        other = self._claimed.get(resolved)
        if other is not None:
            same = f"{other} names the same file" if other != option else "this file is named twice"
            raise self._refuse(option, target, f"{same}; give each output its own path")
        if not parents and not target.parent.is_dir():
            problem = "is not a folder" if os.path.lexists(target.parent) else "does not exist"
            raise self._refuse(
                option,
                target,
                f"cannot be written: {target.parent} {problem}; create it or choose another path",
            )
        self._check_folder_writable(target.parent, option, target)
        self._claimed[resolved] = option
        return target

    def claim_folder(self, path: str | os.PathLike[str], option: str = "output folder") -> Path:
        """Check (and make) a folder that outputs are written into: it must be a folder or creatable, and
        writable. Files in it are still claimed one by one. Returns the path."""
        folder = Path(path)
        if os.path.lexists(folder) and not folder.is_dir():
            raise self._refuse(option, folder, "is not a folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise self._refuse(option, folder, f"cannot create the folder ({err.strerror or err})") from None
        self._check_folder_writable(folder, option, folder)
        return folder

    # -------------------------------------------------------------------------------------- writing
    def write(
        self, path: str | os.PathLike[str], writer: Callable[[Path], None], option: str | None = None
    ) -> Path:
        """Write ``path`` through ``writer(tmp_path)`` (claiming it first if it was not), atomically; a
        file that appears meanwhile is not replaced. ``option`` names it in errors (default: the option
        that claimed it). Returns the path."""
        from clip4str.errors import WriteError

        target = Path(path)
        resolved = target.resolve()
        if resolved not in self._claimed:
            option = option or "output"
            self.claim(target, option, parents=True)
        else:
            option = option or self._claimed[resolved]
            self._check(target, option)
        replace = self.overwrite or resolved in self._created
        try:
            atomic_write(target, writer, replace=replace)
        except FileExistsError:
            raise self._refuse(
                option, target, "appeared while it was being written and was left alone; choose another path"
            ) from None
        except (OutputError, Clip4strError, ValueError):
            raise  # the writer's own report on its input, unchanged
        except OSError as err:
            if err.errno is None:  # raised by the writer with a message of its own, not by the disk
                raise
            full = err.errno == errno.ENOSPC
            raise WriteError(
                f"{option} {target}: could not write it ({'the disk is full' if full else err.strerror or err}); "
                "nothing there was changed"
            ) from err
        except Exception as err:  # noqa: BLE001 - a writer's own error type (safetensors, PIL)
            full = getattr(err, "errno", None) == errno.ENOSPC
            reason = "the disk is full" if full else (getattr(err, "strerror", None) or str(err))
            raise WriteError(
                f"{option} {target}: could not write it ({reason}); nothing there was changed"
            ) from err
        self._created.add(resolved)
        return target

    def write_bytes(self, path: str | os.PathLike[str], data: bytes, option: str | None = None) -> Path:
        """:meth:`write` of ``data``."""
        return self.write(path, lambda tmp: tmp.write_bytes(data), option)

    def write_text(self, path: str | os.PathLike[str], text: str, option: str | None = None) -> Path:
        """:meth:`write` of ``text`` as UTF-8 (``\\n`` line ends kept as they are)."""
        return self.write(path, lambda tmp: tmp.write_bytes(text.encode("utf-8", "surrogateescape")), option)

    def save_image(
        self, image: object, path: str | os.PathLike[str], option: str | None = None, **params: object
    ) -> Path:
        """:meth:`write` of a PIL image in the format its suffix names (``params`` go to ``Image.save``)."""
        from PIL import Image

        target = Path(path)
        fmt = Image.registered_extensions().get(target.suffix.lower())
        if fmt is None:
            raise self._refuse(
                option or "output", target, "has no image suffix Pillow knows (use .png, .jpg or .webp)"
            )
        return self.write(target, lambda tmp: image.save(tmp, format=fmt, **params), option)  # type: ignore[attr-defined]
