"""``clip4str train``: train or fine-tune CLIP4STR from a recipe (preset or JSON file) with overrides."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune a model from a recipe preset or JSON config",
        description=(
            "Train CLIP4STR. --config takes a preset name (see --list-presets) or a JSON file; --set changes "
            "any field (dotted for nested ones). Bad values are reported before any work starts."
        ),
        epilog=(
            "examples:\n"
            "  clip4str train --config vit-b16-real --set data.train_root=/data/train/real "
            "data.val_root=/data/val\n"
            "  clip4str train --config tiny --set max_steps=100\n"
            "  clip4str train --config vit-b16-real --variant ladder   (see --list-variants)\n"
            "  clip4str train --resume runs/clip4str-b16-real\n"
            "  clip4str train --config vit-b16-real --set init=checkpoint:clip4str_base16x16_d70bde1f2d.ckpt "
            "charset_train=vietnamese"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="preset name or JSON file")
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. batch_size=64 optim.lr=1e-4 data.num_workers=2",
    )
    parser.add_argument(
        "--variant",
        dest="variants",
        action="append",
        default=[],
        metavar="NAME",
        help="lay a model variant over the recipe's model (repeatable; a shipped name or a JSON file)",
    )
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint"
    )
    parser.add_argument("--list-presets", action="store_true", help="list the shipped recipes and exit")
    parser.add_argument(
        "--list-variants", action="store_true", help="list the shipped model variants and exit"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate the config (paths included) and exit"
    )
    parser.add_argument(
        "--quiet",
        "--no-progress",
        dest="quiet",
        action="store_true",
        help="no progress bar: a plain progress line every 30 s instead (as when stderr is not a terminal)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from clip4str.config import ConfigError
    from clip4str.train.config import load_train_config, train_preset_names

    if args.list_presets:
        for name in train_preset_names():
            cfg = load_train_config(name)
            print(
                f"{name:<16} {cfg.model_preset:<8} init={cfg.init}  {cfg.world_size}x{cfg.batch_size}x"
                f"{cfg.accumulate_steps}={cfg.global_batch_size}  epochs={cfg.epochs or '-'}  "
                f"precision={cfg.precision}"
            )
        return 0
    if args.list_variants:
        from clip4str.presets import VARIANTS, variant_description

        for name in VARIANTS:
            print(f"{name:<26} {variant_description(name)}")
        return 0
    if args.resume:
        from clip4str.train.trainer import load_run_config

        overrides = [*args.overrides, f"output_dir={json.dumps(args.resume)}"]
        if args.variants:  # refused by the resume check unless they are the run's own
            overrides.append(f"variants={json.dumps(args.variants)}")
        cfg = load_run_config(args.resume, overrides)
    elif args.config:
        cfg = load_train_config(args.config, args.overrides)
        if args.variants:
            cfg = dataclasses.replace(cfg, variants=[*cfg.variants, *args.variants])
    else:
        raise ConfigError("give --config PRESET|FILE (see --list-presets) or --resume RUN_DIR")
    if getattr(args, "threads", None) is not None:  # the recipe's `threads`, as every other command spells it
        cfg = dataclasses.replace(cfg, threads=args.threads)
    if args.print_config:
        print(cfg.to_json())
        return 0
    cfg.validate(check_paths=True, check_init=not args.resume)
    if args.dry_run:
        print(
            f"config OK: {cfg.name}, {cfg.global_batch_size} images/step, peak lr {cfg.scaled_lr:.3g}, "
            f"output {cfg.output_dir}",
            file=sys.stderr,
        )
        return 0
    from clip4str.train.trainer import Trainer, TrainingStopped

    try:
        result = Trainer(cfg, resume=bool(args.resume), progress=not args.quiet).fit()
    except TrainingStopped as stopped:  # SIGTERM / Ctrl-C: a resume point was saved
        print(f"clip4str train: {stopped}", file=sys.stderr)
        return 143 if "SIGTERM" in str(stopped) else 130
    print(
        json.dumps(
            {
                "run_dir": str(result.run_dir),
                "step": result.step,
                "best_accuracy": result.best_accuracy,
                "best_step": result.best_step,
                **result.last_val,
            }
        )
    )
    return 0
