"""The one reader of pickled files: no code from a file ever runs.

Every pickle the package reads goes through :func:`load_pickle`: ``torch.save`` archives (zip), legacy
``torch.save`` streams (PyTorch < 1.6, or ``_use_new_zipfile_serialization=False``) and the ``data.pkl``
record of TorchScript archives (OpenAI's CLIP releases). Neither ``pickle.load``, ``torch.load`` nor
``torch.jit.load`` is used: a restricted :class:`pickle.Unpickler` reads the whole stream (any protocol),
tensors are rebuilt here from the archive's data records, and a global named by the file is looked up
only in a fixed allow-list (tensor rebuilders, storage types, dtypes, plain containers). Any other class
is refused, or, with ``allow_objects=True``, replaced by an inert :class:`Opaque` placeholder that only
records its pickled state (how Lightning checkpoints' OmegaConf hyper-parameters are read).
"""

from __future__ import annotations

import math
import mmap
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from clip4str.errors import CheckpointError

__all__ = ["Opaque", "UnsafePickleError", "load_pickle", "plain", "module_tensors"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_MAX_COMPRESSED_PICKLE = 256 << 20  # a deflated data.pkl may expand to at most this many bytes
_MAX_REPEATED_VIEW = 1 << 20  # a tensor may view its storage repeatedly (stride 0) only up to this size


class UnsafePickleError(CheckpointError):
    """A pickle names a Python global outside the allow-list (only raised with ``allow_objects=False``)."""


class Opaque:
    """Inert stand-in for a class the file pickled: it records what the pickle gives it and runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.state: Any = None
        self.items: dict[Any, Any] = {}
        self.list: list[Any] = []

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.list.append(value)

    def extend(self, values: Any) -> None:
        self.list.extend(values)

    def __call__(self, *args: Any, **kwargs: Any) -> Opaque:
        return Opaque(*args)

    def __repr__(self) -> str:
        return "Opaque()"


# ------------------------------------------------------------------------------------------------ tensors
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}


class _StorageType:
    """What ``torch.FloatStorage`` & co. resolve to: only their element type (not callable)."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _Storage:
    """Bytes of one storage record (a 1-D uint8 tensor over them), its element type and, for a view of
    another storage (legacy files), the view's first byte."""

    __slots__ = ("data", "dtype", "byte_offset")

    def __init__(self, data: Tensor, dtype: torch.dtype, byte_offset: int = 0) -> None:
        self.data, self.dtype, self.byte_offset = data, dtype, byte_offset


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list, torch.Size)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise pickle.UnpicklingError(
            f"tensor {what} must be a tuple of non-negative integers, got {value!r}"[:200]
        )
    return tuple(value)


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: Any = None) -> Tensor:
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without a storage record")
    dtype = storage.dtype if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not isinstance(offset, int) or offset < 0:
        raise pickle.UnpicklingError("a tensor with an invalid dtype or storage offset")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} differ in length")
    item = dtype.itemsize
    offset += storage.byte_offset // item
    extent = 0 if 0 in size else offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if extent * item > storage.data.numel():
        raise pickle.UnpicklingError(
            f"a tensor of size {size} reaches past the end of its storage record ({storage.data.numel()} bytes)"
        )
    logical = math.prod(size) * item
    if logical > max(storage.data.numel(), _MAX_REPEATED_VIEW):
        raise pickle.UnpicklingError(
            f"a tensor of size {size} and stride {stride} views its {storage.data.numel()}-byte storage "
            f"record as {logical:,} bytes (zero or overlapping strides); refused, as copying it would take "
            "that much memory"
        )
    out = torch.empty(0, dtype=dtype)
    if storage.data.numel():
        out.set_(storage.data.untyped_storage(), offset, size, stride)
    else:
        out = out.new_empty(size)
    return out


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> Tensor:
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v3(
    storage: Any, offset: Any, size: Any, stride: Any, _grad: Any, _hooks: Any, dtype: Any, *_: Any
) -> Tensor:
    return _tensor(storage, offset, size, stride, dtype)


def _rebuild_parameter(data: Any, *_: Any) -> Tensor:
    if not isinstance(data, Tensor):
        raise pickle.UnpicklingError("a parameter without tensor data")
    return data


_REBUILDERS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


def _rebuild_from_type_v2(func: Any, _new_type: Any, args: Any, _state: Any) -> Tensor:
    if func not in _REBUILDERS.values() or not isinstance(args, tuple):
        raise pickle.UnpicklingError("a tensor subclass rebuilt by an unknown function")
    return func(*args)


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin-1 byte strings")
    return text.encode("latin-1")


def _passthrough(value: Any, *_: Any) -> Any:  # torch.jit._pickle.restore_type_tag / build_*list
    return value


