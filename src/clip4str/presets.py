"""What defines a model: architecture presets and the variants laid over them.

:func:`model_preset` ``(name, *variants, **overrides)`` is the one place a :class:`~clip4str.config.ModelConfig`
is put together: an architecture preset (or a config), then variants (``configs/models/*.json``, partial
configs such as ``'ladder'`` or ``'vietnamese'``), then overrides, merged by
:func:`clip4str.config.merge_into`.

Sizes are those the official code builds (``strhub.clip.model.build_model`` on the released CLIP weights):
OpenAI-layout towers with QuickGELU and ``width // 64`` attention heads (so ViT-H/14 has 20 vision heads,
not OpenCLIP's 16), a 77-row text positional table of which 16 positions are used, and two one-layer
decoders of width ``embed_dim`` with 8 heads. OpenCLIP/DataComp/LAION/DFN backbones of a size share the
OpenAI shapes, so ``vit-b16`` also describes the DataComp-1B B/16 release.

>>> cfg = model_preset("vit-l14")
>>> cfg.clip.vision.width, cfg.clip.embed_dim, cfg.decoder.num_heads
(1024, 768, 8)
>>> model_preset("tiny", decoder={"num_heads": 4}).decoder.num_heads
4
>>> cfg = model_preset("tiny", "clip-adapter")
>>> cfg.adapter.kind, cfg.image_freeze_layers, cfg.text_freeze_layers
('clip-adapter', -1, -1)
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from clip4str.config import (
    CLIPConfig,
    ConfigError,
    DecoderConfig,
    ModelConfig,
    PreprocessConfig,
    TextConfig,
    VisionConfig,
    from_dict,
    merge_into,
    parse_json,
    to_dict,
)

__all__ = [
    "MODEL_PRESETS",
    "PRESET_ALIASES",
    "VARIANTS",
    "load_variant",
    "model_preset",
    "preset_names",
    "variant_description",
    "variant_names",
]


def _official(
    *,
    name: str,
    vision_width: int,
    vision_layers: int,
    patch_size: int,
    embed_dim: int,
    text_width: int,
    text_layers: int,
) -> ModelConfig:
    """An official-size config: heads are ``width // 64`` in both towers, 8 decoder heads, depth 1."""
    return ModelConfig(
        clip=CLIPConfig(
            embed_dim=embed_dim,
            vision=VisionConfig(
                width=vision_width,
                layers=vision_layers,
                heads=vision_width // 64,
                patch_size=patch_size,
                image_size=224,
            ),
            text=TextConfig(width=text_width, layers=text_layers, heads=text_width // 64),
            activation="quick_gelu",
        ),
        decoder=DecoderConfig(depth=1, num_heads=8, mlp_ratio=4, dropout=0.1),
        name=name,
    )


# Official sizes (../shared/golden/manifests): vision width, layers, patch; embed dim; text width, layers.
_OFFICIAL_SIZES: dict[str, tuple[int, int, int, int, int, int]] = {
    "vit-b16": (768, 12, 16, 512, 512, 12),
    "vit-b32": (768, 12, 32, 512, 512, 12),
    "vit-l14": (1024, 24, 14, 768, 768, 12),
    "vit-h14": (1280, 32, 14, 1024, 1024, 24),
}


def _official_preset(name: str) -> Callable[[], ModelConfig]:
    vision_width, vision_layers, patch_size, embed_dim, text_width, text_layers = _OFFICIAL_SIZES[name]
    return functools.partial(
        _official,
        name=name,
        vision_width=vision_width,
        vision_layers=vision_layers,
        patch_size=patch_size,
        embed_dim=embed_dim,
        text_width=text_width,
        text_layers=text_layers,
    )


def _tiny() -> ModelConfig:
    """A test size that builds in milliseconds: 50 image tokens (7x7 patches of 32 px + CLS), width 32.

    No text layer is frozen, so a short training run moves every parameter.
    """
    return ModelConfig(
        clip=CLIPConfig(
            embed_dim=32,
            vision=VisionConfig(width=64, layers=2, heads=1, patch_size=32, image_size=224),
            text=TextConfig(width=32, layers=1, heads=1),
            activation="quick_gelu",
        ),
        decoder=DecoderConfig(depth=1, num_heads=2, mlp_ratio=4, dropout=0.1),
        text_freeze_layers=0,
        name="tiny",
    )


def _tiny_golden() -> ModelConfig:
    """The size of ``../shared/golden/clip4str_tiny.ckpt`` (vision 128x2, 2 heads; text 64x2, 1 head)."""
    return ModelConfig(
        clip=CLIPConfig(
            embed_dim=32,
            vision=VisionConfig(width=128, layers=2, heads=2, patch_size=16, image_size=224),
            text=TextConfig(width=64, layers=2, heads=1),
            activation="quick_gelu",
        ),
        decoder=DecoderConfig(depth=1, num_heads=4, mlp_ratio=4, dropout=0.1),
        name="tiny-golden",
    )


def _small(
    vision_width: int = 192, vision_layers: int = 6, text_width: int = 96, text_layers: int = 2
) -> ModelConfig:
    """The shipped CPU model's size: a from-scratch CLIP4STR on 32x128 images whose convolutional stem turns
    full-height 32x4 strips into one row of 32 tokens, a narrow CLIP text tower over 16 caption positions,
    and two one-layer decoders."""
    return ModelConfig(
        clip=CLIPConfig(
            embed_dim=vision_width,
            vision=VisionConfig(
                width=vision_width,
                layers=vision_layers,
                heads=vision_width // 64,
                patch_size=(32, 4),
                image_size=(32, 128),
                stem="conv",
            ),
            text=TextConfig(
                width=text_width, layers=text_layers, heads=max(text_width // 64, 1), context_length=16
            ),
            activation="quick_gelu",
        ),
        decoder=DecoderConfig(depth=1, num_heads=vision_width // 32, mlp_ratio=4, dropout=0.1),
        text_freeze_layers=0,
        preprocess=PreprocessConfig(image_size=(32, 128)),
        name="small",
    )


MODEL_PRESETS: dict[str, Callable[[], ModelConfig]] = {
    **{name: _official_preset(name) for name in _OFFICIAL_SIZES},
    "small": _small,
    "tiny": _tiny,
    "tiny-golden": _tiny_golden,
}

# Other spellings users meet: the official experiment names and the CLIP model names.
PRESET_ALIASES: dict[str, str] = {
    "vl4str": "vit-b16",
    "vl4str-base": "vit-b16",
    "vl4str-base32": "vit-b32",
    "vl4str-large": "vit-l14",
    "vl4str-huge": "vit-h14",
    "base": "vit-b16",
    "large": "vit-l14",
    "huge": "vit-h14",
}


def _key(name: str) -> str:
    # 'ViT-B/16', 'vit_b16', 'VIT-B-16' all become 'vitb16'.
    return re.sub(r"[^a-z0-9]", "", name.lower())


_LOOKUP: dict[str, str] = {_key(n): n for n in MODEL_PRESETS}
_LOOKUP.update({_key(a): n for a, n in PRESET_ALIASES.items()})


def preset_names() -> list[str]:
    """The canonical preset names, in size order."""
    return list(MODEL_PRESETS)


def _preset(name: str) -> ModelConfig:
    canonical = _LOOKUP.get(_key(str(name)))
    if canonical is None:
        valid = list(MODEL_PRESETS) + list(PRESET_ALIASES)
        close = difflib.get_close_matches(str(name).lower(), valid, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"unknown model preset {name!r}.{hint} Valid presets: {', '.join(MODEL_PRESETS)} "
            f"(aliases: {', '.join(PRESET_ALIASES)})"
        )
    return MODEL_PRESETS[canonical]()


def model_preset(name: str | ModelConfig, *variants: str | Path, **overrides: Any) -> ModelConfig:
    """Preset ``name`` (or a config) with ``variants`` laid over it in order, then ``overrides``.

    ``name`` is one of :data:`MODEL_PRESETS` (case, ``/``, ``_`` and ``-`` are ignored, so ``'ViT-B/16'``
    works) or an alias such as the official experiment name ``'vl4str-large'``. ``variants`` are shipped
    variant names (:data:`VARIANTS`) or paths to variant JSON files. ``overrides`` are :class:`ModelConfig`
    fields; a section (``clip``, ``decoder``, ``preprocess``, ``decoding``, ``adapter``) takes a dataclass or a
    partial dict that is merged, e.g. ``decoder={'num_heads': 4}`` or ``clip={'vision': {'image_size': 336}}``;
    free-form option dicts are replaced whole. Unknown presets, variants and keys raise :class:`ConfigError`.
    """
    cfg = name if isinstance(name, ModelConfig) else _preset(name)
    if not variants and not overrides:
        return cfg
    data = to_dict(cfg)
    for variant in variants:
        merge_into(ModelConfig, data, load_variant(variant), f"variant {variant}")
    merge_into(ModelConfig, data, overrides)
    return from_dict(ModelConfig, data)


# ------------------------------------------------------------------------------------------------ variants
def _variant_files() -> dict[str, Any]:
    root = resources.files("clip4str").joinpath("configs/models")
    if not root.is_dir():
        return {}
    return {f.name[: -len(".json")]: f for f in root.iterdir() if f.name.endswith(".json")}


def variant_names() -> list[str]:
    """Names of the shipped model variants (``configs/models/*.json``), sorted."""
    return sorted(_variant_files())


VARIANTS: tuple[str, ...] = tuple(variant_names())


def _read_variant(name_or_path: str | Path) -> dict[str, Any]:
    files = _variant_files()
    key = str(name_or_path)
    if key in files:
        text, source = files[key].read_text(encoding="utf-8"), f"variant {key!r}"
    elif key.endswith(".json") and Path(key).exists():
        from clip4str.files import MAX_CONFIG_BYTES, read_text_file

        text, source = read_text_file(key, "variant file", ConfigError, "utf-8", MAX_CONFIG_BYTES), key
    else:
        raise ConfigError(
            f"unknown model variant {key!r}; shipped variants: {', '.join(sorted(files)) or 'none'} (or give a "
            "path to a .json file)"
        )
    data = parse_json(text, source)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ConfigError(f"{source}: expected an object with a 'model' mapping (a partial ModelConfig)")
    return data


def load_variant(name_or_path: str | Path) -> dict[str, Any]:
    """A variant's partial ModelConfig (the ``model`` entry of its JSON): by shipped name or JSON path."""
    return _read_variant(name_or_path)["model"]


def variant_description(name_or_path: str | Path) -> str:
    """The one-line ``description`` of a variant."""
    return str(_read_variant(name_or_path).get("description", ""))
