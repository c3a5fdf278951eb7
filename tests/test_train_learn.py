"""End to end: a tiny model learns 64 rendered words to 100% validation accuracy within a bounded number
of steps; its checkpoint is read by ``clip4str read``; ``clip4str plot`` draws its curves."""

from __future__ import annotations

import sys

import pytest
import torch
from PIL import Image
from test_train_support import WORDS_64, make_word_lmdb, render_word, tiny_config_dict

from clip4str.cli import main
from clip4str.train.config import load_train_config
from clip4str.train.logs import read_metrics
from clip4str.train.trainer import Trainer

MAX_STEPS = 400


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory, bpe_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIP4STR_BPE_PATH", str(bpe_path))  # the cross-modal branch tokenizes captions
        yield _train(tmp_path_factory)


def _train(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("learn")
    words = make_word_lmdb(tmp / "words", WORDS_64)
    d = tiny_config_dict(tmp, words, words, max_steps=MAX_STEPS, batch_size=32, val_every_n_steps=200)
    # A 128-wide one-layer ViT on 32x32 images, 64-wide decoders. Two permutations (forward and reverse)
    # and no cloze refinement keep the run short on a CPU; the official recipe uses six and one.
    d["model"].update(
        clip={
            "embed_dim": 64,
            "vision": {"image_size": 32, "patch_size": 8, "width": 128, "heads": 2, "layers": 1},
            "text": {"width": 64, "heads": 1},
        },
        decoder={"dropout": 0.0, "num_heads": 2},
        perm_num=2,
        text_freeze_layers=1,
        decoding={"refine_iters": 0},
    )
    d["optim"].update(lr=1e-3, decoder_lr_factor=3.0, warmup_pct=0.1)
    d["log_every_n_steps"] = 20
    result = Trainer(load_train_config(d), progress=False).fit()
    return tmp, result


@pytest.mark.slow
def test_tiny_model_learns_64_words_to_full_accuracy(learned_run) -> None:
    tmp, result = learned_run
    assert result.step == MAX_STEPS
    assert result.best_accuracy == pytest.approx(100.0), result.last_val
    rows = read_metrics(tmp / "run" / "metrics.csv")
    losses = [r["train_loss"] for r in rows if r["train_loss"] is not None]
    assert losses[-1] < losses[0] / 10
    assert all(r["images_per_s"] > 0 for r in rows if r["images_per_s"] is not None)


@pytest.mark.slow
def test_trained_checkpoint_is_read_by_clip4str_read(learned_run, tmp_path, capsys) -> None:
    run_dir = learned_run[0] / "run"
    for i, word in enumerate(WORDS_64[:12]):
        (tmp_path / f"{i:02d}.png").write_bytes(render_word(word, i))
    assert main(["read", "--model", str(run_dir / "best"), "--quiet", str(tmp_path)]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [text for _, text, _ in lines] == WORDS_64[:12]
    assert sum(float(conf) for _, _, conf in lines) / len(lines) > 0.5


@pytest.mark.slow
def test_plot_draws_curves(learned_run, tmp_path, capsys) -> None:
    out = tmp_path / "curves.png"
    assert main(["plot", str(learned_run[0] / "run"), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as img:
        assert img.size == (1500, 400)


def test_plot_names_a_folder_without_metrics(tmp_path, capsys) -> None:
    assert main(["plot", str(tmp_path)]) == 1
    assert "has no metrics.csv" in capsys.readouterr().err


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