_ALLOWED: dict[tuple[str, str], Any] = {
    **_REBUILDERS,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch", "Tensor"): Tensor,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): _latin1_bytes,
    ("torch.jit._pickle", "restore_type_tag"): _passthrough,
    ("torch.jit._pickle", "build_intlist"): _passthrough,
    ("torch.jit._pickle", "build_doublelist"): _passthrough,
    ("torch.jit._pickle", "build_boollist"): _passthrough,
    ("torch.jit._pickle", "build_tensorlist"): _passthrough,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, source: str, allow_objects: bool, storages: Any) -> None:
        super().__init__(file, encoding="utf-8")
        self.source, self.allow_objects, self.storages = source, allow_objects, storages

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is not None:
            return allowed
        if module in ("torch", "torch.storage", "torch.cuda") and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if self.allow_objects:
            return Opaque
        raise UnsafePickleError(
            f"{self.source} holds Python objects ({module}.{name}) other than tensors and plain containers, "
            "which clip4str refuses to unpickle; if you trust the file, re-save its state dict with "
            "torch.save(state_dict, path)"
        )

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:80]!r}")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"invalid storage record {str(pid)[:80]!r}")
        view = pid[5] if len(pid) > 5 else None
        return self.storages(str(key), storage_type.dtype, numel, view)


# ------------------------------------------------------------------------------------------------ formats
def _bytes_tensor(buffer: Any, count: int = -1, offset: int = 0) -> Tensor:
    """A uint8 tensor sharing ``buffer``'s memory (its storage cannot grow)."""
    if count == 0 or len(buffer) == 0:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(buffer, dtype=torch.uint8, count=count, offset=offset)


def _zip_reader(archive: zipfile.ZipFile, prefix: str, fileobj: BinaryIO):
    """``storages(key, dtype, numel, view)`` for a zip archive: records memory-mapped (copy on write)."""
    mapped = mmap.mmap(fileobj.fileno(), 0, access=mmap.ACCESS_COPY)
    cache: dict[str, Tensor] = {}

    def storages(key: str, dtype: torch.dtype, numel: int, _view: Any) -> _Storage:
        if key not in cache:
            name = f"{prefix}data/{key}"
            try:
                info = archive.getinfo(name)
            except KeyError:
                raise pickle.UnpicklingError(f"storage record {name!r} is missing from the archive") from None
            if info.compress_type != zipfile.ZIP_STORED:
                raise pickle.UnpicklingError(
                    f"storage record {name!r} is compressed (PyTorch never does this)"
                )
            header = info.header_offset
            if mapped[header : header + 4] != b"PK\x03\x04":
                raise pickle.UnpicklingError(f"storage record {name!r} has a damaged zip header")
            name_len, extra_len = struct.unpack("<HH", mapped[header + 26 : header + 30])
            start = header + 30 + name_len + extra_len
            if start + info.file_size > len(mapped):
                raise pickle.UnpicklingError(f"storage record {name!r} reaches past the end of the file")
            cache[key] = _bytes_tensor(mapped, info.file_size, start)
        data = cache[key]
        nbytes = numel * dtype.itemsize
        if nbytes > data.numel():
            raise pickle.UnpicklingError(
                f"storage record {key!r} holds {data.numel()} bytes, the pickle expects {nbytes}"
            )
        return _Storage(data, dtype)

    return storages


def _load_zip(path: Path, f: BinaryIO, allow_objects: bool) -> Any:
    try:
        archive = zipfile.ZipFile(f)
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise CheckpointError(
            f"{path} is a damaged or truncated zip archive (incomplete download?); re-download it ({err})"
        ) from err
    pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
    if len(pickles) != 1:
        raise CheckpointError(f"{path} is a zip archive without exactly one data.pkl: not a PyTorch file")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = f"{prefix}byteorder"
    if byteorder in names and archive.read(byteorder).strip() not in (b"little", b""):
        raise CheckpointError(
            f"{path} was written on a big-endian machine; re-save it on a little-endian one"
        )
    info = archive.getinfo(pickles[0])
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > _MAX_COMPRESSED_PICKLE:
        raise CheckpointError(f"{path}: its compressed data.pkl expands to {info.file_size} bytes; refused")
    storages = _zip_reader(archive, prefix, f)
    with archive.open(info) as stream:
        return _Unpickler(stream, str(path), allow_objects, storages).load()


