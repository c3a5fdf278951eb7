"""Read CLIP weight files into one canonical OpenAI-layout state dict, telling formats apart by content.

Accepted: OpenAI's TorchScript archives (``ViT-B-16.pt``), ``torch.save`` files holding ``{'model': sd}``,
``{'state_dict': sd}`` or a plain state dict (OpenCLIP's ``open_clip_pytorch_model.bin``), and
``.safetensors`` files. The format comes from the bytes (zip entries, pickle opcode, safetensors header),
never from the file name. Every pickle (TorchScript's ``data.pkl`` included) is read by
:func:`clip4str.safe_pickle.load_pickle`: no code from a file runs, ``torch.jit.load`` is never called.

:func:`sniff_format` and :func:`read_tensor_file` are format-level helpers reused for CLIP4STR checkpoints.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from clip4str.clip.model import CLIP, check_clip_keys, infer_clip_config, round_like_official_fp16
from clip4str.errors import CheckpointError
from clip4str.safe_pickle import load_pickle, module_tensors

__all__ = ["sniff_format", "read_tensor_file", "load_clip_state_dict", "load_clip_model", "FileFormat"]

FileFormat = Literal["torchscript", "safetensors", "pickle", "unknown"]

# Entries of OpenAI's TorchScript archives that are not weights.
_TORCHSCRIPT_EXTRAS = ("input_resolution", "context_length", "vocab_size")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# How a legacy torch.save stream written with pickle protocol 0 or 1 starts (its magic number).
_LEGACY_PROTOCOL_0_1 = b"L119547037146038801333356L\n."


def _existing_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"weights file {str(p)!r} does not exist")
    if not p.is_file():
        raise CheckpointError(f"weights path {str(p)!r} is not a file")
    return p


def _zip_names(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError):
        return None


def sniff_format(path: str | os.PathLike[str]) -> FileFormat:
    """Format of a weights file from its content: ``'torchscript'`` (zip with ``code/`` or
    ``constants.pkl``), ``'pickle'`` (``torch.save``: zip or legacy pickle), ``'safetensors'`` or ``'unknown'``.

    A zip whose directory cannot be read (e.g. truncated) is reported as ``'pickle'``; reading it then fails
    with a :class:`CheckpointError` that says so. A zip without ``data.pkl`` is ``'unknown'``. Raises :class:`CheckpointError` if the file does not exist.
    """
    p = _existing_file(path)
    size = p.stat().st_size
    with p.open("rb") as f:
        head = f.read(32)
    if head.startswith(b"PK\x03\x04"):
        names = _zip_names(p)
        if names is None:
            return "pickle"
        for name in names:
            parts = name.split("/")
            if (len(parts) > 2 and parts[1] == "code") or parts[-1] == "constants.pkl":
                return "torchscript"
        return "pickle" if any(name.endswith("data.pkl") for name in names) else "unknown"
    if (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or head.startswith(_LEGACY_PROTOCOL_0_1):
        return "pickle"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    return "unknown"


def _describe_unknown(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(256)
    if not head:
        return "the file is empty (0 bytes); re-download it"
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive without PyTorch data (no data.pkl entry)"
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the weights; fetch the real file (git lfs pull)"
    kinds = {
        b"\x89PNG": "a PNG image",
        b"\xff\xd8\xff": "a JPEG image",
        b"\x1f\x8b": "a gzip file",
        b"%PDF": "a PDF document",
    }
    for magic, kind in kinds.items():
        if head.startswith(magic):
            return f"it is {kind}"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html")):
        return "it is an HTML page (a failed download?)"
    try:
        head.decode("utf-8")
        return f"it is a text file starting with {head[:40].decode('utf-8', 'replace')!r}"
    except UnicodeDecodeError:
        return f"its first bytes {head[:8].hex()} match no known format"


def read_tensor_file(path: str | os.PathLike[str]) -> Any:
    """Load a weights file safely and return its raw content.

    TorchScript archives give their module's tensors (what ``torch.jit.load(path).state_dict()`` holds, read
    from the archive's data records without running its code), safetensors a dict of tensors, and
    ``torch.save`` files whatever they hold (tensors and plain containers only; zip files are
    memory-mapped). Raises :class:`CheckpointError` naming the file for a missing, empty, truncated or
    foreign file, or a pickle holding objects other than tensors and plain containers.
    """
    p = _existing_file(path)
    fmt = sniff_format(p)
    if fmt == "unknown":
        raise CheckpointError(
            f"{str(p)!r} is not a weights file (TorchScript, torch.save or safetensors): "
            f"{_describe_unknown(p)}"
        )
    if fmt == "torchscript":  # read as data: the archive's code is never compiled or run
        return module_tensors(load_pickle(p, torchscript=True), repr(str(p)))
    if fmt == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as err:
            raise CheckpointError(
                f"cannot read safetensors file {str(p)!r} (damaged or truncated?): {err}"
            ) from err
    return load_pickle(p)


def _unwrap_state_dict(obj: Any, source: str) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict of tensors")
    sd = dict(obj)
    for prefix in _WRAPPER_PREFIXES:
        if sd and all(isinstance(k, str) and k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def load_clip_state_dict(path: str | os.PathLike[str], prefix: str = "") -> dict[str, Tensor]:
    """OpenAI-layout CLIP state dict from any supported file; dtypes as stored (OpenAI: fp16).

    ``prefix`` extracts the CLIP inside a larger state dict (``'clip_model.'`` for a CLIP4STR checkpoint);
    the prefix is removed from the returned keys.

    Drops TorchScript's ``input_resolution``/``context_length``/``vocab_size`` and non-persistent
    ``attn_mask`` entries, strips a ``module.`` prefix, and checks the keys (:func:`check_clip_keys`): a
    non-CLIP dict, a ResNet CLIP, a Hugging Face ``transformers`` CLIP or a CLIP4STR checkpoint raise
    :class:`CheckpointError`.
    """
    source = repr(str(path))
    sd = _unwrap_state_dict(read_tensor_file(path), source)
    if prefix:
        sd = {k[len(prefix) :]: v for k, v in sd.items() if isinstance(k, str) and k.startswith(prefix)}
        if not sd:
            raise CheckpointError(f"{source} has no keys starting with prefix {prefix!r}")
    for key in _TORCHSCRIPT_EXTRAS:
        sd.pop(key, None)
    sd = {k: v for k, v in sd.items() if not (isinstance(k, str) and k.split(".")[-1] == "attn_mask")}
    check_clip_keys(sd.keys(), source=source)
    for key, value in sd.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
    return sd


def load_clip_model(
    path: str | os.PathLike[str],
    activation: str = "quick_gelu",
    head_width: int = 64,
    official_fp16_rounding: bool = True,
) -> CLIP:
    """Build a float32 :class:`CLIP` from a weights file, sizes inferred from the shapes.

    ``official_fp16_rounding`` reproduces the original ``clip.load`` (conv/linear/attention weights and the
    projections rounded to fp16, see :func:`round_like_official_fp16`); it only matters for fp32 files.
    """
    sd = load_clip_state_dict(path)
    cfg = infer_clip_config(sd, activation=activation, head_width=head_width)
    sd = round_like_official_fp16(sd) if official_fp16_rounding else {k: v.float() for k, v in sd.items()}
    with torch.device("meta"):
        model = CLIP(cfg)
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"{str(path)!r} does not fit the CLIP inferred from its shapes: {err}") from err
    return model
