"""--threads: one option on every command that runs a model, and a measured default."""

from __future__ import annotations

import pytest

from clip4str.cli import THREADED_COMMANDS, build_parser
from clip4str.threads import SMALL_MODEL_PARAMS, default_threads, set_threads


def test_every_model_command_takes_threads():
    parser = build_parser()
    positional = {"read": ["x"], "explain": ["x"], "export": ["a", "b"]}
    for command in THREADED_COMMANDS:
        args = parser.parse_args([command, "--threads", "3", *positional.get(command, [])])
        assert args.threads == 3, command
    assert parser.parse_args(["read", "x"]).threads is None


def test_default_is_one_thread_for_small_models_only():
    assert default_threads(9_600_000) == 1
    assert default_threads(SMALL_MODEL_PARAMS + 1) is None


def test_set_threads_reaches_torch(monkeypatch):
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="--threads"):
        set_threads(0)


def test_train_threads_overrides_the_recipe(capsys):
    from clip4str.cli import main

    assert main(["train", "--config", "tiny", "--threads", "1", "--print-config"]) == 0
    assert '"threads": 1' in capsys.readouterr().out
