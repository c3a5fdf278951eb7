"""``clip4str export``: any supported checkpoint → the package's own format (optionally at half precision),
or ONNX graphs with a manifest (``--format onnx``, optionally ``--int8``) for the torch-free reader."""

from __future__ import annotations

import argparse
from pathlib import Path

DTYPES = ("fp32", "bf16", "fp16")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a model in the package's own format (safetensors + config.json)",
        description=(
            "Load a model (release name, official .ckpt/.pt, or own-format folder) and write it as a folder "
            "holding config.json and model.safetensors, which `clip4str read --model DIR` and "
            "`clip4str.load(DIR)` read without unpickling anything. --dtype bf16/fp16 halves the file; "
            "loading always builds an fp32 model."
        ),
    )
    parser.add_argument("model", help="release name or checkpoint path")
    parser.add_argument(
        "out", help="folder to write (created; existing model files there are replaced only with --overwrite)"
    )
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="precision of the stored weights")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace model files already in OUT (never the source model)"
    )
    parser.add_argument(
        "--format",
        choices=("safetensors", "onnx"),
        default="safetensors",
        help="safetensors (default) or onnx: graphs + manifest.json for `clip4str read --runtime onnx` and "
        "the torch-free reader (docs/deploy.md); an existing non-empty OUT is refused without --overwrite",
    )
    parser.add_argument("--int8", action="store_true", help="with --format onnx: dynamic int8 quantization")
    parser.add_argument(
        "--visual-only",
        action="store_true",
        help="with --format onnx: no text branch (e.g. non-CLIP text encoders)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from clip4str.config import parse_overrides
    from clip4str.factory import create_model
    from clip4str.files import OutputGuard
    from clip4str.weights import CONFIG_NAME, WEIGHTS_NAME, save_model

    guard = OutputGuard("clip4str export", overwrite=args.overwrite)  # never the source: files.OutputGuard
    guard.protect_model(args.model, "MODEL")
    if args.format == "onnx":
        from clip4str.deploy.onnx_export import run_export

        return run_export(args, guard)
    if args.int8 or args.visual_only:
        raise ValueError("--int8 and --visual-only need --format onnx")
    for name in (WEIGHTS_NAME, CONFIG_NAME):  # checked before the model loads
        guard.claim(Path(args.out) / name, "OUT", parents=True)
    model = create_model(args.model, **parse_overrides(args.overrides))
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    out = save_model(model, args.out, dtype=dtype, guard=guard)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MB, {args.dtype})")
    return 0
