"""Share of predictions that bf16 autocast leaves unchanged, on real word crops.

No released CLIP4STR weights are available here, so the model is the tiny golden checkpoint
(``../shared/golden/clip4str_tiny.ckpt``, trained on 7 images): its readings of real crops are mostly
wrong, but whether bf16 changes them is still a measure of how far bf16 moves the decoding. Run it with a
real checkpoint (``--model``) to get the number that matters.

    python benchmarks/bf16_agreement.py --images ../shared/realdata/iiit5k_test --limit 300
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

from clip4str.checkpoints import load_model
from clip4str.data.transforms import load_image, preprocess


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(here.parent / "shared" / "golden" / "clip4str_tiny.ckpt"))
    p.add_argument("--images", default=str(here.parent / "shared" / "realdata" / "iiit5k_test"))
    p.add_argument("--limit", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    folder = Path(args.images)
    with open(folder / "labels.tsv", newline="") as f:
        names = [row["filename"] for row in csv.DictReader(f, delimiter="\t")][: args.limit]
    device = torch.device(args.device)
    model = load_model(args.model).to(device).eval()
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float16
    same_text = 0
    conf_diffs: list[float] = []
    seconds = {"fp32": 0.0, args.precision: 0.0}
    for start in range(0, len(names), args.batch_size):
        batch = names[start : start + args.batch_size]
        pixels = preprocess([load_image(folder / n) for n in batch], model.config.preprocess).to(device)
        readings = {}
        for precision in ("fp32", args.precision):
            t0 = time.perf_counter()
            with (
                torch.inference_mode(),
                torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32"),
            ):
                logits = model.decode(pixels).float()
            seconds[precision] += time.perf_counter() - t0
            texts, probs = model.tokenizer.decode(logits.softmax(-1))
            readings[precision] = (texts, [float(q.prod()) for q in probs])
        for a, ca, b, cb in zip(*readings["fp32"], *readings[args.precision]):
            same_text += a == b
            conf_diffs.append(abs(ca - cb))
        print(f"{start + len(batch)}/{len(names)}", file=sys.stderr, flush=True)
    n = len(names)
    conf_diffs.sort()
    print(f"model {args.model}")
    print(f"images {n} from {folder}")
    print(f"{args.precision} predictions unchanged: {same_text}/{n} = {same_text / n:.1%}")
    print(f"|confidence change|: median {conf_diffs[n // 2]:.4f}, max {conf_diffs[-1]:.4f}")
    print(f"decode time: fp32 {seconds['fp32']:.1f}s, {args.precision} {seconds[args.precision]:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
