"""``clip4str explain``: draw where the model looked for each character it read."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from clip4str.cli.read import load_recognizer
    from clip4str.data.transforms import load_image
    from clip4str.explain import attention_figure, explain

    image = load_image(args.image)  # a bad path fails here, before the model loads
    if args.out is not None and args.out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise ValueError(f"--out {args.out}: use a .png, .jpg or .webp file name")
    reader = load_recognizer(args)
    ex = explain(reader, [image], figure=False)[0]
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        attention_figure(image, ex).save(args.out)
    if args.json:
        print(json.dumps({"path": args.image, **ex.to_dict()}, ensure_ascii=False))
    else:
        saved = f"\t{args.out}" if args.out is not None else ""
        print(f"{args.image}\t{ex.text}\t{ex.confidence:.4f}{saved}")
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
        "--json", action="store_true", help="print text, probabilities and the maps (rows x cols) as JSON"
    )
    add_decoding_arguments(parser)
    parser.add_argument(
        "--charset-test",
        default=None,
        help="restrict the captions to a charset: a preset, file or characters",
    )
    parser.set_defaults(handler=run)
