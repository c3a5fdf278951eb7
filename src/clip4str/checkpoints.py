"""Reading and writing CLIP4STR weights.

Formats read, told apart by content (never by file name):

* the package's own format: a directory with ``config.json`` + ``model.safetensors``, or the
  ``model.safetensors`` file alone (its metadata holds the same config);
* official Lightning ``.ckpt`` files (``state_dict`` + ``hyper_parameters``);
* official ``.pt`` files holding a plain state dict or ``{'state_dict': ...}``.

Official files are converted to a :class:`~clip4str.config.ModelConfig`: sizes from the weights, charset and
decoder heads from ``hyper_parameters`` (94 characters and 8 heads, the released models' values, when absent).
Pickled files (zip or legacy ``torch.save`` streams) are read by :func:`clip4str.safe_pickle.load_pickle`:
only tensors and plain containers are built; other Python objects in a Lightning file's hyper-parameters
become inert placeholders that keep their pickled state. No code from a file runs.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from clip4str.charset import CHARSET_36, CHARSET_62, CHARSET_94
from clip4str.clip.model import infer_clip_config
from clip4str.clip.weights import sniff_format
from clip4str.config import (
    HALF_MEAN_STD,
    ConfigError,
    DecoderConfig,
    DecodingConfig,
    ModelConfig,
    PreprocessConfig,
    apply_overrides,
    parse_json,
)
from clip4str.errors import CheckpointError, WriteError
from clip4str.model.clip4str import CLIP4STR
from clip4str.safe_pickle import load_pickle, plain

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_METADATA_KEY = "clip4str_config"
_FORMAT_VERSION = "1"


# ------------------------------------------------------------------------------------------------ reading
def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None, ModelConfig | None]:
    """Read any supported file → (state dict, official hyper-parameters or None, own config or None)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        weights, config_file = path / WEIGHTS_NAME, path / CONFIG_NAME
        if not weights.is_file():
            raise CheckpointError(
                f"{path} is a directory without {WEIGHTS_NAME}; expected a clip4str model folder"
            )
        sd, config = _read_safetensors(weights)
        if config_file.is_file():
            config = _config_from_json(config_file.read_text(encoding="utf-8"), config_file)
        if config is None:
            raise CheckpointError(f"{path} has no {CONFIG_NAME} and {WEIGHTS_NAME} carries no config")
        return sd, None, config
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty")
    kind = sniff_format(path)
    if kind == "safetensors":
        sd, config = _read_safetensors(path)
        sibling = path.with_name(CONFIG_NAME)
        if config is None and sibling.is_file():
            config = _config_from_json(sibling.read_text(encoding="utf-8"), sibling)
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
    # Hyper-parameters pickled as Python objects (e.g. OmegaConf) are read as inert data.
    obj = plain(load_pickle(path, allow_objects=True))
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


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], ModelConfig | None]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated?): {err}") from err
    text = metadata.get(_METADATA_KEY)
    return sd, _config_from_json(text, path) if text else None


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


# ------------------------------------------------------------------------------------------------ official
def _charset_for_head(num_classes: int) -> str:
    for charset in (CHARSET_94, CHARSET_36, CHARSET_62):
        if len(charset) + 1 == num_classes:
            return charset
    raise CheckpointError(
        f"the checkpoint's head predicts {num_classes} classes and it records no charset; pass the "
        f"{num_classes - 1}-character training charset explicitly (charset_train=...)"
    )


def config_from_official(state_dict: Mapping[str, Tensor], hparams: Mapping[str, Any] | None) -> ModelConfig:
    """ModelConfig of an official checkpoint: sizes from the weights, the rest from ``hyper_parameters``.

    The stored CLIP path and ``embed_dim``/``enc_*`` fields of official files are stale and ignored.
    """
    hp = dict(hparams or {})
    for key in ("visual_decoder.pos_queries", "visual_decoder.head.weight"):
        if key not in state_dict:
            raise CheckpointError(f"not a CLIP4STR checkpoint: key {key!r} is missing")
    clip_cfg = infer_clip_config(state_dict, prefix="clip_model.")
    width = clip_cfg.embed_dim
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("visual_decoder.layers.")})
    hidden = state_dict["visual_decoder.layers.0.linear1.weight"].shape[0]
    decoder = DecoderConfig(
        depth=depth,
        num_heads=int(hp.get("dec_num_heads", 8)),
        mlp_ratio=hidden // width,
        dropout=float(hp.get("dropout", 0.1)),
    )
    num_classes = state_dict["visual_decoder.head.weight"].shape[0]
    charset_train = hp.get("charset_train") or _charset_for_head(num_classes)
    for key in ("charset_train", "charset_test"):
        if key in hp and hp[key] is not None and not isinstance(hp[key], str):
            raise CheckpointError(f"hyper_parameters.{key} must be a string, got {hp[key]!r}"[:200])
    if len(charset_train) + 1 != num_classes:
        raise CheckpointError(
            f"hyper_parameters.charset_train has {len(charset_train)} characters but the head predicts "
            f"{num_classes} classes (expected characters + 1)"
        )
    img_size = hp.get("img_size") or [clip_cfg.vision.image_size] * 2
    image_freeze = int(hp.get("image_freeze_nlayer", -1))
    return ModelConfig(
        clip=clip_cfg,
        decoder=decoder,
        charset_train=charset_train,
        # Without hyper-parameters the official loader takes configs/main.yaml's charset_test: 36 lowercase.
        charset_test=hp["charset_test"] if "charset_test" in hp else CHARSET_36,
        max_label_length=state_dict["visual_decoder.pos_queries"].shape[1] - 1,
        caption_length=int(hp.get("context_length", 16)),
        text_freeze_layers=int(hp.get("text_freeze_nlayer", 6)),
        image_freeze_layers=max(image_freeze, 0),
        cross_loss_weight=float(hp.get("cross_loss_w", 1.0)),
        perm_num=int(hp.get("perm_num", 6)),
        perm_forward=bool(hp.get("perm_forward", True)),
        perm_mirrored=bool(hp.get("perm_mirrored", True)),
        # The official test.py and read.py normalise with mean = std = 0.5.
        preprocess=PreprocessConfig(image_size=tuple(img_size), mean=HALF_MEAN_STD, std=HALF_MEAN_STD),
        decoding=DecodingConfig(
            mode="ar" if hp.get("decode_ar", True) else "nar", refine_iters=int(hp.get("refine_iters", 1))
        ),
    )


