"""``clip4str`` command line: one sub-module per command group, each exposing ``register(subparsers)``.

Sub-modules only parse arguments and call into the library; heavy imports happen inside the handlers so
``clip4str read`` never imports the trainer.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
    from clip4str import __version__

    parser = argparse.ArgumentParser(
        prog="clip4str", description="CLIP4STR scene text recognition: read, evaluate, train, make datasets."
    )
    parser.add_argument("--version", action="version", version=f"clip4str {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    _add_threads_option(subparsers)
    _remember_parsers(parser)
    return parser


THREADED_COMMANDS = ("read", "eval", "explain", "serve", "train", "export")
MODEL_COMMANDS = (*THREADED_COMMANDS, "bench", "batch")


def _add_threads_option(subparsers: argparse._SubParsersAction) -> None:
    """``--threads N`` on every command that runs a model (one spelling, one meaning: intra-op threads)."""
    for name in THREADED_COMMANDS:
        sub = subparsers.choices.get(name)
        if sub is not None and not any("--threads" in a.option_strings for a in sub._actions):
            sub.add_argument(
                "--threads",
                type=int,
                default=None,
                metavar="N",
                help="CPU threads for the model's computation (default: 1 for the small model, "
                "all cores for larger ones; see docs/benchmarks.md)",
            )


def _remember_parsers(parser: argparse.ArgumentParser) -> None:
    """Record each (sub)command's own parser in its namespace, so errors print that command's usage."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.set_defaults(command_parser=sub)
                _remember_parsers(sub)


def _on_terminal() -> bool:
    return sys.stderr.isatty()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    if args.command in MODEL_COMMANDS and not getattr(args, "print_config", False) and _on_terminal():
        # importing torch and loading a model takes seconds (tens on a loaded machine): say so at once; in a
        # log or a pipe, stderr keeps one line per error
        print(f"clip4str {args.command}: loading ...", file=sys.stderr, flush=True)
    try:
        if getattr(args, "threads", None) is not None:
            from clip4str.threads import set_threads

            set_threads(args.threads)
        return int(args.handler(args) or 0)
    except BrokenPipeError:
        # Output piped into e.g. `head`: stop quietly.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as err:
        if err.name != "torch" or getattr(args, "debug", False):
            raise
        print(
            f"clip4str {args.command}: error: this needs PyTorch, which is not installed here (without it, "
            "read with --runtime onnx: docs/deploy.md)",
            file=sys.stderr,
        )
        return 1
    except Exception as err:  # noqa: BLE001 - the CLI turns known errors into one clear line
        from clip4str.errors import Clip4strError

        if isinstance(err, (Clip4strError, OSError, ValueError)) and not getattr(args, "debug", False):
            print(f"clip4str {args.command}: error: {err}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
