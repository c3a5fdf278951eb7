"""Build the model a run starts from: random, bare CLIP weights, or a CLIP4STR checkpoint to fine-tune.

Every model is built by :func:`clip4str.factory.create_model` (untrained), then filled:

* ``random``: the ``model_preset`` architecture with ``variants`` and ``model`` overrides, randomly initialised.
* ``clip:PATH``: CLIP sizes inferred from the weights file (OpenAI TorchScript / state dict, OpenCLIP
  ``.bin``, ``.safetensors``), weights rounded like the official ``clip.load`` (fp16 round trip), decoders
  random: the official way a training run starts.
* ``checkpoint:PATH``: an official ``.ckpt``/``.pt`` or an own-format model. Its config is the base
  (``model_preset`` is ignored), ``variants``/``model``/charset overrides apply on top. When the training charset
  differs from the checkpoint's, the heads and character embeddings of both decoders are re-initialised
  and every other tensor is copied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from clip4str.config import ConfigError, ModelConfig, to_dict
from clip4str.factory import create_model
from clip4str.model.clip4str import CLIP4STR
from clip4str.train.config import TrainConfig, parse_init, resolve_model_config
from clip4str.weights import load_state_dict_strict

# Tensors that depend on the character set: re-initialised when fine-tuning to a new charset.
CHARSET_TENSORS = re.compile(r"^((visual|cross)_decoder\.(head|text_embed)|ctc_head)\.")


@dataclass
class InitReport:
    """What :func:`build_model` did: the source, and the tensors left at their fresh initialisation."""

    source: str
    reinitialized: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = f"initialised from {self.source}"
        if self.reinitialized:
            text += f"; re-initialised for the new charset: {', '.join(self.reinitialized)}"
        return text


def build_model(cfg: TrainConfig) -> tuple[CLIP4STR, InitReport]:
    """The model to train (fp32, train mode, freezing applied) and how it was initialised."""
    kind, path = parse_init(cfg.init)
    if kind == "random":
        model = create_model(resolve_model_config(cfg), pretrained=False)
        return model.train(), InitReport(f"random init ({cfg.model_preset})")
    if kind == "clip":
        return _from_clip(cfg, path)
    return _from_checkpoint(cfg, path)


def _from_clip(cfg: TrainConfig, path: str) -> tuple[CLIP4STR, InitReport]:
    from clip4str.clip.model import infer_clip_config, round_like_official_fp16
    from clip4str.clip.weights import load_clip_state_dict
    from clip4str.presets import model_preset

    sd = load_clip_state_dict(path)
    base = model_preset(cfg.model_preset)
    clip_cfg = infer_clip_config(sd, activation=base.clip.activation)
    base.clip = clip_cfg
    model_cfg = resolve_model_config(cfg, base)
    if to_dict(model_cfg.clip) != to_dict(clip_cfg):
        raise ConfigError(
            f"model.clip overrides change the CLIP tower inferred from {path!r}; remove them (sizes come from "
            "the weights)"
        )
    model = create_model(model_cfg, pretrained=False)
    load_state_dict_strict(
        model.clip_model, round_like_official_fp16(sd), f"{path} (CLIP tower inferred from it)"
    )
    init_side = getattr(model.image_adapter, "init_from_backbone", None)
    if init_side is not None and model_cfg.adapter.reduction == 1:
        init_side(model.clip_model.visual)  # a full-width ladder starts as a copy of the backbone
    return model.train(), InitReport(f"CLIP weights {path}")


def _from_checkpoint(cfg: TrainConfig, path: str) -> tuple[CLIP4STR, InitReport]:
    from clip4str.checkpoints import config_from_file
    from clip4str.weights import read_checkpoint

    sd, hparams, own_cfg = read_checkpoint(path)
    base, sd = config_from_file(sd, hparams, own_cfg, str(path))
    model_cfg = resolve_model_config(cfg, base)
    model = create_model(model_cfg, pretrained=False)
    reinit = transfer_weights(model, sd, base, model_cfg, str(path))
    return model.train(), InitReport(f"checkpoint {path}", reinit)


# Parts a fine-tuning run may add to a checkpoint that lacks them (they start from their own init).
_ADDED_PARTS = ("image_adapter.", "text_encoder.")


def transfer_weights(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    old: ModelConfig,
    new: ModelConfig,
    source: str = "checkpoint",
) -> list[str]:
    """Copy ``state_dict`` into ``model``; charset-dependent tensors are kept fresh when the charset
    changed. Returns the names left at their initialisation. Anything else missing or mis-shaped raises
    :class:`CheckpointError` naming the keys.
    """
    charset_changed = old.charset_train != new.charset_train
    own = list(model.state_dict())
    dropped = {k for k in own if charset_changed and CHARSET_TENSORS.match(k)}
    kept = {k: v for k, v in state_dict.items() if k not in dropped}
    fresh = load_state_dict_strict(
        model,
        kept,
        source,
        # an adapter or text encoder added to a model trained without it starts from its own init
        may_be_missing=lambda name: name in dropped or name.startswith(_ADDED_PARTS),
        hint=(
            ". Only the charset may differ from the checkpoint (heads and character embeddings are then "
            "re-initialised); other architecture changes (max_label_length, sizes) are not supported when "
            "fine-tuning"
        ),
    )
    return [k for k in own if k in set(fresh)]


def parameter_summary(model: nn.Module) -> str:
    """A table of parameter counts (total / trainable / frozen) per part of a CLIP4STR model."""
    parts = {
        "clip_model.visual": "image encoder",
        "clip_model.text": "text encoder",
        "visual_decoder": "visual decoder",
        "cross_decoder": "cross-modal decoder",
    }
    rows: dict[str, list[int]] = {label: [0, 0] for label in parts.values()}
    rows.update({"image adapter": [0, 0], "other text encoder": [0, 0], "other": [0, 0]})
    for name, p in model.named_parameters():
        if name.startswith("clip_model.visual."):
            key = "image encoder"
        elif name.startswith("clip_model."):
            key = "text encoder"
        elif name.startswith("visual_decoder."):
            key = "visual decoder"
        elif name.startswith("cross_decoder."):
            key = "cross-modal decoder"
        elif name.startswith("image_adapter."):
            key = "image adapter"
        elif name.startswith("text_encoder."):
            key = "other text encoder"
        else:
            key = "other"
        rows[key][0] += p.numel()
        rows[key][1] += p.numel() if p.requires_grad else 0
    lines = [f"{'part':<22}{'params':>14}{'trainable':>14}{'frozen':>14}"]
    total = [0, 0]
    for label, (n, t) in rows.items():
        if n == 0:
            continue
        lines.append(f"{label:<22}{n:>14,}{t:>14,}{n - t:>14,}")
        total[0] += n
        total[1] += t
    lines.append(f"{'total':<22}{total[0]:>14,}{total[1]:>14,}{total[0] - total[1]:>14,}")
    return "\n".join(lines)
