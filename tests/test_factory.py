"""create_model: the one entry point from a name, a path, a preset or a config to a model."""

from __future__ import annotations

import pytest
import torch

from clip4str import hub
from clip4str.checkpoints import load_model
from clip4str.config import ConfigError
from clip4str.errors import ModelNotFoundError
from clip4str.factory import create_model
from clip4str.presets import model_preset
from clip4str.weights import save_model


@pytest.fixture
def tiny_folder(tmp_path):
    torch.manual_seed(0)
    return save_model(create_model("tiny", pretrained=False), tmp_path / "tiny")


def test_a_path_loads_exactly_what_load_model_loads(golden_dir):
    model = create_model(golden_dir / "clip4str_tiny.ckpt", **{"decoding.refine_iters": 2})
    reference = load_model(golden_dir / "clip4str_tiny.ckpt", overrides=["decoding.refine_iters=2"])
    assert not model.training and model.config == reference.config
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_release_name_resolves_through_the_hub(monkeypatch, tiny_folder):
    seen = []

    def fake_resolve(name, cache_dir=None, offline=None, progress=True):
        seen.append((name, cache_dir, offline, progress))
        return tiny_folder

    monkeypatch.setattr(hub, "resolve_model", fake_resolve)
    model = create_model("clip4str-base", cache_dir="/c", offline=True, progress=False, charset_test="36")
    assert seen == [("clip4str-base", "/c", True, False)]
    assert model.config.charset_test == "0123456789abcdefghijklmnopqrstuvwxyz"  # a charset name, resolved


def test_untrained_models_come_from_presets_variants_and_releases():
    with torch.device("meta"):
        base = create_model("clip4str-base", pretrained=False)
    assert base.config == model_preset("vit-b16")
    ladder = create_model("tiny", pretrained=False, variants=["ladder"], decoder={"dropout": 0.0})
    assert ladder.config == model_preset("tiny", "ladder", decoder={"dropout": 0.0})
    assert ladder.image_adapter is not None and not ladder.training
    again = create_model(ladder.config, pretrained=False)
    assert again.config == ladder.config


def test_wrong_combinations_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="preset without weights: pass pretrained=False"):
        create_model("tiny")
    with pytest.raises(ConfigError, match="has no weights"):
        create_model(model_preset("tiny"))
    with pytest.raises(ConfigError, match="only with pretrained=False"):
        create_model("clip4str-base", variants=["ladder"])
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        create_model("no-such-model")
    with pytest.raises(ConfigError, match="unknown model variant 'lora'"):
        create_model("tiny", pretrained=False, variants=["lora"])
