"""``clip4str explain``: draw where the model looked for each character it read."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from clip4str.cli.output import json_line, tsv_line
    from clip4str.cli.read import load_recognizer
    from clip4str.data.transforms import load_image
    from clip4str.explain import attention_figure, explain
    from clip4str.files import OutputGuard

    image = load_image(args.image)  # a bad path fails here, before the model loads
    guard = OutputGuard("clip4str explain", overwrite=args.overwrite)
    if args.out is not None:
        if args.out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
            raise ValueError(f"--out {args.out}: use a .png, .jpg or .webp file name")
        guard.protect(args.image, "the input image")
        guard.protect_model(args.model)
        guard.claim(args.out, "--out", parents=True)  # never over the input or the model
    reader = load_recognizer(args)
    ex = explain(reader, [image], figure=False)[0]
    if args.out is not None:
        guard.save_image(attention_figure(image, ex), args.out, "--out")
    if args.json:  # the one output writer: lines that parse whatever the names and text hold
        print(json_line({"path": args.image, **ex.to_dict()}))
    else:
        saved = [str(args.out)] if args.out is not None else []
        print(tsv_line(args.image, ex.text, f"{ex.confidence:.4f}", *saved))
    if args.out is None and not args.json:
        print("clip4str explain: no --out given: only the reading was printed", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from clip4str.cli.read import add_decoding_arguments

    parser = subparsers.add_parser(
        "explain",
        help="attention maps: where the model looked for each character",
        description="Read one image and draw, for each character read, the final decoder's cross-attention "
        "over the image patches (averaged over heads) on top of the image. Prints path<TAB>text<TAB>confidence.",
    )
    parser.add_argument("image", metavar="IMAGE", help="a word image")
    parser.add_argument("--out", type=Path, default=None, help="where to save the figure (PNG)")
    parser.add_argument(
        "--overwrite", action="store_true", help="let --out replace an existing file (never the input image)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print text, probabilities and the maps (rows x cols) as JSON"
    )
    add_decoding_arguments(parser)
    parser.add_argument(
        "--charset-test",
        default=None,
        help="restrict the captions to a charset: a preset, file or characters",
    )
    parser.set_defaults(handler=run)
