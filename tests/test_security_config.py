"""Hostile configs, checkpoints and arguments (issue 11, items 6, 7, 8, 10, 11): each refused in one line
naming the value, before anything is allocated or run."""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import pytest
import torch

from clip4str.checkpoints import load_model, save_model
from clip4str.cli import main
from clip4str.config import ConfigError, DecoderConfig, ModelConfig, PreprocessConfig, apply_overrides
from clip4str.errors import CheckpointError, WriteError
from clip4str.presets import model_preset
from clip4str.safe_pickle import load_pickle
from clip4str.train import state as train_state
from clip4str.train.config import load_train_config
from clip4str.train.plot import plot_run


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


HOSTILE_MODEL_OVERRIDES = {
    "decoder.num_heads=0": "decoder.num_heads",
    "clip.vision.patch_size=0": "patch_size",
    "clip.vision.width=-8": "clip.vision.width",
    "clip.vision.width=1000000000": "clip.vision.width",
    "clip.vision.layers=1000000": "clip.vision.layers",
    "charset_train=12345": "charset_train",
    "decoder.dropout=NaN": "decoder.dropout",
    "preprocess.image_size=[1000000,1000000]": "preprocess.image_size",
    "preprocess.mean=[NaN,0.5,0.5]": "preprocess.mean",
    "decoding.refine_iters=1000000000": "decoding.refine_iters",
    "max_label_length=100000000": "max_label_length",
}


@pytest.mark.parametrize("override", HOSTILE_MODEL_OVERRIDES)
def test_hostile_model_values_are_config_errors(override):
    with pytest.raises(ConfigError, match=HOSTILE_MODEL_OVERRIDES[override].replace(".", r"\.")):
        apply_overrides(model_preset("tiny"), [override])


def test_sizes_that_would_need_terabytes_are_refused_before_allocating():
    cfg = model_preset("tiny")
    with pytest.raises(ConfigError, match="billion parameters"):
        apply_overrides(cfg, ["clip.vision.width=16384", "clip.vision.heads=64", "clip.vision.layers=512"])


def test_nan_normalisation_is_refused():
    with pytest.raises(ConfigError, match=r"preprocess\.std\[0\]"):
        PreprocessConfig(std=(float("nan"), 0.5, 0.5))
    assert DecoderConfig(dropout=0.0).dropout == 0.0 and not math.isnan(PreprocessConfig().mean[0])


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("batch_size=1e30", "batch_size"),
        ("model.clip.vision.width=1e9", "clip.vision.width"),
        ("model.decoder.num_heads=0", "decoder.num_heads"),
        ("data.num_workers=100000", "data.num_workers"),
        ("optim.lr=NaN", "optim.lr"),
    ],
)
def test_train_dry_run_names_the_bad_value(capsys, override, named):
    err = one_line_error(capsys, ["train", "--config", "tiny", "--set", override, "--dry-run"])
    assert named in err


def test_json_nested_100k_deep_is_one_line(tmp_path, capsys):
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "deep.json"
    path.write_text('{"batch_size": ' + deep + "}")
    assert "nested too deeply" in one_line_error(capsys, ["train", "--config", str(path), "--dry-run"])
    assert "nested too deeply" in one_line_error(
        capsys, ["train", "--config", "tiny", "--set", f"batch_size={deep}", "--dry-run"]
    )
    with pytest.raises(ConfigError, match="nested too deeply"):
        ModelConfig.from_json(tmp_path / "deep.json")


# ------------------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    from clip4str.model.clip4str import CLIP4STR

    return save_model(CLIP4STR(model_preset("tiny")), tmp_path_factory.mktemp("m") / "model")


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda c: c["decoding"].update(refine_iters=10**9), "refine_iters"),
        (lambda c: c["decoder"].update(depth=10**6), "decoder.depth"),
        (lambda c: c["clip"]["vision"].update(image_size=10**6), "image_size"),
        (lambda c: c.update(charset_train=12345), "charset_train"),
    ],
)
def test_hostile_sizes_in_a_checkpoint_config(tiny_model_dir, tmp_path, edit, named):
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((tiny_model_dir / "model.safetensors").read_bytes())
    config = json.loads((tiny_model_dir / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=named):
        load_model(folder)


def test_hostile_official_hyper_parameters(tmp_path, golden_dir):
    ckpt = load_pickle(golden_dir / "clip4str_tiny.ckpt")
    for key, value, named in (
        ("refine_iters", 10**9, "refine_iters"),
        ("charset_train", 12345, "charset_train"),
        ("img_size", [10**6, 10**6], "image_size"),
        ("dropout", float("nan"), "dropout"),
    ):
        ckpt["hyper_parameters"] = {**ckpt["hyper_parameters"], key: value}
        path = tmp_path / f"{key}.ckpt"
        torch.save(ckpt, path)
        with pytest.raises(CheckpointError, match=named):
            load_model(path)
        ckpt = load_pickle(golden_dir / "clip4str_tiny.ckpt")


# ------------------------------------------------------------------------------------ full disks
def test_full_disk_while_saving_training_state_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    train_state.save_state({"step": 1}, path)
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train_state.torch, "save", full)
    with pytest.raises(WriteError, match="the disk is full; the previous one is intact") as info:
        train_state.save_state({"step": 2}, path)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_full_disk_while_saving_a_model_keeps_the_previous_one(tiny_model_dir, tmp_path, monkeypatch):
    from clip4str import weights

    out = tmp_path / "best"
    model = load_model(tiny_model_dir)
    save_model(model, out)
    before = (out / "model.safetensors").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(weights, "save_file", full)
    with pytest.raises(WriteError, match="disk is full"):
        save_model(model, out)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


