"""Command-line options shared by commands: --threads (one option, a measured default), input expansion."""

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


def test_a_folder_and_an_overlapping_glob_read_each_file_once(tmp_path):
    from clip4str.cli.read import expand_paths

    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"x")
    found, unmatched = expand_paths([str(tmp_path), str(tmp_path / "*.png"), str(tmp_path / "a.png")])
    assert found == [str(tmp_path / "a.png"), str(tmp_path / "b.png")] and unmatched == []


def test_model_commands_say_what_they_do_before_loading(capsys, monkeypatch):
    import clip4str.cli as cli

    assert cli.main(["export", "no-such-model-name", "out-dir-never-written"]) == 1
    assert len(capsys.readouterr().err.splitlines()) == 1  # not a terminal: the error alone
    monkeypatch.setattr(cli, "_on_terminal", lambda: True)
    assert cli.main(["export", "no-such-model-name", "out-dir-never-written"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "clip4str export: loading ..." and "no-such-model-name" in err[-1]
