"""Which precision is fastest on this machine: ``precision="auto"`` for reading and training.

bfloat16 autocast is a win only where the hardware computes it natively: about 1.4x faster training on a
CPU with AVX-512 BF16, but about 10x *slower* on an AVX2-only CPU, where every bf16 matmul is emulated.
So "auto" never assumes:

* CUDA: bf16 when the GPU supports it (Ampere and later), else fp16 (fp16 autocast is for inference;
  training maps it to ``16-mixed`` with a gradient scaler).
* CPU: fp32 unless the CPU reports native bf16 (``avx512_bf16`` or ``amx_bf16`` on x86, ``bf16`` on Arm);
  when it does, a small matmul is timed both ways and bf16 is chosen only if it is measurably faster.

The result is cached per device type for the process; :attr:`PrecisionChoice.reason` says why.
"""

from __future__ import annotations

import functools
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # /proc/cpuinfo flags (x86) / Features (Arm)
MIN_SPEEDUP = 1.1  # bf16 must beat fp32 by this factor in the probe to be chosen


@dataclass(frozen=True)
class PrecisionChoice:
    """``precision``: 'fp32', 'bf16' or 'fp16' (autocast dtype names); ``reason``: one line for the logs."""

    precision: str
    reason: str


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The native-bf16 feature flags this CPU reports (empty when none, or when they cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
    words: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            words.update(value.split())
    return [f for f in NATIVE_BF16_FLAGS if f in words]


def _matmul_seconds(dtype: torch.dtype | None, repeats: int = 3) -> float:
    """Best time of a (256 x 192) @ (192 x 768) matmul, fp32 or under CPU autocast to ``dtype``."""
    a, b = torch.randn(256, 192), torch.randn(192, 768)
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        start = time.perf_counter()
        if dtype is None:
            torch.mm(a, b)
        else:
            with torch.autocast("cpu", dtype=dtype):
                torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return best


@functools.lru_cache(maxsize=4)
def _choose(device_type: str) -> PrecisionChoice:
    if device_type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", "the GPU computes bf16 natively")
        return PrecisionChoice("fp16", "the GPU has no native bf16; fp16 autocast")
    if device_type != "cpu":
        return PrecisionChoice("fp32", f"no measured mixed precision for device {device_type!r}")
    flags = cpu_bf16_flags()
    if not flags:
        return PrecisionChoice(
            "fp32",
            f"this CPU ({platform.machine()}) reports no native bf16 (no {'/'.join(NATIVE_BF16_FLAGS[:2])}): "
            "bf16 would be emulated, often many times slower",
        )
    with torch.inference_mode():
        fp32, bf16 = _matmul_seconds(None), _matmul_seconds(torch.bfloat16)
    speedup = fp32 / bf16 if bf16 > 0 else 0.0
    measured = f"native bf16 ({', '.join(flags)}); probe matmul bf16 {speedup:.2f}x the speed of fp32"
    if speedup >= MIN_SPEEDUP:
        return PrecisionChoice("bf16", measured)
    return PrecisionChoice("fp32", measured + f" (below {MIN_SPEEDUP}x)")


def choose_precision(device: str | torch.device = "cpu") -> PrecisionChoice:
    """The faster of bf16 (or fp16 on a GPU without bf16) and fp32 on ``device``, and why."""
    return _choose(torch.device(device).type)


LIGHTNING_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


def training_precision(precision: str, accelerator: str = "auto") -> tuple[str, str]:
    """A Lightning precision for ``precision`` ('auto' or a Lightning name) and why it was chosen.

    'auto' picks :func:`choose_precision` for the device ``accelerator`` trains on.
    """
    if precision != "auto":
        return precision, "as configured"
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    choice = choose_precision("cuda" if on_gpu else "cpu")
    return LIGHTNING_PRECISION[choice.precision], f"auto: {choice.reason}"
