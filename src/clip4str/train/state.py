"""Resume checkpoints: everything needed to continue a run at the same step, written atomically.

A resume checkpoint (``RUN_DIR/checkpoints/last.ckpt``) holds the model, optimizer, scheduler and
gradient-scaler states, the position in the data (epoch and batch), every rank's RNG states (torch,
CUDA, numpy, Python and the model's permutation generator), the best validation score so far and the
training config. It is written to a temporary file in the same folder, flushed to disk, then renamed
over the old one: a kill at any moment leaves either the previous or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clip4str.errors import CheckpointError, WriteError
from clip4str.files import write_failure
from clip4str.weights import atomic_write

STATE_FORMAT = "clip4str-train-state"
STATE_VERSION = 1
RESUME_NAME = "last.ckpt"


def save_state(state: dict[str, Any], path: str | Path) -> Path:
    """Write a resume checkpoint atomically.

    Raises:
        CheckpointError: the write failed (e.g. a full disk); the previous checkpoint at ``path`` is intact.
    """
    payload = {"format": STATE_FORMAT, "version": STATE_VERSION, **state}
    try:
        return atomic_write(path, lambda tmp: torch.save(payload, tmp))
    except (OSError, RuntimeError) as err:
        raise WriteError(write_failure(Path(path), err)) from err


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a resume checkpoint written by :func:`save_state` (CPU tensors)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"resume checkpoint not found: {path}")
    from clip4str.safe_pickle import load_pickle

    state = load_pickle(path)  # tensors and plain containers only; CheckpointError naming the file
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(
            f"{path} is not a clip4str training checkpoint (to fine-tune from a model, use init=checkpoint:PATH)"
        )
    if state.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path}: training checkpoint version {state.get('version')} is not supported")
    return state


# ------------------------------------------------------------------------------------------------ RNG
# States are stored as tensors and plain Python values: the restricted reader accepts nothing else.
def _np_state_to_plain(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = state
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }


def _np_state_from_plain(d: dict[str, Any]) -> tuple:
    keys = d["keys"].numpy().astype(np.uint32)
    return (d["name"], keys, d["pos"], d["has_gauss"], d["gauss"])


def capture_rng(perm_rng: np.random.Generator | None = None) -> dict[str, Any]:
    """This process's RNG states (torch CPU and CUDA, numpy, Python, the model's permutation generator)."""
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _np_state_to_plain(np.random.get_state()),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    if perm_rng is not None:
        out["perm_rng"] = perm_rng.bit_generator.state
    return out


def restore_rng(states: dict[str, Any], perm_rng: np.random.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(states["torch"])
    np.random.set_state(_np_state_from_plain(states["numpy"]))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if perm_rng is not None and "perm_rng" in states:
        perm_rng.bit_generator.state = states["perm_rng"]


def seed_process(seed: int, rank: int) -> np.random.Generator:
    """Seed torch, numpy and Python for ``rank`` and return a permutation generator for the model.

    Ranks get different streams (``seed + rank``), so they draw different permutations and dropout masks.
    """
    s = seed + rank
    torch.manual_seed(s)
    np.random.seed(s % (1 << 32))
    random.seed(s)
    return np.random.default_rng([seed, rank])


# ------------------------------------------------------------------------------------------ loop state
def no_best() -> dict[str, Any]:
    """The best validation before any: accuracy, step, 1-NED and loss unknown."""
    return {"accuracy": None, "step": None, "ned": None, "loss": None}


@dataclass
class LoopState:
    """Where a run stands, saved in every resume checkpoint and read back from it.

    ``epoch``/``batch``: the epoch of the micro-batches read last and how many of its micro-batches this
    rank has read (``batch`` reaches ``batches_per_epoch`` at an epoch's end; :meth:`position` turns that
    into the start of the next epoch). ``wall_before_s``: the training wall time of earlier sessions.
    """

    step: int = 0
    epoch: int = 0
    batch: int = 0
    best: dict[str, Any] = field(default_factory=no_best)
    wall_before_s: float = 0.0
    session_start: float = field(default_factory=time.perf_counter, repr=False)

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> LoopState:
        """The state a resume checkpoint (:func:`load_state`) holds; ``wall_s`` is absent in early ones."""
        return cls(
            step=saved["step"],
            epoch=saved["epoch"],
            batch=saved["batch"],
            best=saved["best"],
            wall_before_s=float(saved.get("wall_s", 0.0)),
        )

    def wall_s(self) -> float:
        """Wall time of the whole run so far, summed over every session that resumed it (s)."""
        return round(self.wall_before_s + time.perf_counter() - self.session_start, 1)

    def position(self, batches_per_epoch: int) -> tuple[int, int]:
        """(epoch, batch) of the next micro-batch to read: where a resumed run starts."""
        if self.batch >= batches_per_epoch:
            return self.epoch + 1, 0
        return self.epoch, self.batch

    def checkpoint_fields(self, batches_per_epoch: int) -> dict[str, Any]:
        """The resume checkpoint's ``step``, ``epoch``, ``batch``, ``best`` and ``wall_s``."""
        epoch, batch = self.position(batches_per_epoch)
        return {"step": self.step, "epoch": epoch, "batch": batch, "best": self.best, "wall_s": self.wall_s()}
