"""Resume: a run killed mid-way and resumed ends with the same weights as an uninterrupted one;
checkpoint writes are atomic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train_support import WORDS_64, make_word_lmdb, tiny_config_dict

from clip4str.checkpoints import read_checkpoint
from clip4str.config import ConfigError
from clip4str.train import state as state_mod
from clip4str.train.config import load_train_config
from clip4str.train.logs import read_metrics
from clip4str.train.trainer import StepInfo, Trainer, load_run_config


class Killed(RuntimeError):
    pass


def kill_at_step_5(info: StepInfo) -> None:
    if info.step == 5:
        raise Killed("simulated kill")


@pytest.fixture(scope="module")
def words_lmdb(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_data")
    # labels of 2..6 characters: permutations come from both numpy (< 5 chars) and torch.randperm
    return make_word_lmdb(root / "train", WORDS_64[:24])


def _config(tmp_path, train, name):
    d = tiny_config_dict(tmp_path / name, train, None, max_steps=7, batch_size=4, accumulate=2)
    d["checkpoint_every_n_steps"] = 2
    d["data"]["augment"] = True  # seeded per sample: must replay identically
    return load_train_config(d)


def test_killed_and_resumed_run_ends_with_identical_weights(
    tmp_path, words_lmdb, bpe_path, monkeypatch
) -> None:
    monkeypatch.setenv("CLIP4STR_BPE_PATH", str(bpe_path))
    torch.set_num_threads(1)
    full = _config(tmp_path, words_lmdb, "full")
    result = Trainer(full, progress=False).fit()
    assert result.step == 7 and result.epoch == 2  # 6 batches/epoch, accumulate 2: 3 steps/epoch

    cut = _config(tmp_path, words_lmdb, "cut")
    with pytest.raises(Killed):
        Trainer(cut, progress=False, on_step_end=[kill_at_step_5]).fit()
    saved = state_mod.load_state(tmp_path / "cut" / "run" / "checkpoints" / "last.ckpt")
    assert (saved["step"], saved["epoch"], saved["batch"]) == (4, 1, 2)  # mid-epoch, mid-accumulation cycle
    assert saved["wall_s"] > 0
    with pytest.raises(ConfigError, match="already holds a run"):
        Trainer(cut, progress=False)
    resumed = Trainer(load_run_config(cut.output_dir), resume=True, progress=False).fit()
    assert resumed.step == 7

    a, _, _ = read_checkpoint(tmp_path / "full" / "run" / "last")
    b, _, _ = read_checkpoint(tmp_path / "cut" / "run" / "last")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = state_mod.load_state(tmp_path / "full" / "run" / "checkpoints" / "last.ckpt")
    sb = state_mod.load_state(tmp_path / "cut" / "run" / "checkpoints" / "last.ckpt")
    assert sb["wall_s"] >= saved["wall_s"]  # the run's wall time goes on from the first session's
    assert sa["scheduler"]["last_epoch"] == sb["scheduler"]["last_epoch"] == 7
    exp_avg = [s["exp_avg"] for s in sa["optimizer"]["state"].values()]
    assert all(torch.equal(x, s["exp_avg"]) for x, s in zip(exp_avg, sb["optimizer"]["state"].values()))
    # the logs read as one run: steps 1..7 once each, same losses
    la = [(r["step"], r["train_loss"]) for r in read_metrics(tmp_path / "full" / "run" / "metrics.csv")]
    lb = [(r["step"], r["train_loss"]) for r in read_metrics(tmp_path / "cut" / "run" / "metrics.csv")]
    assert [s for s, _ in lb] == list(range(1, 8)) and la == lb


def test_resume_refuses_changes_that_alter_the_optimisation(tmp_path, words_lmdb) -> None:
    cfg = _config(tmp_path, words_lmdb, "x")
    (tmp_path / "x" / "run").mkdir(parents=True)
    cfg.to_json(tmp_path / "x" / "run" / "train_config.json")
    with pytest.raises(ConfigError, match=r"cannot change optim\.lr"):
        load_run_config(cfg.output_dir, ["optim.lr=1"])
    assert load_run_config(cfg.output_dir, ["data.num_workers=3"]).data.num_workers == 3
    with pytest.raises(ConfigError, match="nothing to resume"):
        Trainer(cfg, resume=True)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch) -> None:
    path = tmp_path / "last.ckpt"
    state_mod.save_state({"step": 1, "w": torch.ones(3)}, path)

    def torn_save(obj, f):
        Path(f).write_bytes(b"PK\x03\x04 partial")
        raise OSError("killed while writing")

    monkeypatch.setattr(state_mod.torch, "save", torn_save)
    with pytest.raises(OSError, match="killed while writing"):
        state_mod.save_state({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert state_mod.load_state(path)["step"] == 1  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_foreign_file_is_not_a_resume_checkpoint(tmp_path) -> None:
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(Exception, match="not a clip4str training checkpoint"):
        state_mod.load_state(path)


def test_loop_state_resumes_at_the_next_micro_batch_with_the_wall_time_so_far() -> None:
    state = state_mod.LoopState.from_checkpoint(
        {"step": 3, "epoch": 1, "batch": 6, "best": state_mod.no_best(), "wall_s": 100.0}
    )
    assert state.position(batches_per_epoch=6) == (2, 0)  # an epoch read to its end: the next one
    assert state.position(batches_per_epoch=8) == (1, 6)
    assert 100.0 <= state.wall_s() < 110.0  # summed over sessions
    saved = state.checkpoint_fields(batches_per_epoch=6)
    assert (saved["step"], saved["epoch"], saved["batch"]) == (3, 2, 0)
    again = state_mod.LoopState.from_checkpoint(saved)
    assert again.position(6) == (2, 0) and again.wall_before_s >= 100.0
