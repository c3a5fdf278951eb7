"""Optimiser: the official parameter groups, learning rates and OneCycle schedule."""

from __future__ import annotations

import pytest
import torch

from clip4str.model.clip4str import CLIP4STR
from clip4str.presets import model_preset
from clip4str.train.config import load_train_config
from clip4str.train.optim import GROUP_NAMES, build_optimizer, build_scheduler, parameter_groups


@pytest.fixture(scope="module")
def model() -> CLIP4STR:
    cfg = model_preset("tiny", text_freeze_layers=1, clip={"text": {"layers": 2}})
    return CLIP4STR(cfg)


def test_groups_follow_the_official_rule(model) -> None:
    groups = {g: dict(v) for g, v in parameter_groups(model).items()}
    names = {g: set(v) for g, v in groups.items()}
    # norms, biases, class embedding (1-D), position queries and character embeddings: no decay
    assert "clip_model.visual.ln_pre.weight" in names["clip_no_decay"]
    assert "clip_model.visual.class_embedding" in names["clip_no_decay"]
    assert "clip_model.transformer.resblocks.1.attn.in_proj_bias" in names["clip_no_decay"]
    assert "visual_decoder.pos_queries" in names["decoder_no_decay"]
    assert "cross_decoder.text_embed.embedding.weight" in names["decoder_no_decay"]
    assert "visual_decoder.head.bias" in names["decoder_no_decay"]
    # matrices decay, CLIP's 2-D position table included (official behaviour)
    assert "clip_model.visual.conv1.weight" in names["clip_decay"]
    assert "clip_model.visual.positional_embedding" in names["clip_decay"]
    assert "visual_decoder.head.weight" in names["decoder_decay"]
    # frozen text layer 0, token and position embeddings and logit_scale are not optimised
    everything = set().union(*names.values())
    assert "clip_model.transformer.resblocks.0.attn.in_proj_weight" not in everything
    assert "clip_model.token_embedding.weight" not in everything
    assert "clip_model.logit_scale" not in everything
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert everything == trainable


def test_learning_rates_weight_decay_and_one_cycle(model) -> None:
    cfg = load_train_config("vit-b16-real", ["devices=1", "batch_size=64", "optim.warmup_pct=0.1"])
    assert cfg.accumulate_steps == 16
    opt = build_optimizer(model, cfg)
    assert [g["name"] for g in opt.param_groups] == list(GROUP_NAMES)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.2, 0.0, 0.2]
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    sched = build_scheduler(opt, cfg, total_steps=100)
    peak = 8.4e-5 * 1024 / 512
    lrs = []
    for _ in range(100):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs[0][0] == pytest.approx(peak / 25)  # OneCycle starts at max_lr / div_factor
    top = max(range(100), key=lambda i: lrs[i][0])
    assert top == 9 and lrs[top][0] == pytest.approx(peak)  # warm-up over 10% of the steps
    assert lrs[top][2] == pytest.approx(19 * peak)
    assert lrs[-1][0] < peak / 1000
    assert all(a >= b for a, b in zip([r[0] for r in lrs[top:]], [r[0] for r in lrs[top + 1 :]]))


def test_optimizer_step_changes_only_trainable_parameters(model) -> None:
    cfg = load_train_config("tiny", ["optim.grad_clip=0"])
    opt = build_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(before[n], p) != p.requires_grad, n


def test_wsd_schedule_keeps_the_stable_phase_when_the_run_is_lengthened():
    from clip4str.train.optim import wsd_factor

    floor = 1e-4
    short = [wsd_factor(s, 1000, 0.05, 0.2, floor) for s in range(800)]
    longer = [wsd_factor(s, 1200, 0.05, 0.2, floor) for s in range(800)]
    # warm-up lengths differ (5 % of each run); from there on both are at the peak until 800
    assert short[60:800] == longer[60:800] == [1.0] * 740
    assert short[0] == floor and short[25] < 1.0
    end = [wsd_factor(s, 1000, 0.05, 0.2, floor) for s in (800, 900, 999, 1000)]
    assert end[0] == 1.0 and 0.4 < end[1] < 0.6 and end[2] < 1e-3 and end[3] == floor
