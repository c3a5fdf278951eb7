"""The training loop, on Lightning Fabric: DDP over devices and nodes, mixed precision, accumulation.

The loop is written out (not a ``LightningModule``) so that everything a resumed run must reproduce is
explicit: the optimizer step boundaries, the data position (epoch, batch), and the RNG streams. The
model stays a plain :class:`~clip4str.model.clip4str.CLIP4STR`; only this package imports Lightning.

One optimizer step = ``accumulate`` micro-batches on every device; the loss of each micro-batch is
divided by ``accumulate`` (as Lightning's automatic optimisation does), gradients are clipped to
``optim.grad_clip`` (L2 norm, after unscaling), then AdamW and the OneCycle scheduler step. An epoch's last
group may hold fewer micro-batches. Checkpoints and validation happen only at step boundaries.

Run folder::

    RUN_DIR/train_config.json      the resolved training config
    RUN_DIR/checkpoints/last.ckpt  resume state (atomic)
    RUN_DIR/best/, RUN_DIR/last/   own-format models (config.json + model.safetensors), for clip4str read
    RUN_DIR/metrics.csv            loss, lr, images/s, validation metrics per logged step
    RUN_DIR/tensorboard/           the same as TensorBoard events
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clip4str.config import ConfigError, ModelConfig
from clip4str.errors import Clip4strError
from clip4str.model.clip4str import CLIP4STR
from clip4str.train.config import TrainConfig, config_diff
from clip4str.train.metrics import EvalTotals
from clip4str.train.state import RESUME_NAME, capture_rng, load_state, restore_rng, save_state, seed_process

log = logging.getLogger("clip4str.train")

# Keys that may differ when resuming (they do not change the optimisation).
RESUME_MUTABLE = (
    "data.num_workers",
    "data.val_root",
    "data.val_batch_size",
    "data.max_val_samples",
    "log_every_n_steps",
    "val_every_n_steps",
    "checkpoint_every_n_steps",
    "output_dir",
)


@dataclass
class StepInfo:
    """Passed to ``on_step_end`` hooks after every optimizer step (and its checkpoint, if any)."""

    step: int
    epoch: int
    loss: float
    total_steps: int


@dataclass
class TrainResult:
    """What a finished run reports (rank 0's view)."""

    run_dir: Path
    step: int
    epoch: int
    total_steps: int
    best_accuracy: float | None
    best_step: int | None
    last_val: dict[str, float] = field(default_factory=dict)
    param_digests: list[str] = field(default_factory=list)  # one per rank: identical under DDP


class _LossModule(nn.Module):
    """What DDP wraps: ``forward(images, labels)`` is the PSM training loss, so gradients are synced."""

    def __init__(self, model: CLIP4STR) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, labels: list[str]) -> torch.Tensor:
        return self.model.training_loss(images, labels)


def run_dir_of(cfg: TrainConfig) -> Path:
    return Path(cfg.output_dir)


class TrainingStopped(Clip4strError):
    """A run stopped on SIGTERM/SIGINT after saving a resume point; the message says what and how to go on."""


