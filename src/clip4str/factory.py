"""One entry point for models: :func:`create_model` (the open_clip / timm pattern).

``create_model('clip4str-base')`` resolves the release in :mod:`clip4str.hub` (downloaded once), reads the
file (:mod:`clip4str.weights`), takes its config (converted from the official layout by
:mod:`clip4str.checkpoints` when needed), applies the overrides, builds the network
(:class:`~clip4str.model.clip4str.CLIP4STR`) and loads every tensor strictly. ``pretrained=False`` builds the
same architecture untrained from :mod:`clip4str.presets`. :func:`clip4str.load`, ``hubconf.py``,
training initialisation and the tests all build their models here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clip4str.config import ConfigError, ModelConfig

if TYPE_CHECKING:
    import torch

    from clip4str.model.clip4str import CLIP4STR

__all__ = ["create_model"]


def _architecture(name_or_path: str | Path | ModelConfig) -> ModelConfig | str:
    """What an untrained model of ``name_or_path`` is built from: a config (given, or a checkpoint's) or a
    preset name (given, or a release's)."""
    from clip4str import hub

    if isinstance(name_or_path, ModelConfig):
        return name_or_path
    if Path(os.fspath(name_or_path)).exists():
        from clip4str.checkpoints import config_from_file
        from clip4str.weights import read_checkpoint

        sd, hparams, config = read_checkpoint(name_or_path)
        return config_from_file(sd, hparams, config, str(name_or_path))[0]
    release = hub.get_release(str(name_or_path))
    return release.preset if release is not None else str(name_or_path)


def create_model(
    name_or_path: str | Path | ModelConfig,
    pretrained: bool = True,
    *,
    variants: tuple[str, ...] | list[str] = (),
    map_location: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    progress: bool = True,
    **overrides: Any,
) -> CLIP4STR:
    """A CLIP4STR model, in eval mode, fp32.

    Args:
        name_or_path: a released model (``'clip4str-base'``, a release file name; see ``clip4str models``),
            a checkpoint file or model folder, an architecture preset (``'vit-b16'``, ``'small'``, ``'tiny'``;
            see :mod:`clip4str.presets`) or a :class:`~clip4str.config.ModelConfig`.
        pretrained: load the release's or file's weights. False builds an untrained model of the same
            architecture (presets and configs have no weights, so they need ``pretrained=False``).
        variants: model variants laid over an untrained architecture (``'ladder'``, ``'vietnamese'``, ...;
            :data:`clip4str.presets.VARIANTS`).
        map_location: device of the returned model (default: the CPU, or the default device of an
            untrained model, e.g. ``with torch.device('meta')``).
        cache_dir, offline, progress: download cache, offline mode (default ``HF_HUB_OFFLINE``) and progress
            bar (:func:`clip4str.hub.resolve_model`).
        **overrides: config changes (:func:`clip4str.config.merge_into`): fields or sections
            (``decoder={'num_heads': 4}``, ``charset_test='36'``) or dotted keys
            (``**{'decoding.refine_iters': 2}``).

    Raises:
        ModelNotFoundError: an unknown name or a release that cannot be downloaded now.
        CheckpointError: an unreadable file, or weights that do not fit the config.
        ConfigError: an unknown preset or variant, or a bad override.
    """
    if isinstance(name_or_path, ModelConfig) and pretrained:
        raise ConfigError("a ModelConfig has no weights: pass pretrained=False (or a checkpoint path)")
    if not pretrained:
        from clip4str.model.clip4str import CLIP4STR
        from clip4str.presets import model_preset

        model = CLIP4STR(model_preset(_architecture(name_or_path), *variants, **overrides))
        return (model if map_location is None else model.to(map_location)).eval()
    if variants:
        raise ConfigError("variants change the architecture, so they apply only with pretrained=False")
    from clip4str import hub
    from clip4str.checkpoints import load_model
    from clip4str.presets import MODEL_PRESETS, PRESET_ALIASES

    text = os.fspath(name_or_path)
    if (
        not Path(text).exists()
        and hub.get_release(text) is None
        and text.lower() in {*MODEL_PRESETS, *PRESET_ALIASES}
    ):
        raise ConfigError(
            f"{text!r} is an architecture preset without weights: pass pretrained=False for an untrained "
            "model, or a released model name (`clip4str models`) or a checkpoint path"
        )
    path = hub.resolve_model(name_or_path, cache_dir=cache_dir, offline=offline, progress=progress)
    return load_model(path, overrides=overrides, map_location=map_location or "cpu")
