"""Training configs: presets reproduce the official recipe; bad values fail early, naming the value."""

from __future__ import annotations

import json

import pytest
import torch

from clip4str.cli import main
from clip4str.config import ConfigError
from clip4str.train.config import load_train_config, resolve_model_config, train_preset_names


def test_presets_load_validate_and_match_the_official_recipe() -> None:
    assert {"vit-b16-real", "vit-b16-synth", "vit-l14-real", "vit-l14-synth", "tiny"} <= set(
        train_preset_names()
    )
    for name in train_preset_names():
        load_train_config(name).validate(check_paths=False)
    b16 = load_train_config("vit-b16-real")
    assert (b16.devices, b16.batch_size, b16.accumulate_steps, b16.global_batch_size) == (8, 128, 1, 1024)
    assert b16.epochs == 16 and b16.precision == "16-mixed" and b16.optim.grad_clip == 20
    # official scaling: lr x accumulate x devices x batch / 512 = 8.4e-5 x 2; decoders x 19
    assert b16.scaled_lr == pytest.approx(1.68e-4)
    assert (
        b16.optim.decoder_lr_factor == 19 and b16.optim.weight_decay == 0.2 and b16.optim.warmup_pct == 0.075
    )
    model = resolve_model_config(b16)
    assert (
        model.text_freeze_layers == 6
        and len(model.charset_train) == 94
        and model.charset_test == "0123456789abcdefghijklmnopqrstuvwxyz"
    )
    assert model.preprocess.mean[0] == pytest.approx(0.48145466)  # trained with CLIP's statistics
    l14 = load_train_config("vit-l14-real")
    assert l14.epochs == 10 and l14.global_batch_size == 1024 and l14.accumulate_steps == 4
    assert resolve_model_config(l14).clip.vision.width == 1024
    synth = load_train_config("vit-b16-synth")
    assert synth.data.train_root == ["data/train/synth"] and synth.accumulate_steps == 2


def test_overrides_reach_nested_fields_and_keep_batch_arithmetic() -> None:
    cfg = load_train_config(
        "vit-b16-real", ["devices=2", "optim.lr=1e-4", "model.decoder.dropout=0", "data.train_root=/x"]
    )
    assert cfg.accumulate_steps == 4 and cfg.global_batch_size == 1024  # derived: 1024 / (2 x 128)
    assert cfg.scaled_lr == pytest.approx(2e-4)
    assert resolve_model_config(cfg).decoder.dropout == 0
    assert cfg.data.train_root == ["/x"]


def test_extends_a_preset_from_a_small_file(tmp_path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"extends": "vit-b16-real", "epochs": 3, "optim": {"lr": 1e-5}}))
    cfg = load_train_config(path)
    assert cfg.epochs == 3 and cfg.optim.lr == 1e-5 and cfg.optim.decoder_lr_factor == 19 and cfg.devices == 8


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["bacth_size=3"], "bacth_size"),
        (["batch_size=abc"], "batch_size: expected an integer, got 'abc'"),
        (["model.decoder.deph=2"], "model.decoder.deph"),
        (["devices=3"], "effective_batch_size=1024 is not a multiple of devices (3)"),
        (["accumulate=3"], "accumulate (3)"),
        (["precision=fp8"], "precision must be one of"),
        (["optim.warmup_pct=1.5"], "optim.warmup_pct must be in (0, 1), got 1.5"),
        (["epochs=0"], "set epochs or max_steps"),
        (["charset_test=abcé"], "charset_test has characters that are not in charset_train: 'é'"),
        (["model.clip.vision.image_size=112"], "model.preprocess.image_size [224, 224] must equal"),
        (
            ["model.clip.vision.image_size=100"],
            "image_size [100, 100] is not a multiple of patch_size [16, 16]",
        ),
        (["model.clip.vision.patch_size=[4, 0]"], "must be >= 1"),
        (["init=clip:/no/such/ViT.pt"], "init: clip file '/no/such/ViT.pt' does not exist"),
    ],
)
def test_bad_values_fail_before_work_naming_the_value(overrides, needle, tmp_path) -> None:
    with pytest.raises(ConfigError) as err:
        cfg = load_train_config("vit-b16-real", [f"data.train_root={tmp_path}", *overrides])
        cfg.validate()
    assert needle in str(err.value)


def test_missing_data_path_is_named(tmp_path) -> None:
    cfg = load_train_config("tiny", [f"data.train_root={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match="data.train_root: path .*nowhere.* does not exist"):
        cfg.validate()


def test_cli_reports_config_errors_in_one_line(capsys, tmp_path) -> None:
    assert main(["train", "--config", "vit-b16-real", "--set", "bacth_size=3"]) == 1
    err = capsys.readouterr().err
    assert "clip4str train: error: unknown config key(s): bacth_size" in err
    assert main(["train", "--config", str(tmp_path / "none.json")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--list-presets"]) == 0
    assert "vit-l14-real" in capsys.readouterr().out


def test_cli_print_config_round_trips(capsys) -> None:
    assert main(["train", "--config", "tiny", "--set", "max_steps=7", "--print-config"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["max_steps"] == 7
    assert load_train_config(data).max_steps == 7


def test_cli_dry_run_validates_paths(capsys, tmp_path) -> None:
    ok = ["train", "--config", "tiny", "--set", f"data.train_root={tmp_path}", f"data.val_root={tmp_path}"]
    assert main([*ok, "--dry-run"]) == 0
    assert "config OK" in capsys.readouterr().err
    assert main([*ok, f"data.val_root={tmp_path / 'missing'}", "--dry-run"]) == 1
    assert "data.val_root: path" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_recipe_on_a_cpu_machine_fails_before_work(tmp_path) -> None:
    cfg = load_train_config(
        "vit-b16-real", [f"data.train_root={tmp_path}", f"data.val_root={tmp_path}", "init=random"]
    )
    with pytest.raises(ConfigError, match="accelerator='gpu'.*accelerator=cpu"):
        cfg.validate()
    cpu = load_train_config(
        "vit-b16-real",
        [f"data.train_root={tmp_path}", f"data.val_root={tmp_path}", "init=random", "accelerator=cpu"],
    )
    with pytest.raises(ConfigError, match="16-mixed"):
        cpu.validate()
    load_train_config(
        "vit-b16-real",
        [
            f"data.train_root={tmp_path}",
            f"data.val_root={tmp_path}",
            "init=random",
            "accelerator=cpu",
            "precision=bf16-mixed",
        ],
    ).validate()


def test_recipes_name_model_variants(capsys) -> None:
    cfg = load_train_config("tiny", ['variants=["ladder"]', "model.adapter.reduction=2"])
    model_cfg = resolve_model_config(cfg)
    assert model_cfg.adapter.kind == "ladder" and model_cfg.adapter.reduction == 2  # model goes last
    assert model_cfg.image_freeze_layers == -1 and model_cfg.clip.vision.image_size == 64
    assert main(["train", "--config", "tiny", "--variant", "clip-adapter", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["variants"] == ["clip-adapter"]
    with pytest.raises(ConfigError, match="unknown model variant 'lora'"):
        resolve_model_config(load_train_config("tiny", ['variants=["lora"]']))
