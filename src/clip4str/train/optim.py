"""The official optimiser: AdamW over four parameter groups and a OneCycle schedule.

Groups (in this order, as the official ``configure_optimizers``): CLIP parameters without weight decay,
CLIP parameters with decay, decoder parameters without decay, decoder parameters with decay. A parameter
gets no decay when it has fewer than 2 dimensions or its name contains ``bn``, ``ln``, ``bias``,
``logit_scale``, ``pos_queries`` or ``text_embed`` (so LayerNorms, biases, the class embedding, the
decoders' position queries and character embeddings; CLIP's token and positional embedding tables are
2-D and *do* decay when trainable, as officially). Frozen parameters are left out. Decoder groups use
``lr x decoder_lr_factor`` (official ``coef_lr`` = 19) and ``weight_decay x decoder_wd_factor``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from clip4str.train.config import TrainConfig

_NO_DECAY_WORDS = ("bn", "ln", "bias", "logit_scale", "pos_queries", "text_embed")
GROUP_NAMES = ("clip_no_decay", "clip_decay", "decoder_no_decay", "decoder_decay")


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """True for parameters the official rule exempts from weight decay."""
    return param.ndim < 2 or any(word in name for word in _NO_DECAY_WORDS)


def parameter_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Trainable ``(name, parameter)`` pairs of a CLIP4STR model in the four official groups."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in GROUP_NAMES}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Backbone-rate parts: CLIP, the image adapter (the official ladder uses the base rate) and another
        # text encoder except its new output projection; everything else learns at the decoder rate.
        backbone = name.startswith(("clip_model.", "image_adapter.")) or (
            name.startswith("text_encoder.") and not name.startswith("text_encoder.proj")
        )
        part = "clip" if backbone else "decoder"
        local = name.split(".", 1)[1] if backbone else name
        kind = "no_decay" if no_weight_decay(local, p) else "decay"
        groups[f"{part}_{kind}"].append((name, p))
    return groups


def peak_learning_rates(cfg: TrainConfig) -> list[float]:
    """Per-group peak learning rates (OneCycle ``max_lr``), in :data:`GROUP_NAMES` order."""
    lr = cfg.scaled_lr
    dec = lr * cfg.optim.decoder_lr_factor
    return [lr, lr, dec, dec]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW(betas, eps from ``cfg.optim``) over the four groups; lr values are the OneCycle peaks."""
    o = cfg.optim
    groups = parameter_groups(model)
    lrs = peak_learning_rates(cfg)
    decays = [0.0, o.weight_decay, 0.0, o.weight_decay * o.decoder_wd_factor]
    param_groups = [
        {"params": [p for _, p in groups[g]], "lr": lr, "weight_decay": wd, "name": g}
        for g, lr, wd in zip(GROUP_NAMES, lrs, decays)
    ]
    return torch.optim.AdamW(param_groups, lr=lrs[0], betas=tuple(o.betas), eps=o.eps)


def wsd_factor(step: int, total_steps: int, warmup_pct: float, decay_pct: float, floor: float) -> float:
    """The warm-up / stable / decay multiplier of the peak learning rate at ``step`` (0-based).

    Linear from ``floor`` to 1 over the first ``warmup_pct`` of the steps, 1 until the last ``decay_pct``,
    then a cosine from 1 down to ``floor``. Steps before the decay depend on ``total_steps`` only through
    the warm-up length, so a run may be lengthened or shortened while it is still in the stable phase.
    """
    warmup = max(1, round(warmup_pct * total_steps))
    decay_start = total_steps - round(decay_pct * total_steps)
    if step < warmup:
        return floor + (1 - floor) * step / warmup
    if step < decay_start:
        return 1.0
    t = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> LRScheduler:
    """The learning-rate schedule, stepped once per optimizer step.

    ``optim.schedule='onecycle'`` (official): OneCycleLR with warm-up ``warmup_pct`` of ``total_steps``, cosine
    anneal, no momentum cycling. ``'wsd'``: :func:`wsd_factor` times each group's peak rate, from
    ``peak / div_factor`` up and back down to ``peak / (div_factor x final_div_factor)``.
    """
    total_steps = max(total_steps, 2)
    o = cfg.optim
    if o.schedule == "wsd":
        floor = 1.0 / (o.div_factor * o.final_div_factor)
        for group, peak in zip(optimizer.param_groups, peak_learning_rates(cfg)):
            group["lr"] = group["initial_lr"] = peak

        def factor(step: int) -> float:
            return wsd_factor(step, total_steps, o.warmup_pct, o.decay_pct, floor)

        return LambdaLR(optimizer, factor)
    pct = cfg.optim.warmup_pct
    if float(pct * total_steps) - 1 == 0:  # torch divides by (warm-up steps - 1): avoid exactly zero
        pct += 1e-6
    return OneCycleLR(
        optimizer,
        max_lr=peak_learning_rates(cfg),
        total_steps=total_steps,
        pct_start=pct,
        cycle_momentum=False,
        div_factor=cfg.optim.div_factor,
        final_div_factor=cfg.optim.final_div_factor,
    )
