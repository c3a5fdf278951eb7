"""Weight I/O in one place: telling formats apart, reading safely, loading strictly, writing atomically.

* :func:`sniff_format` tells a file's format from its bytes (never its name): TorchScript archive,
  ``torch.save`` pickle (zip or legacy), safetensors.
* :func:`read_tensor_file` is the one reader. Every pickle (TorchScript's ``data.pkl`` included) goes through
  :func:`clip4str.safe_pickle.load_pickle`: only tensors and plain containers are built, no code from a file
  runs. CLIP files (:mod:`clip4str.clip.weights`), CLIP4STR checkpoints (:func:`read_checkpoint`) and the
  pretrained weights of a Hugging Face text encoder are all read by it.
* :func:`load_state_dict_strict` is the one loader: missing, unexpected and mis-shaped keys are named.
* :func:`save_model` writes the package's own format (``config.json`` + ``model.safetensors``) with
  :func:`atomic_write`, the one writer: a temporary sibling, fsync, rename, fsync of the folder.

Own format: a directory with ``config.json`` + ``model.safetensors``, or the ``model.safetensors`` file alone
(its metadata holds the same config). Official files (Lightning ``.ckpt``, ``.pt`` state dicts) are read here
and turned into a model by :mod:`clip4str.checkpoints`.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from clip4str.config import ConfigError, ModelConfig, parse_json
from clip4str.errors import CheckpointError, WriteError
from clip4str.files import OutputGuard, atomic_write
from clip4str.safe_pickle import load_pickle, module_tensors, plain

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "FileFormat",
    "atomic_write",
    "check_state_dict",
    "load_state_dict_strict",
    "read_checkpoint",
    "read_tensor_file",
    "save_model",
    "sniff_format",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_METADATA_KEY = "clip4str_config"
_FORMAT_VERSION = "1"

FileFormat = Literal["torchscript", "safetensors", "pickle", "unknown"]
# How a legacy torch.save stream written with pickle protocol 0 or 1 starts (its magic number).
_LEGACY_PROTOCOL_0_1 = b"L119547037146038801333356L\n."


# ------------------------------------------------------------------------------------------------ formats
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
    with a :class:`CheckpointError` that says so. A zip without ``data.pkl`` is ``'unknown'``. Raises
    :class:`CheckpointError` if the file does not exist.
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


# ------------------------------------------------------------------------------------------------ reading
def read_tensor_file(path: str | os.PathLike[str], *, allow_objects: bool = False) -> Any:
    """Load a weights file safely and return its raw content.

    TorchScript archives give their module's tensors (what ``torch.jit.load(path).state_dict()`` holds, read
    from the archive's data records without running its code), safetensors a dict of tensors, and
    ``torch.save`` files whatever they hold (tensors and plain containers only; zip files are
    memory-mapped). ``allow_objects`` turns other Python objects in a pickle (e.g. a Lightning file's
    hyper-parameters) into inert placeholders instead of refusing the file. Raises :class:`CheckpointError`
    naming the file for a missing, empty, truncated or foreign file, or a refused pickle.
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
    return load_pickle(p, allow_objects=allow_objects)


def _safetensors_config(path: Path) -> ModelConfig | None:
    """The ModelConfig kept in a safetensors file's metadata (None when it has none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get(_METADATA_KEY)
    except Exception as err:  # noqa: BLE001 - the safetensors reader's own error types
        raise CheckpointError(
            f"cannot read safetensors file {str(path)!r} (damaged or truncated?): {err}"
        ) from err
    return _config_from_json(text, path) if text else None


def _read_config_text(path: Path) -> str:
    """A model's ``config.json`` through the one regular-file reader (no FIFO or device, at most 16 MiB)."""
    from clip4str.files import MAX_CONFIG_BYTES, read_text_file

    return read_text_file(path, "model config", CheckpointError, "utf-8", MAX_CONFIG_BYTES)


