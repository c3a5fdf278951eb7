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
from clip4str.evaluate import DatasetResult
from clip4str.model.clip4str import CLIP4STR
from clip4str.train.config import TrainConfig, config_diff
from clip4str.train.metrics import pack, unpack
from clip4str.train.state import (
    RESUME_NAME,
    LoopState,
    capture_rng,
    load_state,
    restore_rng,
    save_state,
    seed_process,
)

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
        from clip4str.precision import training_precision

        self.precision, self.precision_reason = training_precision(cfg.precision, cfg.accelerator)
        fabric = Fabric(
            accelerator=cfg.accelerator,
            strategy=cfg.strategy,
            devices=cfg.devices,
            num_nodes=cfg.num_nodes,
            precision=self.precision,
        )
        with _StopRequest() as stop:
            self._stop = stop
            return fabric.launch(_run, self)


# ---------------------------------------------------------------------------------------------- the loop
def _run(fabric: Any, trainer: Trainer) -> TrainResult:
    """One process's run (Fabric launches one per device): the loop over optimizer steps."""
    run = _Session(fabric, trainer)
    cfg, state = run.cfg, run.state
    validated_at = -1
    run.model.train()
    while state.step < run.total_steps:
        state.epoch, state.batch = state.position(run.batches)
        run.sampler.set_epoch(state.epoch, state.batch)
        for images, labels in run.loader:
            if not run.micro_batch(images, list(labels)):
                continue  # the optimizer steps once every `accumulate` micro-batches
            step_loss = run.optimizer_step()
            if cfg.val_every_n_steps and state.step % cfg.val_every_n_steps == 0:
                run.validate()
                validated_at = state.step
            saved = state.step % run.checkpoint_every == 0 and state.step < run.total_steps
            if saved:
                run.save_checkpoint()
            if run.stop_requested():
                if not saved:
                    run.save_checkpoint()
                raise run.stopped()
            info = StepInfo(step=state.step, epoch=state.epoch, loss=step_loss, total_steps=run.total_steps)
            for hook in trainer.on_step_end:
                hook(info)
            if state.step >= run.total_steps:
                break
    if validated_at != state.step:
        run.validate()
    run.save_checkpoint()
    return run.finish()


@dataclass
class _LogWindow:
    """Since the last logged step: the step losses (rank 0's mean goes to the logs) and the images read
    by every rank (for images/s)."""

    start: float = field(default_factory=time.perf_counter)
    images: int = 0
    loss_sum: float = 0.0
    steps: int = 0


