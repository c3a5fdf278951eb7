#!/usr/bin/env python3
"""Training throughput (images/s) of CLIP4STR at the official shapes, one device.

Runs the training step of ``clip4str train`` (Fabric precision plugin, PSM loss of both branches with the
official 6 permutations, backward, gradient clipping at 20, AdamW over the official parameter groups,
OneCycle) on random images and random labels of realistic lengths, after a few warm-up steps.

    python benchmarks/bench_train.py                                   # B/16, CPU, fp32, batch 8
    python benchmarks/bench_train.py --device cuda --precision bf16-mixed --batch-size 128
    python benchmarks/bench_train.py --model vit-l14 --device cuda --precision bf16-mixed --batch-size 48

Weights are random (throughput does not depend on their values); the CLIP BPE vocabulary must be found
(``CLIP4STR_BPE_PATH`` or the package's usual places). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import string
import sys
import time

import numpy as np
import torch


def random_labels(n: int, rng: np.random.Generator) -> list[str]:
    """Words of 3..12 characters (mean ~7, like the real training sets) over the 94-character set."""
    chars = string.digits + string.ascii_letters + string.punctuation
    lengths = rng.integers(3, 13, size=n)
    return ["".join(rng.choice(list(chars), size=int(k))) for k in lengths]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="vit-b16", help="architecture preset (default: vit-b16)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--precision", default="32-true", choices=["32-true", "16-mixed", "bf16-mixed", "bf16-true"]
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps (default: 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on CUDA")
    args = parser.parse_args(argv)

    from lightning.fabric import Fabric

    from clip4str.model.clip4str import CLIP4STR
    from clip4str.presets import model_preset
    from clip4str.train.config import load_train_config
    from clip4str.train.optim import build_optimizer, build_scheduler, parameter_groups

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    accelerator = "cuda" if args.device.startswith("cuda") else "cpu"
    fabric = Fabric(accelerator=accelerator, devices=1, precision=args.precision)
    fabric.launch()
    torch.manual_seed(0)
    model = CLIP4STR(model_preset(args.model))  # official freezing: first 6 text layers
    if args.grad_checkpointing:
        model.clip_model.set_grad_checkpointing(True)
    cfg = load_train_config(
        "vit-b16-real", ["devices=1", f"batch_size={args.batch_size}", "effective_batch_size=0"]
    )
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=args.warmup + args.steps + 1)

    class LossModule(torch.nn.Module):
        def __init__(self, m: CLIP4STR) -> None:
            super().__init__()
            self.model = m

        def forward(self, images: torch.Tensor, labels: list[str]) -> torch.Tensor:
            return self.model.training_loss(images, labels)

    wrapper, optimizer = fabric.setup(LossModule(model), optimizer)
    height, width = model.config.clip.vision.image_hw
    rng = np.random.default_rng(0)
    batches = [
        (torch.randn(args.batch_size, 3, height, width), random_labels(args.batch_size, rng))
        for _ in range(args.warmup + args.steps)
    ]

    def step(images: torch.Tensor, labels: list[str]) -> float:
        loss = wrapper(fabric.to_device(images), labels)
        fabric.backward(loss)
        fabric.clip_gradients(wrapper, optimizer, max_norm=20.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def sync() -> None:
        if accelerator == "cuda":
            torch.cuda.synchronize()

    for images, labels in batches[: args.warmup]:
        step(images, labels)
    sync()
    if accelerator == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for images, labels in batches[args.warmup :]:
        t0 = time.perf_counter()
        step(images, labels)
        sync()
        times.append(time.perf_counter() - t0)
    total = sum(times)
    trainable = sum(p.numel() for g in parameter_groups(model).values() for _, p in g)
    result = {
        "model": args.model,
        "device": torch.cuda.get_device_name() if accelerator == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "grad_checkpointing": args.grad_checkpointing,
        "seconds_per_step": round(total / args.steps, 4),
        "images_per_s": round(args.batch_size * args.steps / total, 2),
        "trainable_params": trainable,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if accelerator == "cuda"
        else None,
        "torch": torch.__version__,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