# ------------------------------------------------------------------------------------------------ model
def load_state_dict_strict(
    model: torch.nn.Module, state_dict: Mapping[str, Tensor], source: str = ""
) -> None:
    """Copy ``state_dict`` into ``model``; missing, unexpected or mis-shaped keys raise CheckpointError."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and state_dict[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} missing key(s): {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else "")
        )
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:8])}"
            + (" ..." if len(unexpected) > 8 else "")
        )
    if shapes:
        problems.append(f"{len(shapes)} mis-shaped key(s): {'; '.join(shapes[:8])}")
    if problems:
        where = f"{source}: " if source else ""
        raise CheckpointError(where + "weights do not fit the model: " + " | ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def load_model(
    path: str | Path,
    overrides: list[str] | Mapping[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> CLIP4STR:
    """Build a :class:`CLIP4STR` from any supported file, in eval mode, fp32.

    Args:
        path: own-format folder or ``.safetensors``, official ``.ckpt`` or ``.pt``.
        overrides: config changes applied before building, as ``['decoder.num_heads=4', ...]`` or
            ``{'charset_test': '0123...', 'decoding.refine_iters': 2}``.
        map_location: device of the returned model.
    """
    sd, hparams, config = read_checkpoint(path)
    if config is None:
        from clip4str.model.peft import convert_str_adapter, is_str_adapter_state_dict

        try:
            if is_str_adapter_state_dict(sd):  # the official single-branch STRAdapter models
                config, sd = convert_str_adapter(sd, hparams)
            else:
                config = config_from_official(sd, hparams)
        except CheckpointError:
            raise
        except (ConfigError, TypeError, ValueError, KeyError, IndexError) as err:  # e.g. hostile hparams
            raise CheckpointError(f"{path}: unusable sizes or hyper-parameters: {err}") from err
    if overrides:
        items = overrides.items() if isinstance(overrides, Mapping) else None
        texts = [f"{k}={json.dumps(v)}" for k, v in items] if items is not None else list(overrides)
        try:
            config = apply_overrides(config, texts)
        except ConfigError as err:
            raise CheckpointError(f"{path}: {err}") from err
    # Every tensor comes from the file: a pretrained text encoder need not be read first.
    from clip4str.model.text_encoders import no_pretrained_weights

    with no_pretrained_weights():
        model = CLIP4STR(config)
    load_state_dict_strict(
        model, {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, str(path)
    )
    return model.to(map_location).eval()


def save_model(
    model: CLIP4STR,
    directory: str | Path,
    extra_metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the own format atomically: ``directory/model.safetensors`` (config in its metadata too) and
    ``directory/config.json``. Returns ``directory``.

    ``dtype`` (e.g. ``torch.bfloat16``) stores the floating-point weights at that precision (half the size);
    :func:`load_model` always builds an fp32 model from them.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_text = model.config.to_json()
    metadata = {_METADATA_KEY: config_text, "format_version": _FORMAT_VERSION, **dict(extra_metadata or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    _atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata=metadata))
    _atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(config_text + "\n", encoding="utf-8"))
    return directory


def _atomic_write(target: Path, write) -> None:
    """``write(tmp_path)`` then rename onto ``target``; on failure (e.g. a full disk) ``target`` is untouched."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        write(tmp)
        os.replace(tmp, target)
    except Exception as err:  # noqa: BLE001 - OSError, or the safetensors writer's own error type
        from clip4str.files import write_failure

        raise WriteError(write_failure(target, err)) from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
