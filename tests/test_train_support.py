"""Helpers shared by the training tests: word-image LMDBs and tiny training configs (no tests here)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from clip4str.data.lmdb_writer import LmdbWriter

WORDS_64 = [
    "cat",
    "dog",
    "sun",
    "map",
    "red",
    "box",
    "key",
    "pen",
    "tree",
    "bird",
    "fish",
    "road",
    "lamp",
    "door",
    "milk",
    "rain",
    "apple",
    "house",
    "river",
    "stone",
    "light",
    "green",
    "table",
    "chair",
    "window",
    "garden",
    "bottle",
    "pencil",
    "rocket",
    "silver",
    "planet",
    "winter",
    "a1",
    "b2",
    "c3",
    "d4",
    "e5",
    "f6",
    "g7",
    "h8",
    "42",
    "777",
    "2024",
    "9081",
    "365",
    "12",
    "50",
    "8",
    "zebra",
    "quick",
    "jumps",
    "vexed",
    "wizard",
    "oxygen",
    "yellow",
    "kitten",
    "hello",
    "world",
    "clip",
    "text",
    "scene",
    "read",
    "model",
    "token",
]
assert len(set(WORDS_64)) == 64


def render_word(word: str, index: int = 0, size: tuple[int, int] = (96, 32)) -> bytes:
    """A PNG of ``word`` in black on a light background (shade varies a little with ``index``)."""
    w, h = size
    shade = 235 + (index * 7) % 20
    img = Image.new("RGB", (w, h), (shade, shade, shade))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    x = (w - (right - left)) // 2 - left
    y = (h - (bottom - top)) // 2 - top
    draw.text((x, y), word, fill=(10, 10, 10), font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_word_lmdb(path: Path, words: list[str], repeats: int = 1) -> Path:
    with LmdbWriter(path) as writer:
        for r in range(repeats):
            for i, word in enumerate(words):
                writer.add(render_word(word, i + r), word)
    return path


def tiny_config_dict(tmp: Path, train: Path, val: Path | None, **top: Any) -> dict[str, Any]:
    """A tiny random-init run on 32x32 images (4x4 patches of 8 px) for CPU tests."""
    cfg: dict[str, Any] = {
        "name": "test",
        "model_preset": "tiny",
        "model": {
            "clip": {"vision": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 1}},
            "preprocess": {"image_size": [32, 32]},
            "decoder": {"dropout": 0.1},
            "max_label_length": 8,
        },
        "charset_train": "36",
        "charset_test": "36",
        "data": {
            "train_root": [str(train)],
            "val_root": [str(val)] if val else [],
            "augment": False,
            "num_workers": 0,
        },
        "optim": {
            "lr": 1e-3,
            "decoder_lr_factor": 1.0,
            "weight_decay": 0.0,
            "warmup_pct": 0.2,
            "lr_scaling": "none",
        },
        "batch_size": 8,
        "accumulate": 1,
        "accelerator": "cpu",
        "precision": "32-true",
        "max_steps": 6,
        "log_every_n_steps": 1,
        "seed": 0,
        "output_dir": str(tmp / "run"),
    }
    cfg.update(top)
    return cfg
