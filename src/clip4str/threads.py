"""How many CPU threads one process computes with (``--threads`` on every command that runs a model).

Measured on this project's 2-core machines (issue 22): beside other busy processes, the default two intra-op
threads read 647 crops with the small model in 88-178 s, one thread in 28-37 s; two processes with two threads
each collapse. A small model gains little from a second thread even on a quiet machine, so the default is
**one thread for small models** (under :data:`SMALL_MODEL_PARAMS` parameters) and torch's own choice (all
cores) for the released ViT models, whose large matrix products do use them.
"""

from __future__ import annotations

import os
import sys

SMALL_MODEL_PARAMS = 30_000_000


def set_threads(count: int) -> None:
    """Use ``count`` intra-op threads in this process (torch, and OpenMP libraries loaded later)."""
    if count < 1:
        raise ValueError(f"--threads must be >= 1, got {count}")
    os.environ["OMP_NUM_THREADS"] = str(count)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(count)


def default_threads(num_params: int) -> int | None:
    """The thread count for a model of ``num_params`` parameters on the CPU (None: torch's default)."""
    return 1 if num_params < SMALL_MODEL_PARAMS else None
