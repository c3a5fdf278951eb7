"""``clip4str export``: any checkpoint → own format, optionally stored at half precision."""

from __future__ import annotations

import torch

from clip4str.checkpoints import load_model
from clip4str.cli import main


def test_export_official_checkpoint_to_bf16_folder(golden_dir, tmp_path, capsys) -> None:
    source = golden_dir / "clip4str_tiny.ckpt"
    full, half = tmp_path / "fp32", tmp_path / "bf16"
    assert main(["export", str(source), str(full)]) == 0
    assert main(["export", str(source), str(half), "--dtype", "bf16"]) == 0
    assert "bf16" in capsys.readouterr().out
    assert (half / "model.safetensors").stat().st_size < 0.6 * (full / "model.safetensors").stat().st_size
    original, exported, halved = load_model(source), load_model(full), load_model(half)
    assert exported.config == original.config == halved.config
    assert all(p.dtype == torch.float32 for p in halved.parameters())  # always built in fp32
    images = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        reference = original.decode(images)
        assert torch.equal(exported.decode(images), reference)
        assert (halved.decode(images) - reference).abs().max() < 0.1


def test_export_of_a_missing_model_is_one_line(tmp_path, capsys) -> None:
    assert main(["export", str(tmp_path / "nope.ckpt"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "nope.ckpt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
