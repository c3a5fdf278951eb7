"""Two CPU processes (gloo DDP): a few steps keep the ranks' weights identical."""

from __future__ import annotations

import torch
from test_train_support import WORDS_64, make_word_lmdb, tiny_config_dict

from clip4str.checkpoints import read_checkpoint
from clip4str.train.config import load_train_config
from clip4str.train.trainer import Trainer


def test_two_process_ddp_keeps_ranks_identical(tmp_path, bpe_path, monkeypatch) -> None:
    monkeypatch.setenv("CLIP4STR_BPE_PATH", str(bpe_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    train = make_word_lmdb(tmp_path / "train", WORDS_64[:32])
    val = make_word_lmdb(tmp_path / "val", WORDS_64[:8])
    d = tiny_config_dict(tmp_path, train, val, max_steps=3, devices=2, strategy="ddp_spawn", batch_size=4)
    cfg = load_train_config(d)
    assert cfg.global_batch_size == 8
    result = Trainer(cfg, progress=False).fit()
    assert result.step == 3
    # each rank read different images and drew different permutations and dropout masks, yet the
    # all-reduced gradients keep the weights equal
    assert len(result.param_digests) == 2 and result.param_digests[0] == result.param_digests[1]
    weights, _, _ = read_checkpoint(tmp_path / "run" / "last")
    torch.manual_seed(0)
    from clip4str.train.init_model import build_model

    initial, _ = build_model(cfg)
    moved = [k for k, v in initial.state_dict().items() if not torch.equal(v, weights[k])]
    assert "visual_decoder.head.weight" in moved and "clip_model.visual.conv1.weight" in moved
    assert result.best_step == 3  # validated once, at the end, on both ranks' shares summed
