"""Read CLIP weight files into one canonical OpenAI-layout state dict, telling formats apart by content.

Accepted: OpenAI's TorchScript archives (``ViT-B-16.pt``), ``torch.save`` files holding ``{'model': sd}``,
``{'state_dict': sd}`` or a plain state dict (OpenCLIP's ``open_clip_pytorch_model.bin``), and
``.safetensors`` files. The format comes from the bytes (zip entries, pickle opcode, safetensors header),
never from the file name. Files are read by :func:`clip4str.weights.read_tensor_file` (every pickle,
TorchScript's ``data.pkl`` included, through :func:`clip4str.safe_pickle.load_pickle`): no code from a file
runs, ``torch.jit.load`` is never called.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from clip4str.clip.model import CLIP, check_clip_keys, infer_clip_config, round_like_official_fp16
from clip4str.errors import CheckpointError
from clip4str.weights import FileFormat, load_state_dict_strict, read_tensor_file, sniff_format

__all__ = ["sniff_format", "read_tensor_file", "load_clip_state_dict", "load_clip_model", "FileFormat"]

_TORCHSCRIPT_EXTRAS = ("input_resolution", "context_length", "vocab_size")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


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
    load_state_dict_strict(model, sd, f"{str(path)!r} (CLIP inferred from its shapes)", assign=True)
    return model
