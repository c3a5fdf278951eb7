#!/usr/bin/env python3
"""A contact sheet of a recipe's rendered training words beside real *training* crops (never test crops).

    python scripts/contact_sheet.py                                  # recipe small-long -> docs/images/synth-vs-real.jpg
    python scripts/contact_sheet.py --config my.json --count 40 --out sheet.png

The rendered words are the first ``--count`` of the recipe's ``data.synth`` stream, exactly as training reads
them before augmentation (so the fonts of ``scripts/install_fonts.py`` must be installed); the real crops are
drawn with a fixed seed from ``../shared/realdata/*_train``. Both are shown at the model's input shape, with
their labels underneath. Also prints the rendering speed (ms per word, one process, over the ``--speed``
words after the sheet's: the first use of each font costs more, so the figure falls as fonts are met).
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REAL_SETS = ("iiit5k_train", "ic15_word_train", "svt_train")


def real_training_crops(shared: Path, count: int, seed: int) -> list[tuple[Image.Image, str]]:
    rows = []
    for name in REAL_SETS:
        with open(shared / name / "labels.tsv", encoding="utf-8") as f:
            rows += [(shared / name / r["filename"], r["label"]) for r in csv.DictReader(f, delimiter="\t")]
    picked = random.Random(seed).sample(rows, count)
    return [(Image.open(path).convert("RGB"), label) for path, label in picked]


def grid(items: list[tuple[Image.Image, str]], title: str, cols: int, cell: tuple[int, int]) -> Image.Image:
    """Images resized to ``cell`` (the model's input shape, scaled), labels underneath, a title on top."""
    from clip4str.data.synth import _bundled_dejavu_fonts

    font_path = next((str(f) for f in _bundled_dejavu_fonts() if f.name == "DejaVuSans.ttf"), None)
    font = ImageFont.truetype(font_path, 13) if font_path else ImageFont.load_default()
    title_font = ImageFont.truetype(font_path, 18) if font_path else font
    w, h = cell
    pad, label_h, title_h = 6, 16, 30
    rows = (len(items) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (w + pad) + pad, title_h + rows * (h + label_h + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 5), title, fill="black", font=title_font)
    for k, (img, label) in enumerate(items):
        x = pad + (k % cols) * (w + pad)
        y = title_h + (k // cols) * (h + label_h + pad)
        sheet.paste(img.resize((w, h), Image.Resampling.BICUBIC), (x, y))
        draw.text((x, y + h + 1), label, fill=(40, 40, 40), font=font)
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="small-long", help="training recipe (name or file)")
    parser.add_argument("--count", type=int, default=36, help="images of each kind (default 36)")
    parser.add_argument("--cols", type=int, default=6)
    parser.add_argument("--shared", default="../shared/realdata", help="folder holding the *_train sets")
    parser.add_argument("--seed", type=int, default=0, help="which real crops (default 0)")
    parser.add_argument("--out", default="docs/images/synth-vs-real.jpg")
    parser.add_argument(
        "--speed", type=int, default=1000, help="words rendered after the sheet's to time the steady state"
    )
    args = parser.parse_args(argv)

    from clip4str.train.config import load_train_config, resolve_model_config
    from clip4str.train.data import build_synth_dataset

    cfg = load_train_config(args.config)
    if not cfg.data.synth.count:
        print(f"contact_sheet: {args.config} renders no words (data.synth.count is 0)", file=sys.stderr)
        return 2
    model_cfg = resolve_model_config(cfg)
    synth = build_synth_dataset(cfg, model_cfg)
    rendered = [synth[i] for i in range(args.count)]
    start = time.perf_counter()
    for i in range(args.count, args.count + args.speed):
        synth[i]
    per_word = (time.perf_counter() - start) / max(1, args.speed)
    h, w = (
        model_cfg.preprocess.image_size
        if not isinstance(model_cfg.preprocess.image_size, int)
        else (
            model_cfg.preprocess.image_size,
            model_cfg.preprocess.image_size,
        )
    )
    cell = (w * 2, h * 2)
    real = real_training_crops(Path(args.shared), args.count, args.seed)
    left = grid(
        rendered, f"rendered while training ({args.config}, {len(synth.cfg.fonts)} fonts)", args.cols, cell
    )
    right = grid(real, "real training crops (IIIT5K, IC15, SVT train)", args.cols, cell)
    sheet = Image.new("RGB", (left.width + right.width + 20, max(left.height, right.height)), "white")
    sheet.paste(left, (0, 0))
    sheet.paste(right, (left.width + 20, 0))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    print(
        f"wrote {out} ({sheet.width}x{sheet.height}); rendering: {per_word * 1000:.1f} ms per word, one process"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
