"""Project-level promises: import hygiene, the command-line entry point."""

from __future__ import annotations

import subprocess
import sys


def test_inference_imports_neither_lightning_nor_augmentation():
    code = (
        "import sys, clip4str, clip4str.api, clip4str.checkpoints, clip4str.cli;"
        "clip4str.cli.build_parser();"
        "bad = [m for m in ('lightning', 'pytorch_lightning', 'kornia', 'torchvision', 'timm', 'open_clip',"
        " 'clip4str.train', 'clip4str.data.augment') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_help_lists_the_commands():
    out = subprocess.run(
        [sys.executable, "-m", "clip4str", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("read", "models"):
        assert command in out


def test_cli_version_and_subcommand_usage_on_bad_flags(capsys):
    import pytest

    from clip4str import __version__
    from clip4str.cli import main

    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["lmdb", "create", "--labels", "x", "--out", "y", "--images-dir", "z"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: clip4str lmdb create" in err and "--images-dir" in err