# ------------------------------------------------------------------------------------ small commands
@pytest.mark.parametrize(
    "content",
    [
        "step,train_loss\nabc,1.0\n",
        "nothing,here\n1,2\n",
        "step,train_loss,lr\n1,0.5,1e-4,extra,cells\n2,inf,x\n3,0.4e,\n",
        "\xff\xfe\x00garbage",
    ],
)
def test_plot_on_a_malformed_metrics_file(tmp_path, capsys, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_bytes(content.encode("latin-1"))
    code = main(["plot", str(run)])
    err = capsys.readouterr().err.strip()
    if code == 0:  # the third file plots what parses
        assert (run / "curves.png").is_file()
    else:
        assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_plot_skips_cells_that_are_not_numbers(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("step,train_loss,lr\n1,0.5,1e-4\n2,0.4,x\n3,0.3e,\n")
    assert plot_run(run).is_file()


def test_bench_refuses_a_missing_cuda_in_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    err = one_line_error(capsys, ["bench", "--arch", "tiny", "--device", "cuda", "--batch-sizes", "1"])
    assert "CUDA" in err


def test_bench_never_runs_reference_code_from_the_current_folder(tmp_path, monkeypatch):
    from clip4str.cli.bench import find_reference_file

    planted = tmp_path / "benchmarks" / "reference_official.py"
    planted.parent.mkdir()
    planted.write_text("raise SystemExit('planted code ran')\n")
    monkeypatch.chdir(tmp_path)
    try:
        found = find_reference_file()
    except FileNotFoundError:
        return  # an installed (non-checkout) package: nothing is found, nothing runs
    assert found.resolve() != planted.resolve()
    assert found.resolve() == (Path(__file__).resolve().parents[1] / "benchmarks" / "reference_official.py")


def test_eval_outputs_never_overwrite_the_label_file(tmp_path, capsys):
    labels = tmp_path / "labels.tsv"
    labels.write_text("a.png\tx\n")
    for option in ("--out", "--errors"):
        err = one_line_error(
            capsys, ["eval", "--model", "m.ckpt", "--labels", str(labels), option, str(labels)]
        )
        assert "would be overwritten" in err
    assert labels.read_text() == "a.png\tx\n"
    err = one_line_error(
        capsys,
        ["eval", "--labels", str(labels), "--out", str(tmp_path / "r"), "--errors", str(tmp_path / "r")],
    )
    assert "same file" in err


def test_empty_batch_to_logits_is_a_clear_error():
    from clip4str.api import Recognizer
    from clip4str.model.clip4str import CLIP4STR

    reader = Recognizer(CLIP4STR(model_preset("tiny")), visual_only=True)
    with pytest.raises(ValueError, match="empty batch"):
        reader.logits(torch.zeros(0, 3, *reader.config.preprocess.image_size))
    assert reader.read([]) == []


def test_load_train_config_reads_no_fifo(tmp_path):
    import os
    import sys

    if sys.platform == "win32":
        pytest.skip("POSIX FIFOs")
    fifo = tmp_path / "cfg.json"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="FIFO"):
        load_train_config(fifo)


def test_refine_iters_from_the_command_line_is_bounded(capsys):
    from clip4str.api import Recognizer
    from clip4str.model.clip4str import CLIP4STR

    with pytest.raises(ValueError, match=r"refine_iters must be in \[0, 100\]"):
        Recognizer(CLIP4STR(model_preset("tiny")), refine_iters=10**9, visual_only=True)
