"""CLIP4STR checkpoint files → models: the official layouts converted, any supported file loaded.

Formats read (told apart by content, never by file name; read by :mod:`clip4str.weights`):

* the package's own format: a directory with ``config.json`` + ``model.safetensors``, or the
  ``model.safetensors`` file alone (its metadata holds the same config);
* official Lightning ``.ckpt`` files (``state_dict`` + ``hyper_parameters``);
* official ``.pt`` files holding a plain state dict or ``{'state_dict': ...}``;
* the official single-decoder ``str_adapter`` models (PEFT study), converted to the two-decoder layout.

Official files are converted to a :class:`~clip4str.config.ModelConfig` by :func:`config_from_official`:
sizes from the weights, charset and decoder heads from ``hyper_parameters`` (94 characters and 8 heads, the
released models' values, when absent). No code from a file runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from clip4str.charset import CHARSET_36, CHARSET_62, CHARSET_94
from clip4str.clip.model import infer_clip_config
from clip4str.config import (
    HALF_MEAN_STD,
    AdapterConfig,
    ConfigError,
    DecoderConfig,
    DecodingConfig,
    ModelConfig,
    PreprocessConfig,
    apply_overrides,
)
from clip4str.errors import CheckpointError
from clip4str.model.clip4str import CLIP4STR

# The weight I/O lives in clip4str.weights; these names stay importable from here.
from clip4str.weights import check_state_dict, load_state_dict_strict, read_checkpoint, save_model

__all__ = [
    "build_for_weights",
    "config_from_file",
    "config_from_official",
    "convert_str_adapter",
    "is_str_adapter_state_dict",
    "load_model",
    "load_state_dict_strict",
    "read_checkpoint",
    "save_model",
]


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


# ------------------------------------------------------------------------------------------------ str_adapter
_STR_ADAPTER_KINDS = {"linear": "clip-adapter", "ladder": "ladder"}
_DEFAULT_BLOCK_IDS = [0, 4, 8, 11]  # STRAdapter's default block_ids


def is_str_adapter_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """True for the official single-decoder ``str_adapter`` layout (``decoder.*``, ``head.*``, ``clip_model.*``)."""
    return (
        "pos_queries" in state_dict
        and "head.weight" in state_dict
        and any(k.startswith("decoder.layers.") for k in state_dict)
        and not any(k.startswith("visual_decoder.") for k in state_dict)
    )


def convert_str_adapter(
    state_dict: Mapping[str, Tensor], hparams: Mapping[str, Any] | None = None
) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Convert an official ``STRAdapter`` checkpoint (``strhub/models/str_adapter``) → (config, state dict).

    The official model has one decoder reading the adapted image memory (no cross-modal branch). It becomes a
    CLIP4STR whose visual decoder holds that decoder and whose config decodes with the visual branch only
    (``decoding.visual_only=True``); the cross-modal decoder is a copy of it so that the file is complete
    (enable the cross-modal branch only after training it). Adapter types: ``linear`` → 'clip-adapter'
    (ratio 0.2, reduction from the weights); ``ladder`` → 'ladder' with reduction 1 and
    ``hyper_parameters.block_ids``. The ``attention``, ``linear_ladder`` and ``ladder_pruning`` types are not
    supported.
    """
    hp = dict(hparams or {})
    adapter_type = str(hp.get("adapter_type", ""))
    adapter_keys = sorted(k for k in state_dict if k.startswith("adapter."))
    if not adapter_type:
        if "adapter.fc.0.weight" in state_dict:
            adapter_type = "linear"
        elif "adapter.alpha" in state_dict and any(".attn.in_proj_weight" in k for k in adapter_keys):
            adapter_type = "ladder"
        elif not adapter_keys:
            adapter_type = "identity"
        else:
            raise CheckpointError(
                f"str_adapter checkpoint: cannot tell the adapter type from its keys ({', '.join(adapter_keys[:4])}) "
                "and hyper_parameters has no adapter_type"
            )
    if adapter_type not in _STR_ADAPTER_KINDS and adapter_type != "identity":
        raise CheckpointError(
            f"str_adapter checkpoint with adapter_type={adapter_type!r} is not supported; supported: linear "
            "(CLIP-Adapter), ladder (full-width Ladder Side-Tuning) and checkpoints without an adapter"
        )
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("clip_model."):
            out[key] = value
        elif key.startswith("decoder."):
            out["visual_decoder." + key[len("decoder.") :]] = value
        elif key.startswith(("head.", "text_embed.")) or key == "pos_queries":
            out["visual_decoder." + key] = value
        elif key.startswith("adapter."):
            out["image_adapter." + key[len("adapter.") :]] = value
        else:
            raise CheckpointError(f"str_adapter checkpoint: unexpected key {key!r}")
    for key in [k for k in out if k.startswith("visual_decoder.")]:
        out["cross_decoder." + key[len("visual_decoder.") :]] = out[key].clone()

    if adapter_type == "linear":
        hidden, embed_dim = out["image_adapter.fc.0.weight"].shape
        adapter = AdapterConfig(kind="clip-adapter", ratio=0.2, reduction=embed_dim // hidden)
    elif adapter_type == "ladder":
        n_side = len({k.split(".")[2] for k in out if k.startswith("image_adapter.resblocks.")})
        block_ids = [int(i) for i in hp.get("block_ids", _DEFAULT_BLOCK_IDS)]
        if len(block_ids) != n_side:
            raise CheckpointError(
                f"str_adapter ladder checkpoint has {n_side} side blocks but block_ids={block_ids}; the "
                "hyper_parameters must record the block_ids it was trained with"
            )
        adapter = AdapterConfig(
            kind="ladder", reduction=1, options={"block_ids": block_ids, "temperature": 0.1}
        )
    else:
        adapter = AdapterConfig()
    config = config_from_official(out, hp)
    config.adapter = adapter
    config.decoding.visual_only = True
    if bool(hp.get("freeze_backbone", True)):
        config.image_freeze_layers = -1
        config.text_freeze_layers = -1
    return config, out


# ------------------------------------------------------------------------------------------------ model
def config_from_file(
    state_dict: dict[str, Tensor], hparams: Mapping[str, Any] | None, config: ModelConfig | None, source: str
) -> tuple[ModelConfig, dict[str, Tensor]]:
    """The config of a file read by :func:`read_checkpoint` (its own, or converted from the official layout)
    and its state dict in this package's key layout."""
    if config is not None:
        return config, state_dict
    try:
        if is_str_adapter_state_dict(state_dict):  # the official single-branch STRAdapter models
            return convert_str_adapter(state_dict, hparams)
        return config_from_official(state_dict, hparams), state_dict
    except CheckpointError:
        raise
    except (ConfigError, TypeError, ValueError, KeyError, IndexError) as err:  # e.g. hostile hparams
        raise CheckpointError(f"{source}: unusable sizes or hyper-parameters: {err}") from err


def build_for_weights(config: ModelConfig) -> CLIP4STR:
    """An untrained :class:`CLIP4STR` of ``config`` whose every tensor will come from a file: a Hugging Face
    text encoder builds its architecture without reading its own pretrained weights. ``model.config`` is
    ``config`` itself."""
    options = config.text_encoder_options
    if config.text_encoder == "clip" or options.get("pretrained") is False:
        return CLIP4STR(config)
    model = CLIP4STR(dataclasses.replace(config, text_encoder_options={**options, "pretrained": False}))
    model.config = config  # the saved config keeps where the encoder's weights first came from
    return model


def load_model(
    path: str | Path,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> CLIP4STR:
    """Build a :class:`CLIP4STR` from any supported file, in eval mode, fp32.

    Args:
        path: own-format folder or ``.safetensors``, official ``.ckpt`` or ``.pt``.
        overrides: config changes applied before building (:func:`clip4str.config.merge_into`), as
            ``['decoder.num_heads=4', ...]`` or ``{'charset_test': '0123...', 'decoding.refine_iters': 2}``.
        map_location: device of the returned model.
    """
    sd, hparams, config = read_checkpoint(path)
    config, sd = config_from_file(sd, hparams, config, str(path))
    if overrides:
        try:
            config = apply_overrides(config, overrides)
        except ConfigError as err:
            raise CheckpointError(f"{path}: {err}") from err
    check_state_dict(expected_shapes(config), sd, str(path))  # names and shapes first: nothing built yet
    model = build_for_weights(config)
    weights = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    load_state_dict_strict(model, weights, str(path))
    return model.to(map_location).eval()


def expected_shapes(config: ModelConfig) -> dict[str, torch.Size]:
    """Name → shape of every tensor a model of ``config`` loads, from a model built on the meta device (no
    memory for its weights), so that a file is compared with the config before anything is allocated."""
    with torch.device("meta"):
        model = build_for_weights(config)
    return {k: v.shape for k, v in model.state_dict().items()}