class _StopRequest:
    """SIGTERM (or a first Ctrl-C) asks the loop to stop at the next step boundary, after saving.

    Handlers are installed only in the main thread (elsewhere signals cannot be caught); a second signal
    falls back to the default behaviour, so a stuck run can still be killed.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # a second one is not deferred
        sys.stderr.write(
            f"\n{self.signal_name}: stopping after the current step, once a resume point is saved "
            "(send it again to stop at once, losing the steps since the last save)\n"
        )

    def requested(self, fabric: Any, world: int) -> bool:
        if world == 1:
            return self.signal_name is not None
        flag = torch.tensor([1.0 if self.signal_name else 0.0], device=fabric.device)
        return bool(fabric.all_reduce(flag, reduce_op="max").item() > 0)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def is_better(accuracy: float, ned: float, loss: float, best: dict[str, Any]) -> bool:
    """Whether a validation beats ``best``: higher accuracy, then (a tie, e.g. 0 % early on) higher 1-NED,
    then lower loss. A best saved by an older version has no 1-NED/loss: any tie then counts as better."""
    if best.get("accuracy") is None:
        return True
    old_ned = best.get("ned")
    old_loss = best.get("loss")
    key = (accuracy, ned, -loss)
    old = (
        best["accuracy"],
        -math.inf if old_ned is None else old_ned,
        -math.inf if old_loss is None else -old_loss,
    )
    return key > old


def cap_workers(requested: int, device_type: str) -> int:
    """DataLoader workers for this machine: on the CPU, at most the cores left beside the training process."""
    if device_type != "cpu" or requested == 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(requested, max(0, cores - 1))


def resume_checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints" / RESUME_NAME


def load_run_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """The config of the run in ``run_dir`` (``train_config.json``) with resume-safe overrides applied."""
    from clip4str.train.config import load_train_config

    path = Path(run_dir) / "train_config.json"
    if not Path(run_dir).exists():
        raise ConfigError(f"--resume {run_dir}: no such folder (give the output_dir of an earlier run)")
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a training run folder: {path.name} is missing")
    saved = load_train_config(path)
    cfg = load_train_config(path, list(overrides))
    changed = [k for k in config_diff(saved, cfg) if not k.startswith(RESUME_MUTABLE)]
    if changed:
        raise ConfigError(
            f"cannot change {', '.join(changed)} when resuming {run_dir}: these keys change the optimisation. "
            f"Keys that may change: {', '.join(RESUME_MUTABLE)}"
        )
    return cfg


class Trainer:
    """Train one run.

    Args:
        cfg: the training config (validated here, before any work).
        resume: continue the run in ``cfg.output_dir`` from ``checkpoints/last.ckpt``.
        progress: a progress bar on a terminal (rank 0); False, or a log file, gives plain periodic lines.
        on_step_end: callables invoked with a :class:`StepInfo` after each optimizer step (picklable
            top-level functions when ``strategy='ddp_spawn'``).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        resume: bool = False,
        progress: bool = True,
        on_step_end: Sequence[Callable[[StepInfo], None]] = (),
    ) -> None:
        cfg.validate(check_paths=True, check_init=not resume)
        run_dir = run_dir_of(cfg)
        ckpt = resume_checkpoint_path(run_dir)
        if resume and not ckpt.is_file():
            raise ConfigError(f"nothing to resume: {ckpt} does not exist")
        if not resume and ckpt.exists():
            raise ConfigError(
                f"output_dir {str(run_dir)!r} already holds a run ({ckpt}); resume it with --resume, or choose "
                "another output_dir"
            )
        if cfg.accelerator == "cpu" and cfg.precision == "16-mixed":
            raise ConfigError("precision '16-mixed' needs a GPU; use 'bf16-mixed' or '32-true' on CPU")
        self.cfg = cfg
        self.resume = resume
        self.progress = progress
        self.on_step_end = list(on_step_end)
        self._stop: _StopRequest | None = None

    def fit(self) -> TrainResult:
        """Run training to the end; returns rank 0's :class:`TrainResult`."""
        from lightning.fabric import Fabric

        cfg = self.cfg
        if cfg.threads > 0:
            import torch

            torch.set_num_threads(cfg.threads)
        fabric = Fabric(
            accelerator=cfg.accelerator,
            strategy=cfg.strategy,
            devices=cfg.devices,
            num_nodes=cfg.num_nodes,
            precision=cfg.precision,
        )
        with _StopRequest() as stop:
            self._stop = stop
            return fabric.launch(_run, self)