def _config_from_json(text: str, source: Path) -> ModelConfig:
    try:
        data = parse_json(text, f"{source}: config")
    except ConfigError as err:
        raise CheckpointError(str(err)) from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: config must be a JSON object, got {type(data).__name__}")
    data.pop("format_version", None)
    try:
        return ModelConfig.from_dict(data)
    except ConfigError as err:
        raise CheckpointError(f"{source}: {err}") from err


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None, ModelConfig | None]:
    """Read a CLIP4STR file → (state dict, official hyper-parameters or None, own config or None).

    Own-format folders and safetensors files give their config; official Lightning ``.ckpt`` files their
    ``hyper_parameters`` (pickled Python objects in them are read as inert data); ``.pt`` state dicts neither.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        weights, config_file = path / WEIGHTS_NAME, path / CONFIG_NAME
        if not weights.is_file():
            raise CheckpointError(
                f"{path} is a directory without {WEIGHTS_NAME}; expected a clip4str model folder"
            )
        sd = read_tensor_file(weights)
        config = (
            _config_from_json(_read_config_text(config_file), config_file)
            if os.path.lexists(config_file)
            else _safetensors_config(weights)
        )
        if config is None:
            raise CheckpointError(f"{path} has no {CONFIG_NAME} and {WEIGHTS_NAME} carries no config")
        return sd, None, config
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty")
    kind = sniff_format(path)
    if kind == "safetensors":
        sd = read_tensor_file(path)
        config = _safetensors_config(path)
        sibling = path.with_name(CONFIG_NAME)
        if config is None and sibling.is_file():
            config = _config_from_json(_read_config_text(sibling), sibling)
        return sd, None, config
    if kind == "torchscript":
        raise CheckpointError(
            f"{path} is a TorchScript archive (like OpenAI's CLIP releases), not a CLIP4STR checkpoint; a bare "
            "CLIP file can start a training run (see `clip4str train`), not be read as a recognizer"
        )
    if kind != "pickle":
        raise CheckpointError(
            f"{path} is not a checkpoint: expected a Lightning .ckpt, a PyTorch .pt state dict or a clip4str "
            ".safetensors model"
        )
    obj = plain(read_tensor_file(path, allow_objects=True))
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict or Lightning checkpoint"
        )
    hparams = None
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        hparams = obj.get("hyper_parameters")
        sd = obj["state_dict"]
    elif "model" in obj and isinstance(obj["model"], Mapping):
        sd = obj["model"]
    else:
        sd = obj
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries {bad[:5]} are not tensors; this is not a state dict")
    sd = {re.sub(r"^(module\.|model\.)", "", k): v for k, v in sd.items()}
    return sd, dict(hparams) if isinstance(hparams, Mapping) else None, None


# ------------------------------------------------------------------------------------------------ loading
def _listed(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")


def load_state_dict_strict(
    module: nn.Module,
    state_dict: Mapping[str, Tensor],
    source: str = "",
    *,
    may_be_missing: Callable[[str], bool] | None = None,
    hint: str = "",
    assign: bool = False,
) -> list[str]:
    """Copy ``state_dict`` into ``module``; missing, unexpected or mis-shaped keys raise CheckpointError.

    ``may_be_missing(name)`` allows some of the module's tensors to be absent (they keep their
    initialisation); their names are returned. ``hint`` ends the error message (what may differ and how to
    fix it); ``assign`` replaces the module's tensors instead of copying into them (for a module built on
    the meta device).
    """
    own = module.state_dict()
    kept_fresh = check_state_dict(
        {k: v.shape for k, v in own.items()}, state_dict, source, may_be_missing=may_be_missing, hint=hint
    )
    module.load_state_dict(state_dict, strict=not kept_fresh, assign=assign)
    return kept_fresh


def check_state_dict(
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    state_dict: Mapping[str, Tensor],
    source: str = "",
    *,
    may_be_missing: Callable[[str], bool] | None = None,
    hint: str = "",
) -> list[str]:
    """Compare ``state_dict``'s names and shapes with ``expected`` (name → shape) without touching any
    tensor's data; raise CheckpointError naming missing, unexpected and mis-shaped keys (see
    :func:`load_state_dict_strict`). Returns the absent names ``may_be_missing`` allows."""
    absent = sorted(set(expected) - set(state_dict))
    kept_fresh = [k for k in absent if may_be_missing is not None and may_be_missing(k)]
    missing = [k for k in absent if k not in set(kept_fresh)]
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k])}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} mis-shaped key(s): {'; '.join(shapes[:8])}")
    if problems:
        where = f"{source}: " if source else ""
        raise CheckpointError(where + "weights do not fit the model: " + " | ".join(problems) + hint)
    return kept_fresh


# ------------------------------------------------------------------------------------------------ writing
def save_model(
    model: nn.Module,
    directory: str | Path,
    extra_metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
    guard: OutputGuard | None = None,
) -> Path:
    """Write a CLIP4STR model in the own format, atomically: ``directory/model.safetensors`` (config in its
    metadata too) and ``directory/config.json``. Returns ``directory``.

    ``dtype`` (e.g. ``torch.bfloat16``) stores the floating-point weights at that precision (half the size);
    loading always builds an fp32 model from them. A failed write raises
    :class:`~clip4str.errors.WriteError`; the previous files are then intact. With ``guard`` (a
    :class:`~clip4str.files.OutputGuard`) both files are written through it: no input or model file is
    written over, and an existing file only with its ``overwrite``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_text = model.config.to_json()
    metadata = {_METADATA_KEY: config_text, "format_version": _FORMAT_VERSION, **dict(extra_metadata or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    for name, write in (
        (WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata=metadata)),
        (CONFIG_NAME, lambda tmp: tmp.write_text(config_text + "\n", encoding="utf-8")),
    ):
        if guard is not None:
            guard.write(directory / name, write)  # under the option that claimed it
            continue
        try:
            atomic_write(directory / name, write)
        except Exception as err:  # noqa: BLE001 - OSError, or the safetensors writer's own error type
            from clip4str.files import write_failure

            raise WriteError(write_failure(directory / name, err)) from err
    return directory
