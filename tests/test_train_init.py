"""Where a run's weights come from: bare CLIP files, official and own checkpoints, a new charset."""

from __future__ import annotations

import pytest
import torch

from clip4str.charset import CHARSET_36
from clip4str.checkpoints import load_model, save_model
from clip4str.clip.model import CLIP, round_like_official_fp16
from clip4str.errors import CheckpointError
from clip4str.model.clip4str import CLIP4STR
from clip4str.presets import model_preset
from clip4str.train.config import load_train_config
from clip4str.train.init_model import build_model, parameter_summary


def _cfg(**top):
    return load_train_config({"model_preset": "tiny", "max_steps": 1, **top})


def test_from_bare_clip_weights_sizes_and_values(tmp_path) -> None:
    clip_cfg = model_preset("tiny").clip
    clip_cfg.text.width, clip_cfg.text.heads = 64, 1  # official head width 64: widths >= 64
    clip = CLIP(clip_cfg)
    sd = {k: v.clone() for k, v in clip.state_dict().items()}
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(sd, path)
    model, report = build_model(_cfg(init=f"clip:{path}", model_preset="vit-b16"))  # sizes from the file
    assert model.config.clip.vision.width == 64 and model.config.clip.text.width == 64
    assert "CLIP weights" in report.describe()
    expected = round_like_official_fp16(sd)
    for k, v in model.clip_model.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_from_golden_official_checkpoint_keeps_every_tensor(golden_dir) -> None:
    ckpt = golden_dir / "clip4str_tiny.ckpt"
    model, report = build_model(_cfg(init=f"checkpoint:{ckpt}"))
    reference = load_model(ckpt)
    assert report.reinitialized == []
    for k, v in reference.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert model.training


def test_fine_tune_to_new_charset_reinitialises_heads_and_embeddings(tmp_path) -> None:
    torch.manual_seed(0)
    source = CLIP4STR(model_preset("tiny"))  # 94 characters
    save_model(source, tmp_path / "src")
    model, report = build_model(_cfg(init=f"checkpoint:{tmp_path / 'src'}", charset_train="36"))
    assert model.config.charset_train == CHARSET_36
    assert sorted(report.reinitialized) == sorted(
        f"{b}_decoder.{t}"
        for b in ("visual", "cross")
        for t in ("head.weight", "head.bias", "text_embed.embedding.weight")
    )
    assert model.visual_decoder.head.weight.shape[0] == 37
    src = source.state_dict()
    for k, v in model.state_dict().items():
        if k not in report.reinitialized:
            assert torch.equal(v, src[k]), k
    assert "re-initialised for the new charset" in report.describe()


def test_same_size_charset_change_still_reinitialises(tmp_path) -> None:
    source = CLIP4STR(model_preset("tiny", charset_train="abc"))
    save_model(source, tmp_path / "src")
    _, report = build_model(_cfg(init=f"checkpoint:{tmp_path / 'src'}", charset_train="xyz"))
    assert len(report.reinitialized) == 6


def test_architecture_change_when_fine_tuning_is_refused(tmp_path) -> None:
    save_model(CLIP4STR(model_preset("tiny")), tmp_path / "src")
    cfg = _cfg(init=f"checkpoint:{tmp_path / 'src'}", model={"max_label_length": 10})
    with pytest.raises(CheckpointError, match="visual_decoder.pos_queries: file"):
        build_model(cfg)


def test_parameter_summary_counts_frozen_text_layers() -> None:
    model = CLIP4STR(model_preset("tiny", text_freeze_layers=1))
    text = parameter_summary(model)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    last = text.splitlines()[-1].split()
    assert last[0] == "total" and int(last[1].replace(",", "")) == total
    assert int(last[3].replace(",", "")) == frozen > 0