class _Session:
    """Everything one process of a run works with: model, data, optimizer, logs, and the :class:`LoopState`
    (fresh, or read back from the resume checkpoint). Rank 0 alone writes logs and models."""

    def __init__(self, fabric: Any, trainer: Trainer) -> None:
        from clip4str.train.logs import CSV_NAME, MetricsCsv, Progress, TensorBoard
        from clip4str.train.optim import build_optimizer, build_scheduler

        cfg = self.cfg = trainer.cfg
        self.fabric = fabric
        self.trainer = trainer
        self.rank, self.world = fabric.global_rank, fabric.world_size
        self.is_main = fabric.is_global_zero
        self.run_dir = run_dir_of(cfg)
        self.ckpt_path = resume_checkpoint_path(self.run_dir)
        saved = load_state(self.ckpt_path) if trainer.resume else None
        self.state = LoopState() if saved is None else LoopState.from_checkpoint(saved)
        self.model = self._build_model(saved)
        self._build_data()
        acc = cfg.accumulate_steps
        steps_per_epoch = math.ceil(self.batches / acc)
        total = cfg.epochs * steps_per_epoch if cfg.epochs else cfg.max_steps
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total
        self.checkpoint_every = cfg.checkpoint_every_n_steps or cfg.val_every_n_steps or steps_per_epoch
        self.say(
            f"{self.world} device(s) x batch {cfg.batch_size} x accumulate {acc} = {cfg.global_batch_size} "
            f"images/step; {steps_per_epoch} steps/epoch, {self.total_steps} steps; peak lr {cfg.scaled_lr:.3g} "
            f"(decoders {cfg.scaled_lr * cfg.optim.decoder_lr_factor:.3g}); precision {trainer.precision} "
            f"({trainer.precision_reason})"
        )

        # --- optimisation
        optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(optimizer, cfg, self.total_steps)
        self.wrapper, self.optimizer = fabric.setup(_LossModule(self.model), optimizer)
        self.precision = fabric.strategy.precision
        if saved is not None:
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            if saved.get("precision"):
                self.precision.load_state_dict(saved["precision"])
            if saved.get("world_size") != self.world:
                self.say(
                    f"warning: the run was saved with {saved.get('world_size')} processes, resuming with "
                    f"{self.world}: the data order changes from here"
                )

        # --- logs (a resumed run drops what the interrupted one wrote after its resume point)
        self.csv = self.tensorboard = None
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.to_json(self.run_dir / "train_config.json")
            resumed_at = self.state.step if saved is not None else None
            self.csv = MetricsCsv(self.run_dir / CSV_NAME, resume_step=resumed_at)
            purge = None if resumed_at is None else resumed_at + 1
            self.tensorboard = TensorBoard(self.run_dir / "tensorboard", purge_step=purge)
        self.bar = Progress(self.total_steps, self.state.step, enabled=self.is_main, bar=trainer.progress)
        self.window = _LogWindow()
        self.step_losses: list[torch.Tensor] = []
        self.last_val: dict[str, float] = {}

        # --- RNG: fresh per-rank streams, or exactly where the interrupted run was
        self.model.perm_rng = seed_process(cfg.seed, self.rank)
        if saved is not None and saved.get("world_size") == self.world:
            restore_rng(saved["rng"][self.rank], self.model.perm_rng)

    def say(self, text: str) -> None:
        if self.is_main:
            log.info(text)
            self.fabric.print(text)

    def _build_model(self, saved: dict[str, Any] | None) -> CLIP4STR:
        """The model, identical on every rank (same seed; DDP also broadcasts rank 0's weights)."""
        from clip4str.train.init_model import build_model, parameter_summary

        torch.manual_seed(self.cfg.seed)
        if saved is not None:
            model = CLIP4STR(ModelConfig.from_dict(saved["model_config"]))
            model.load_state_dict(saved["model"])
            model.train()
            s = self.state
            self.say(f"resuming {self.run_dir} at step {s.step} (epoch {s.epoch}, batch {s.batch})")
        else:
            model, report = build_model(self.cfg)
            self.say(report.describe())
        if self.cfg.grad_checkpointing:
            model.clip_model.set_grad_checkpointing(True)
        self.say("parameters:\n" + parameter_summary(model))
        return model

    def _build_data(self) -> None:
        from clip4str.train.data import (
            EpochSampler,
            build_train_dataset,
            build_val_dataset,
            make_loader,
            val_subset,
        )

        cfg, model_cfg, device = self.cfg, self.model.config, self.fabric.device
        train_ds, train_base = build_train_dataset(cfg, model_cfg)
        self.say(f"training samples ({len(train_base):,}):\n{train_base.summary()}")
        self.sampler = EpochSampler(len(train_ds), cfg.batch_size, self.world, self.rank, seed=cfg.seed)
        self.batches = self.sampler.batches_per_epoch
        workers = cap_workers(cfg.data.num_workers, device.type)
        if workers != cfg.data.num_workers:
            self.say(
                f"data.num_workers {cfg.data.num_workers} -> {workers}: this machine has too few CPU cores "
                "for more"
            )
        self.loader = make_loader(
            train_ds,
            cfg.batch_size,
            workers,
            sampler=self.sampler,
            seed=cfg.seed,
            pin_memory=device.type == "cuda",
        )
        val_ds = build_val_dataset(cfg, model_cfg)
        self.val_loader = None
        if val_ds is not None:
            charset_size = len(model_cfg.resolved_charset_test)
            self.say(
                f"validation samples ({len(val_ds):,}, test charset of {charset_size}):\n{val_ds.summary()}"
            )
            self.val_loader = make_loader(
                val_subset(val_ds, cfg.data.max_val_samples, self.world, self.rank),
                cfg.data.val_batch_size or cfg.batch_size,
                workers,
            )

    # ------------------------------------------------------------------------------------- one step
    def micro_batch(self, images: torch.Tensor, labels: list[str]) -> bool:
        """Forward and backward of one micro-batch (gradients synced only on the last of a step) → whether
        it closes an optimizer step."""
        fabric, b = self.fabric, self.state.batch
        closes_step = (b + 1) % self.cfg.accumulate_steps == 0 or b + 1 == self.batches
        with fabric.no_backward_sync(self.wrapper, enabled=not closes_step):
            loss = self.wrapper(fabric.to_device(images), labels)
            fabric.backward(loss / self.cfg.accumulate_steps)
        self.step_losses.append(loss.detach())
        self.window.images += len(labels) * self.world
        self.state.batch += 1
        return closes_step

    def optimizer_step(self) -> float:
        """Clip, step the optimizer and the schedule, log → the step's mean micro-batch loss."""
        cfg, state = self.cfg, self.state
        grad_norm = None
        if cfg.optim.grad_clip > 0:
            grad_norm = self.fabric.clip_gradients(self.wrapper, self.optimizer, max_norm=cfg.optim.grad_clip)
        lrs = [g["lr"] for g in self.optimizer.param_groups]  # the rates this step used
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        step_loss = float(torch.stack(self.step_losses).float().mean())
        self.step_losses = []
        self._log_step(step_loss, lrs, grad_norm)
        return step_loss

    def _log_step(self, step_loss: float, lrs: list[float], grad_norm: torch.Tensor | None) -> None:
        window, step, every = self.window, self.state.step, self.cfg.log_every_n_steps
        window.loss_sum += step_loss
        window.steps += 1
        images_per_s = window.images / max(time.perf_counter() - window.start, 1e-9)
        self.bar.update(step_loss, lrs[0], images_per_s)
        if self.is_main and (step % every == 0 or step == self.total_steps):
            row = {
                "train_loss": window.loss_sum / window.steps,
                "lr": lrs[0],
                "decoder_lr": lrs[2],
                "images_per_s": images_per_s,
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "wall_s": self.state.wall_s(),
            }
            self.csv.write(step=step, epoch=self.state.epoch, **row)  # type: ignore[union-attr]
            self.tensorboard.scalars(step, **{k: v for k, v in row.items() if k != "wall_s"})  # type: ignore[union-attr]
            window.loss_sum, window.steps = 0.0, 0
        if step % every == 0:
            window.start, window.images = time.perf_counter(), 0

    # ------------------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Validate (sums over every rank), log, and keep the model as ``best/`` when it is the best yet."""
        if self.val_loader is None:
            return
        result, loss = self._validation_result()
        state = self.state
        accuracy, ned = result.accuracy, result.one_minus_ned
        self.last_val = {"val_accuracy": accuracy, "val_ned": ned, "val_loss": loss}
        improved = is_better(accuracy, ned, loss, state.best)
        if improved:
            state.best.update(accuracy=accuracy, step=state.step, ned=ned, loss=loss)
        if self.is_main:
            self.csv.write(step=state.step, epoch=state.epoch, wall_s=state.wall_s(), **self.last_val)  # type: ignore[union-attr]
            self.tensorboard.scalars(state.step, **self.last_val)  # type: ignore[union-attr]
            self.bar.write(
                f"step {state.step}: val accuracy {accuracy:.2f}%  1-NED {ned:.2f}  loss {loss:.4f}  "
                f"({result.num_samples} samples){'  [best]' if improved else ''}"
            )
            if improved:
                self._save_model("best")
        self.fabric.barrier()

    def _validation_result(self) -> tuple[DatasetResult, float]:
        """Greedy readings of the validation set (test-charset adapter applied) scored against its labels,
        summed over ranks → (result, mean per-token loss)."""
        model, fabric = self.model, self.fabric
        model.eval()
        result, loss_sum, loss_numel = DatasetResult("val"), 0.0, 0
        with torch.no_grad(), fabric.autocast():
            for images, labels in self.val_loader:  # type: ignore[union-attr]
                logits, loss, numel = model.validation_logits_loss(fabric.to_device(images), list(labels))
                preds, probs = model.tokenizer.decode(logits.float().softmax(-1))
                for pred, label, p in zip(preds, labels, probs):
                    result.add(model.charset_adapter(pred), label, float(p.prod()))
                loss_sum += float(loss) * numel
                loss_numel += numel
        model.train()
        sums = torch.tensor(pack(result, loss_sum, loss_numel), dtype=torch.float64, device=fabric.device)
        if self.world > 1:
            sums = fabric.all_reduce(sums, reduce_op="sum")
        return unpack(sums.tolist(), "val")

    # ------------------------------------------------------------------------------------- saving, stopping
    def _gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def _save_model(self, name: str) -> None:
        from clip4str.checkpoints import save_model

        save_model(self.model, self.run_dir / name, extra_metadata={"step": str(self.state.step)})

    def save_checkpoint(self) -> None:
        """The resume point (every rank's RNG states) and the ``last/`` model."""
        rngs = self._gather(capture_rng(self.model.perm_rng))
        if self.is_main:
            fields = {
                "world_size": self.world,
                "model": self.model.state_dict(),
                "model_config": self.model.config.to_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "precision": self.precision.state_dict(),
                "rng": rngs,
                "config": self.cfg.to_dict(),
            }
            save_state({**self.state.checkpoint_fields(self.batches), **fields}, self.ckpt_path)
            self._save_model("last")
        self.fabric.barrier()

    def stop_requested(self) -> bool:
        """A signal asked to stop (on any rank) before the last step."""
        stop = self.trainer._stop
        return (
            stop is not None
            and self.state.step < self.total_steps
            and stop.requested(self.fabric, self.world)
        )

    def stopped(self) -> TrainingStopped:
        self.bar.close()
        stop = self.trainer._stop
        return TrainingStopped(
            f"stopped by {(stop and stop.signal_name) or 'a signal'} at step {self.state.step} of "
            f"{self.total_steps}: saved the resume point {self.ckpt_path} and the model {self.run_dir / 'last'}; "
            f"continue with `clip4str train --resume {self.run_dir}`"
        )

    def finish(self) -> TrainResult:
        """Close the logs and report; the parameter digests show whether the ranks stayed identical."""
        self.bar.close()
        digest = hashlib.sha256()
        for _, p in sorted(self.model.state_dict().items()):
            digest.update(p.detach().float().cpu().numpy().tobytes())
        digests = self._gather(digest.hexdigest())
        state, best = self.state, self.state.best
        if self.is_main:
            self.tensorboard.close()  # type: ignore[union-attr]
            self.say(
                f"done: step {state.step}; best val accuracy {best['accuracy']} at step {best['step']}; "
                f"wall time {state.wall_s() / 3600:.2f} h over all sessions; "
                f"models in {self.run_dir / 'best'} and {self.run_dir / 'last'}"
            )
        return TrainResult(
            run_dir=self.run_dir,
            step=state.step,
            epoch=state.epoch,
            total_steps=self.total_steps,
            best_accuracy=best["accuracy"],
            best_step=best["step"],
            last_val=self.last_val,
            param_digests=digests,
        )