def _load_legacy(path: Path, f: BinaryIO, allow_objects: bool) -> Any:
    size = os.fstat(f.fileno()).st_size

    def header(expected: Any, what: str) -> Any:
        value = _Unpickler(f, str(path), False, _no_storages).load()
        if expected is not None and value != expected:
            raise CheckpointError(f"{path} is not a PyTorch file ({what} does not match)")
        return value

    header(_LEGACY_MAGIC, "magic number")
    header(_LEGACY_PROTOCOL, "protocol version")
    info = header(None, "system info")
    if not isinstance(info, Mapping) or info.get("little_endian") is not True:
        raise CheckpointError(
            f"{path} was written on a big-endian machine; re-save it on a little-endian one"
        )
    roots: dict[str, tuple[Tensor, torch.dtype, int]] = {}
    claimed = 0  # bytes of all storages so far: together they must fit in the file, as they follow the pickle

    def storages(key: str, dtype: torch.dtype, numel: int, view: Any) -> _Storage:
        nonlocal claimed
        item = dtype.itemsize
        if key not in roots:
            claimed += 8 + numel * item  # each storage is its element count, then its bytes
            if claimed > size:
                raise pickle.UnpicklingError(
                    f"its storages ({len(roots) + 1} so far) add up to {claimed:,} bytes, more than the "
                    f"file's {size:,}"
                )
            roots[key] = (_bytes_tensor(bytearray(numel * item)), dtype, numel)
        data = roots[key][0]
        if view is None:
            return _Storage(data, dtype)
        if not (
            isinstance(view, tuple)
            and len(view) == 3
            and all(isinstance(v, int) and v >= 0 for v in view[1:])
            and (view[1] + view[2]) * item <= data.numel()
        ):
            raise pickle.UnpicklingError("invalid storage view")
        return _Storage(data, dtype, view[1] * item)

    obj = _Unpickler(f, str(path), allow_objects, storages).load()
    keys = _Unpickler(f, str(path), False, _no_storages).load()
    if not isinstance(keys, list) or set(map(str, keys)) != set(roots):
        raise CheckpointError(f"{path}: the list of storages does not match the pickle (damaged file?)")
    for key in map(str, keys):
        data, dtype, numel = roots[key]
        count = f.read(8)
        if len(count) != 8 or struct.unpack("<q", count)[0] != numel:
            raise CheckpointError(f"{path}: storage {key!r} is truncated or damaged")
        if data.numel() and f.readinto(memoryview(data.numpy())) != data.numel():
            raise CheckpointError(f"{path} is truncated (storage {key!r} ends early); re-download it")
    return obj


def _no_storages(*_: Any) -> Any:
    raise pickle.UnpicklingError("a tensor where none is expected")


def load_pickle(
    path: str | os.PathLike[str], *, allow_objects: bool = False, torchscript: bool = False
) -> Any:
    """Read a pickled file without running any of its code; tensors on the CPU.

    Args:
        path: a ``torch.save`` file (zip or legacy stream) or a TorchScript archive.
        allow_objects: replace classes outside the allow-list with :class:`Opaque` placeholders instead of
            raising :class:`UnsafePickleError`.
        torchscript: the file is a TorchScript archive: its module tree comes back as :class:`Opaque`
            objects (see :func:`module_tensors`); implies ``allow_objects``.

    Raises:
        CheckpointError: naming the file, for a damaged, truncated or foreign file or a refused global.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
            f.seek(0)
            if is_zip:
                return _load_zip(path, f, allow_objects or torchscript)
            return _load_legacy(path, f, allow_objects)
    except CheckpointError:
        raise
    except RecursionError as err:
        raise CheckpointError(f"{path}: its pickle is nested too deeply to read") from err
    except MemoryError as err:
        raise CheckpointError(f"{path}: not enough memory to read it") from err
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, RuntimeError, KeyError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} could not be read (damaged or truncated? re-download it): {reason}"
        ) from err
    except OSError as err:
        raise CheckpointError(f"{path} could not be read: {err}") from err


# ------------------------------------------------------------------------------------------------ results
def plain(obj: Any, _depth: int = 0) -> Any:
    """Turn placeholders back into plain dicts/lists where their pickled state allows (OmegaConf too)."""
    if _depth > 200:
        raise CheckpointError("a pickled object is nested more than 200 levels deep")
    if isinstance(obj, Opaque):
        state = obj.state
        if isinstance(state, dict) and "_content" in state:  # OmegaConf containers
            return plain(state["_content"], _depth + 1)
        if isinstance(state, dict) and "_val" in state:  # OmegaConf value nodes
            return plain(state["_val"], _depth + 1)
        if obj.items:  # dict subclasses (Lightning's AttributeDict)
            return {k: plain(v, _depth + 1) for k, v in obj.items.items()}
        if obj.list:
            return [plain(v, _depth + 1) for v in obj.list]
        return plain(state, _depth + 1) if state is not None else None
    if isinstance(obj, Mapping):
        return {k: plain(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v, _depth + 1) for v in obj)
    return obj


def module_tensors(root: Any, source: str) -> dict[str, Tensor]:
    """State dict of a TorchScript module tree read by :func:`load_pickle`: every tensor attribute, dotted."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        prefix, node = stack.pop()
        state = node.state if isinstance(node, Opaque) else None
        if id(node) in seen or not isinstance(state, Mapping):
            continue
        seen.add(id(node))
        for name, value in state.items():
            if not isinstance(name, str):
                continue
            if isinstance(value, Tensor):
                out[prefix + name] = value
            elif isinstance(value, Opaque):
                stack.append((f"{prefix}{name}.", value))
    if not out:
        raise CheckpointError(f"{source} is a TorchScript archive without module weights")
    return out