# ---------------------------------------------------------------------------------------------- the loop
def _run(fabric: Any, trainer: Trainer) -> TrainResult:  # noqa: C901 - the loop is one readable story
    from clip4str.checkpoints import save_model
    from clip4str.train.data import (
        EpochSampler,
        build_train_dataset,
        build_val_dataset,
        make_loader,
        val_subset,
    )
    from clip4str.train.init_model import build_model, parameter_summary
    from clip4str.train.logs import CSV_NAME, MetricsCsv, Progress, TensorBoard
    from clip4str.train.optim import build_optimizer, build_scheduler

    cfg = trainer.cfg
    rank, world = fabric.global_rank, fabric.world_size
    is_main = fabric.is_global_zero
    run_dir = run_dir_of(cfg)
    ckpt_path = resume_checkpoint_path(run_dir)

    def say(text: str) -> None:
        if is_main:
            log.info(text)
            fabric.print(text)

    state = load_state(ckpt_path) if trainer.resume else None

    # --- model (identical on every rank: same seed; DDP also broadcasts rank 0's weights)
    torch.manual_seed(cfg.seed)
    if state is not None:
        model = CLIP4STR(ModelConfig.from_dict(state["model_config"]))
        model.load_state_dict(state["model"])
        model.train()
        say(f"resuming {run_dir} at step {state['step']} (epoch {state['epoch']}, batch {state['batch']})")
    else:
        model, report = build_model(cfg)
        say(report.describe())
    if cfg.grad_checkpointing:
        model.clip_model.set_grad_checkpointing(True)
    model_cfg = model.config
    say("parameters:\n" + parameter_summary(model))

    # --- data
    train_ds, train_base = build_train_dataset(cfg, model_cfg)
    say(f"training samples ({len(train_base):,}):\n{train_base.summary()}")
    sampler = EpochSampler(len(train_ds), cfg.batch_size, world, rank, seed=cfg.seed)
    workers = cap_workers(cfg.data.num_workers, fabric.device.type)
    if workers != cfg.data.num_workers:
        say(
            f"data.num_workers {cfg.data.num_workers} -> {workers}: this machine has too few CPU cores for more"
        )
    loader = make_loader(
        train_ds,
        cfg.batch_size,
        workers,
        sampler=sampler,
        seed=cfg.seed,
        pin_memory=fabric.device.type == "cuda",
    )
    val_ds = build_val_dataset(cfg, model_cfg)
    val_loader = None
    if val_ds is not None:
        charset_size = len(model_cfg.resolved_charset_test)
        say(f"validation samples ({len(val_ds):,}, test charset of {charset_size}):\n{val_ds.summary()}")
        val_loader = make_loader(
            val_subset(val_ds, cfg.data.max_val_samples, world, rank),
            cfg.data.val_batch_size or cfg.batch_size,
            workers,
        )

    acc = cfg.accumulate_steps
    batches = sampler.batches_per_epoch
    steps_per_epoch = math.ceil(batches / acc)
    total_steps = cfg.epochs * steps_per_epoch if cfg.epochs else cfg.max_steps
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    say(
        f"{world} device(s) x batch {cfg.batch_size} x accumulate {acc} = {cfg.global_batch_size} images/step; "
        f"{steps_per_epoch} steps/epoch, {total_steps} steps; peak lr {cfg.scaled_lr:.3g} "
        f"(decoders {cfg.scaled_lr * cfg.optim.decoder_lr_factor:.3g}); precision {cfg.precision}"
    )

    # --- optimisation
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    wrapper = _LossModule(model)
    wrapper, optimizer = fabric.setup(wrapper, optimizer)
    precision = fabric.strategy.precision
    step, epoch, batch_pos = 0, 0, 0
    best: dict[str, Any] = {"accuracy": None, "step": None, "ned": None, "loss": None}
    wall_before = 0.0  # training wall time of the earlier sessions of this run (s)
    if state is not None:
        wall_before = float(state.get("wall_s", 0.0))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("precision"):
            precision.load_state_dict(state["precision"])
        step, epoch, batch_pos = state["step"], state["epoch"], state["batch"]
        best = state["best"]
        if state.get("world_size") != world:
            say(
                f"warning: the run was saved with {state.get('world_size')} processes, resuming with {world}: "
                "the data order changes from here"
            )

    # --- logs
    csv_log = tb = None
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.to_json(run_dir / "train_config.json")
        csv_log = MetricsCsv(run_dir / CSV_NAME, resume_step=step if state is not None else None)
        tb = TensorBoard(run_dir / "tensorboard", purge_step=step + 1 if state is not None else None)
    bar = Progress(total_steps, step, enabled=is_main, bar=trainer.progress)

    # --- RNG: fresh per-rank streams, or exactly where the interrupted run was
    model.perm_rng = seed_process(cfg.seed, rank)
    if state is not None and state.get("world_size") == world:
        restore_rng(state["rng"][rank], model.perm_rng)

    def validate() -> EvalTotals:
        model.eval()
        totals = EvalTotals()
        with torch.no_grad(), fabric.autocast():
            for images, labels in val_loader:  # type: ignore[union-attr]
                images = fabric.to_device(images)
                logits, loss, numel = model.validation_logits_loss(images, list(labels))
                preds, _ = model.tokenizer.decode(logits.float().softmax(-1))
                totals.add([model.charset_adapter(p) for p in preds], list(labels), float(loss), numel)
        model.train()
        summed = torch.tensor(totals.as_list(), dtype=torch.float64, device=fabric.device)
        if world > 1:
            summed = fabric.all_reduce(summed, reduce_op="sum")
        return EvalTotals.from_list(summed.tolist())

    def gather(obj: Any) -> list[Any]:
        if world == 1:
            return [obj]
        out: list[Any] = [None] * world
        torch.distributed.all_gather_object(out, obj)
        return out

    def save_checkpoint(pos_epoch: int, pos_batch: int) -> None:
        rngs = gather(capture_rng(model.perm_rng))
        if is_main:
            save_state(
                {
                    "step": step,
                    "epoch": pos_epoch,
                    "batch": pos_batch,
                    "world_size": world,
                    "model": model.state_dict(),
                    "model_config": model_cfg.to_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "precision": precision.state_dict(),
                    "rng": rngs,
                    "best": best,
                    "wall_s": wall_s(),
                    "config": cfg.to_dict(),
                },
                ckpt_path,
            )
            save_model(model, run_dir / "last", extra_metadata={"step": str(step)})
        fabric.barrier()

    last_val: dict[str, float] = {}
    session_start = time.perf_counter()

    def wall_s() -> float:
        """Wall time of the whole run so far, summed over every session that resumed it."""
        return round(wall_before + time.perf_counter() - session_start, 1)

    def run_validation() -> None:
        nonlocal last_val
        if val_loader is None:
            return
        totals = validate()
        last_val = {"val_accuracy": totals.accuracy, "val_ned": totals.one_minus_ned, "val_loss": totals.loss}
        improved = is_better(totals.accuracy, totals.one_minus_ned, totals.loss, best)
        if improved:
            best.update(accuracy=totals.accuracy, step=step, ned=totals.one_minus_ned, loss=totals.loss)
        if is_main:
            csv_log.write(step=step, epoch=epoch, wall_s=wall_s(), **last_val)  # type: ignore[union-attr]
            tb.scalars(step, **last_val)  # type: ignore[union-attr]
            bar.write(
                f"step {step}: val accuracy {totals.accuracy:.2f}%  1-NED {totals.one_minus_ned:.2f}  "
                f"loss {totals.loss:.4f}  ({totals.samples} samples){'  [best]' if improved else ''}"
            )
            if improved:
                save_model(model, run_dir / "best", extra_metadata={"step": str(step)})
        fabric.barrier()

    ckpt_every = cfg.checkpoint_every_n_steps or cfg.val_every_n_steps or steps_per_epoch
    stop = trainer._stop
    t_last, images_since, loss_sum, loss_count = time.perf_counter(), 0, 0.0, 0
    validated_at = -1
    b = batch_pos
    model.train()
    while step < total_steps:
        sampler.set_epoch(epoch, batch_pos)
        b = batch_pos
        step_losses: list[torch.Tensor] = []
        for images, labels in loader:
            images = fabric.to_device(images)
            closes_step = (b + 1) % acc == 0 or b + 1 == batches
            with fabric.no_backward_sync(wrapper, enabled=not closes_step):
                loss = wrapper(images, list(labels))
                fabric.backward(loss / acc)
            step_losses.append(loss.detach())
            images_since += len(labels) * world
            b += 1
            if not closes_step:
                continue
            grad_norm = None
            if cfg.optim.grad_clip > 0:
                grad_norm = fabric.clip_gradients(wrapper, optimizer, max_norm=cfg.optim.grad_clip)
            lrs = [g["lr"] for g in optimizer.param_groups]  # the rates this step used
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            step_loss = float(torch.stack(step_losses).float().mean())
            step_losses = []
            loss_sum += step_loss
            loss_count += 1
            now = time.perf_counter()
            ips = images_since / max(now - t_last, 1e-9)
            bar.update(step_loss, lrs[0], ips)
            if is_main and (step % cfg.log_every_n_steps == 0 or step == total_steps):
                row = {
                    "train_loss": loss_sum / loss_count,
                    "lr": lrs[0],
                    "decoder_lr": lrs[2],
                    "images_per_s": ips,
                    "grad_norm": float(grad_norm) if grad_norm is not None else None,
                    "wall_s": wall_s(),
                }
                csv_log.write(step=step, epoch=epoch, **row)  # type: ignore[union-attr]
                tb.scalars(step, **{k: v for k, v in row.items() if k != "wall_s"})  # type: ignore[union-attr]
                loss_sum, loss_count = 0.0, 0
            if step % cfg.log_every_n_steps == 0:
                t_last, images_since = time.perf_counter(), 0
            pos = (epoch, b) if b < batches else (epoch + 1, 0)
            if cfg.val_every_n_steps and step % cfg.val_every_n_steps == 0:
                run_validation()
                validated_at = step
            saved = step % ckpt_every == 0 and step < total_steps
            if saved:
                save_checkpoint(*pos)
            if stop is not None and step < total_steps and stop.requested(fabric, world):
                if not saved:
                    save_checkpoint(*pos)
                bar.close()
                raise TrainingStopped(
                    f"stopped by {stop.signal_name or 'a signal'} at step {step} of {total_steps}: saved the "
                    f"resume point {ckpt_path} and the model {run_dir / 'last'}; continue with "
                    f"`clip4str train --resume {run_dir}`"
                )
            for hook in trainer.on_step_end:
                hook(StepInfo(step=step, epoch=epoch, loss=step_loss, total_steps=total_steps))
            if step >= total_steps:
                break
        if step >= total_steps:
            break
        epoch, batch_pos = epoch + 1, 0

    if validated_at != step:
        run_validation()
    b_end = b if step else 0
    end_pos = (epoch, b_end) if b_end < batches else (epoch + 1, 0)
    save_checkpoint(*end_pos)
    bar.close()
    digest = hashlib.sha256()
    for _, p in sorted(model.state_dict().items()):
        digest.update(p.detach().float().cpu().numpy().tobytes())
    digests = gather(digest.hexdigest())
    if is_main:
        tb.close()  # type: ignore[union-attr]
        say(
            f"done: step {step}; best val accuracy {best['accuracy']} at step {best['step']}; "
            f"wall time {wall_s() / 3600:.2f} h over all sessions; "
            f"models in {run_dir / 'best'} and {run_dir / 'last'}"
        )
    return TrainResult(
        run_dir=run_dir,
        step=step,
        epoch=epoch,
        total_steps=total_steps,
        best_accuracy=best["accuracy"],
        best_step=best["step"],
        last_val=last_val,
        param_digests=digests,
    )
