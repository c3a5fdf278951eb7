"""Parameter-efficient tuning of CLIP4STR's image features, model variants, and official ``str_adapter`` files.

Two adapters sit between the (frozen) CLIP image tower and the decoders, chosen by
``ModelConfig.adapter.kind``; :class:`~clip4str.model.clip4str.CLIP4STR` builds them with
:func:`build_image_adapter` and calls ``adapter(model.clip_model.visual, images) -> (N, T, E)``:

* ``'clip-adapter'`` (:class:`ClipAdapter`, CLIP-Adapter as in the paper's PEFT study): two bias-free linear
  layers with ReLUs on every image token, mixed back with residual ratio ``r``:
  ``x = r * f(x) + (1 - r) * x``, ``f = ReLU ∘ Linear(E/k → E) ∘ ReLU ∘ Linear(E → E/k)`` (k = ``reduction``).
* ``'ladder'`` (:class:`LadderSideAdapter`, Ladder Side-Tuning): a light side network of width
  ``W / reduction`` runs beside the frozen ViT. At each tapped block it receives that block's input,
  down-projected (``Linear(W → W/k)``), mixed with its own running state through a learned gate
  ``g = sigmoid(alpha / T)``; its output is normalised and up-projected to ``E`` (``ln_post``, ``proj``) and
  mixed with CLIP's own memory: ``memory = g_0 * clip + (1 - g_0) * side``. No gradient ever flows through
  the backbone, so training memory and time are those of the side network and decoders.

Freezing is a config matter (``image_freeze_layers``, ``text_freeze_layers``, ``freeze_token_embeddings``,
applied by ``CLIP4STR.freeze_``); the PEFT variants in :data:`VARIANTS` freeze CLIP entirely, so only the adapter
and the decoders train.

Variants (``src/clip4str/configs/models/*.json``) are partial :class:`~clip4str.config.ModelConfig` dicts laid
over an architecture preset: :func:`variant_config` ``('vit-b16', 'clip-adapter')``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clip4str.clip.model import LayerNorm, ResidualAttentionBlock, VisionTransformer
from clip4str.config import AdapterConfig, ConfigError, ModelConfig, from_dict, to_dict
from clip4str.errors import CheckpointError

__all__ = [
    "ADAPTER_KINDS",
    "ClipAdapter",
    "LadderSideAdapter",
    "build_image_adapter",
    "trainable_parameter_names",
    "VARIANTS",
    "variant_names",
    "load_variant",
    "variant_config",
    "is_str_adapter_state_dict",
    "convert_str_adapter",
    "describe_trainable",
]

ADAPTER_KINDS = ("none", "clip-adapter", "ladder")


# ------------------------------------------------------------------------------------------------ helpers
def _backbone_grad(visual: nn.Module) -> bool:
    """Whether the backbone's activations need a graph (only when some of its parameters train)."""
    return torch.is_grad_enabled() and any(p.requires_grad for p in visual.parameters())


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters an optimiser would update (``requires_grad``)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


# ------------------------------------------------------------------------------------------------ adapters
class ClipAdapter(nn.Module):
    """CLIP-Adapter on the image memory. Keys ``fc.0.weight`` (E/k, E) and ``fc.2.weight`` (E, E/k), as the
    official ``str_adapter`` ``LinearAdapter``.

    Args:
        embed_dim: E, the width of the image memory.
        reduction: k, the bottleneck is ``E // k`` wide.
        ratio: r, the weight of the adapted features in ``r * f(x) + (1 - r) * x``.
    """

    def __init__(self, embed_dim: int, reduction: int = 4, ratio: float = 0.2) -> None:
        super().__init__()
        if reduction < 1 or embed_dim // reduction < 1:
            raise ConfigError(f"adapter.reduction must be in 1..{embed_dim} (embed_dim), got {reduction}")
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(f"adapter.ratio must be in [0, 1], got {ratio}")
        hidden = embed_dim // reduction
        self.ratio = float(ratio)
        self.fc = nn.Sequential(
            nn.Linear(embed_dim, hidden, bias=False),
            nn.ReLU(),
            nn.Linear(hidden, embed_dim, bias=False),
            nn.ReLU(),
        )
        for layer in (self.fc[0], self.fc[2]):
            nn.init.trunc_normal_(layer.weight, std=0.02)

    def adapt(self, memory: Tensor) -> Tensor:
        """(N, T, E) CLIP memory → (N, T, E) adapted memory."""
        return self.ratio * self.fc(memory) + (1.0 - self.ratio) * memory

    def forward(self, visual: VisionTransformer, images: Tensor) -> Tensor:
        """Images (N, 3, H, W) → adapted image memory (N, T, E)."""
        with torch.set_grad_enabled(_backbone_grad(visual)):
            memory = visual(images)
        return self.adapt(memory)


class LadderSideAdapter(nn.Module):
    """Ladder Side-Tuning: a narrow transformer beside the frozen ViT, fed by its intermediate features.

    Keys: ``down.{i}`` (``Linear(W, W/k)``; absent when k = 1), ``resblocks.{i}`` (CLIP blocks of width
    ``W/k``), ``ln_post``, ``proj`` (W/k, E) and ``alpha`` (one gate per tapped block). With k = 1 the layout is
    the official ``str_adapter`` ``LadderSideAdapter`` (full-width side blocks, no projections).

    Args:
        width, layers, heads: the ViT's width W, depth and head count.
        embed_dim: E, the width of the image memory.
        reduction: k, the side network is ``W // k`` wide.
        block_ids: ViT blocks whose inputs feed the side network (default: every block).
        temperature: T of the gates ``sigmoid(alpha / T)``.
        side_heads: attention heads of the side blocks (default: the most heads <= ``heads`` that divide the
            side width).
        activation: MLP activation of the side blocks (the CLIP tower's).
    """

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        embed_dim: int,
        reduction: int = 4,
        block_ids: list[int] | None = None,
        temperature: float = 0.1,
        side_heads: int | None = None,
        activation: str = "quick_gelu",
    ) -> None:
        super().__init__()
        if reduction < 1 or width % reduction:
            raise ConfigError(f"adapter.reduction={reduction} must be >= 1 and divide the ViT width {width}")
        ids = list(range(layers)) if block_ids is None else [int(i) for i in block_ids]
        bad = [i for i in ids if not 0 <= i < layers]
        if not ids or bad or len(set(ids)) != len(ids) or ids != sorted(ids):
            raise ConfigError(
                f"adapter.options.block_ids must be increasing, distinct ViT block indices in 0..{layers - 1}, "
                f"got {ids}"
            )
        if temperature <= 0:
            raise ConfigError(f"adapter.options.temperature must be > 0, got {temperature}")
        side = width // reduction
        if side_heads is None:
            side_heads = max(h for h in range(1, max(heads, 1) + 1) if side % h == 0)
        if side_heads < 1 or side % side_heads:
            raise ConfigError(f"adapter.options.side_heads={side_heads} must divide the side width {side}")
        self.block_ids = ids
        self.temperature = float(temperature)
        self.side_width = side
        self.down = nn.ModuleList(nn.Linear(width, side) if reduction > 1 else nn.Identity() for _ in ids)
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(side, side_heads, activation) for _ in ids)
        self.ln_post = LayerNorm(side)
        self.proj = nn.Parameter(side**-0.5 * torch.randn(side, embed_dim))
        self.alpha = nn.Parameter(torch.zeros(len(ids)))
        self._init_side_blocks()

    def _init_side_blocks(self) -> None:
        # CLIP's block initialisation, scaled to the side network's width and depth.
        width, layers = self.side_width, len(self.resblocks)
        attn_std = width**-0.5
        proj_std = attn_std * (2 * layers) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def gates(self) -> Tensor:
        """(len(block_ids),) mixing weights ``sigmoid(alpha / T)``; gate 0 weighs CLIP's memory at the end."""
        return torch.sigmoid(self.alpha / self.temperature)

    @torch.no_grad()
    def init_from_backbone(self, visual: VisionTransformer) -> None:
        """Copy the tapped ViT blocks, ``ln_post`` and ``proj`` into the side network (needs reduction 1, as the
        official ``ladder``). Call it after the CLIP weights are loaded."""
        if not all(isinstance(d, nn.Identity) for d in self.down):
            raise ConfigError(
                "init_from_backbone needs a full-width side network (adapter.reduction=1); with a reduction the "
                "side network starts from random weights"
            )
        for block, i in zip(self.resblocks, self.block_ids):
            block.load_state_dict(visual.transformer.resblocks[i].state_dict())
        self.ln_post.load_state_dict(visual.ln_post.state_dict())
        self.proj.copy_(visual.proj)

    def forward(self, visual: VisionTransformer, images: Tensor) -> Tensor:
        """Images (N, 3, H, W) → image memory (N, T, E) mixing CLIP's memory and the side network's."""
        gates = self.gates()
        taps = dict(zip(self.block_ids, range(len(self.block_ids))))
        side: Tensor | None = None
        backbone_grad = _backbone_grad(visual)
        with torch.set_grad_enabled(backbone_grad):
            x = visual.embed(images)
        blocks = visual.transformer.resblocks
        for i, block in enumerate(blocks):
            k = taps.get(i)
            if k is not None:
                fed = self.down[k](x)
                side = fed if side is None else gates[k] * fed + (1.0 - gates[k]) * side
                side = self.resblocks[k](side)
            with torch.set_grad_enabled(backbone_grad):
                x = block(x)
        with torch.set_grad_enabled(backbone_grad):
            memory = visual.ln_post(x) @ visual.proj
        assert side is not None  # block_ids is never empty
        side_memory = self.ln_post(side) @ self.proj.to(side.dtype)
        return gates[0] * memory + (1.0 - gates[0]) * side_memory


def build_image_adapter(config: ModelConfig) -> nn.Module:
    """The image adapter ``config.adapter`` describes (``kind`` 'clip-adapter' or 'ladder')."""
    a: AdapterConfig = config.adapter
    opts = dict(a.options)
    if a.kind == "clip-adapter":
        if opts:
            raise ConfigError(
                f"adapter.options has unknown key(s) {', '.join(sorted(opts))} for kind 'clip-adapter' (it takes "
                "none; use adapter.ratio and adapter.reduction)"
            )
        return ClipAdapter(config.clip.embed_dim, reduction=a.reduction, ratio=a.ratio)
    if a.kind == "ladder":
        known = {"block_ids", "temperature", "side_heads"}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise ConfigError(
                f"adapter.options has unknown key(s) {', '.join(unknown)} for kind 'ladder'; valid: "
                f"{', '.join(sorted(known))}"
            )
        v = config.clip.vision
        return LadderSideAdapter(
            v.width,
            v.layers,
            v.heads,
            config.clip.embed_dim,
            reduction=a.reduction,
            block_ids=opts.get("block_ids"),
            temperature=float(opts.get("temperature", 0.1)),
            side_heads=opts.get("side_heads"),
            activation=config.clip.activation,
        )
    raise ConfigError(f"adapter.kind must be one of {', '.join(ADAPTER_KINDS)}, got {a.kind!r}")


# ------------------------------------------------------------------------------------------------ variants
_VARIANT_DIR = "configs/models"


def _variant_files() -> dict[str, Any]:
    root = resources.files("clip4str").joinpath(_VARIANT_DIR)
    if not root.is_dir():
        return {}
    return {f.name[: -len(".json")]: f for f in root.iterdir() if f.name.endswith(".json")}


def variant_names() -> list[str]:
    """Names of the shipped model variants (``configs/models/*.json``), sorted."""
    return sorted(_variant_files())


VARIANTS: tuple[str, ...] = tuple(variant_names())


def load_variant(name_or_path: str | Path) -> dict[str, Any]:
    """A variant's partial ModelConfig (the ``model`` entry of its JSON): by shipped name or JSON path."""
    files = _variant_files()
    key = str(name_or_path)
    if key in files:
        text, source = files[key].read_text(encoding="utf-8"), f"variant {key!r}"
    elif key.endswith(".json") and Path(key).is_file():
        text, source = Path(key).read_text(encoding="utf-8"), key
    else:
        raise ConfigError(
            f"unknown model variant {key!r}; shipped variants: {', '.join(sorted(files)) or 'none'} (or give a "
            "path to a .json file)"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{source}: not valid JSON: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ConfigError(f"{source}: expected an object with a 'model' mapping (a partial ModelConfig)")
    model = copy.deepcopy(data["model"])
    if isinstance(model.get("charset_train"), str):
        from clip4str.charset import resolve_charset

        model["charset_train"] = resolve_charset(model["charset_train"])
    return model


def _merge(base: dict[str, Any], update: Mapping[str, Any], where: str) -> None:
    for key, value in update.items():
        here = f"{where}.{key}" if where else key
        if key not in base:
            raise ConfigError(f"unknown config key {here!r}; valid keys here: {', '.join(sorted(base))}")
        # free-form option dicts (adapter.options, text_encoder_options) are replaced, not merged
        if key in ("options", "text_encoder_options"):
            base[key] = copy.deepcopy(dict(value))
        elif isinstance(base[key], dict) and isinstance(value, Mapping):
            _merge(base[key], value, here)
        else:
            base[key] = value


def variant_config(base: str | ModelConfig, *variants: str, **overrides: Any) -> ModelConfig:
    """An architecture preset (or config) with variants laid over it in order, then ``overrides``.

    >>> cfg = variant_config("tiny", "clip-adapter")
    >>> cfg.adapter.kind, cfg.image_freeze_layers, cfg.text_freeze_layers
    ('clip-adapter', -1, -1)
    """
    if isinstance(base, ModelConfig):
        data = to_dict(base)
    else:
        from clip4str.presets import model_preset

        data = to_dict(model_preset(base))
    for name in variants:
        _merge(data, load_variant(name), f"variant {name}")
    _merge(data, overrides, "")
    return from_dict(ModelConfig, data)


# ------------------------------------------------------------------------------------------------ official
_STR_ADAPTER_KINDS = {"linear": "clip-adapter", "ladder": "ladder"}
_DEFAULT_BLOCK_IDS = [0, 4, 8, 11]  # STRAdapter's default block_ids


def is_str_adapter_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """True for the official single-decoder ``str_adapter`` layout (``decoder.*``, ``head.*``, ``clip_model.*``)."""
    return (
        "pos_queries" in state_dict
        and "head.weight" in state_dict
        and any(k.startswith("decoder.layers.") for k in state_dict)
        and not any(k.startswith("visual_decoder.") for k in state_dict)
    )


def convert_str_adapter(
    state_dict: Mapping[str, Tensor], hparams: Mapping[str, Any] | None = None
) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Convert an official ``STRAdapter`` checkpoint (``strhub/models/str_adapter``) → (config, state dict).

    The official model has one decoder reading the adapted image memory (no cross-modal branch). It becomes a
    CLIP4STR whose visual decoder holds that decoder and whose config decodes with the visual branch only
    (``decoding.visual_only=True``); the cross-modal decoder is a copy of it so that the file is complete
    (enable the cross-modal branch only after training it). Adapter types: ``linear`` → 'clip-adapter'
    (ratio 0.2, reduction from the weights); ``ladder`` → 'ladder' with reduction 1 and
    ``hyper_parameters.block_ids``. The ``attention``, ``linear_ladder`` and ``ladder_pruning`` types are not
    supported.
    """
    from clip4str.checkpoints import config_from_official

    hp = dict(hparams or {})
    adapter_type = str(hp.get("adapter_type", ""))
    adapter_keys = sorted(k for k in state_dict if k.startswith("adapter."))
    if not adapter_type:
        if "adapter.fc.0.weight" in state_dict:
            adapter_type = "linear"
        elif "adapter.alpha" in state_dict and any(".attn.in_proj_weight" in k for k in adapter_keys):
            adapter_type = "ladder"
        elif not adapter_keys:
            adapter_type = "identity"
        else:
            raise CheckpointError(
                f"str_adapter checkpoint: cannot tell the adapter type from its keys ({', '.join(adapter_keys[:4])}) "
                "and hyper_parameters has no adapter_type"
            )
    if adapter_type not in _STR_ADAPTER_KINDS and adapter_type != "identity":
        raise CheckpointError(
            f"str_adapter checkpoint with adapter_type={adapter_type!r} is not supported; supported: linear "
            "(CLIP-Adapter), ladder (full-width Ladder Side-Tuning) and checkpoints without an adapter"
        )
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("clip_model."):
            out[key] = value
        elif key.startswith("decoder."):
            out["visual_decoder." + key[len("decoder.") :]] = value
        elif key.startswith(("head.", "text_embed.")) or key == "pos_queries":
            out["visual_decoder." + key] = value
        elif key.startswith("adapter."):
            out["image_adapter." + key[len("adapter.") :]] = value
        else:
            raise CheckpointError(f"str_adapter checkpoint: unexpected key {key!r}")
    for key in [k for k in out if k.startswith("visual_decoder.")]:
        out["cross_decoder." + key[len("visual_decoder.") :]] = out[key].clone()

    if adapter_type == "linear":
        hidden, embed_dim = out["image_adapter.fc.0.weight"].shape
        adapter = AdapterConfig(kind="clip-adapter", ratio=0.2, reduction=embed_dim // hidden)
    elif adapter_type == "ladder":
        n_side = len({k.split(".")[2] for k in out if k.startswith("image_adapter.resblocks.")})
        block_ids = [int(i) for i in hp.get("block_ids", _DEFAULT_BLOCK_IDS)]
        if len(block_ids) != n_side:
            raise CheckpointError(
                f"str_adapter ladder checkpoint has {n_side} side blocks but block_ids={block_ids}; the "
                "hyper_parameters must record the block_ids it was trained with"
            )
        adapter = AdapterConfig(
            kind="ladder", reduction=1, options={"block_ids": block_ids, "temperature": 0.1}
        )
    else:
        adapter = AdapterConfig()
    config = config_from_official(out, hp)
    config.adapter = adapter
    config.decoding.visual_only = True
    if bool(hp.get("freeze_backbone", True)):
        config.image_freeze_layers = -1
        config.text_freeze_layers = -1
    return config, out


def describe_trainable(model: nn.Module) -> str:
    """One line per top-level part: trainable / total parameters (e.g. for a PEFT run's log)."""
    parts: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        top = re.split(r"\.", name, maxsplit=1)[0]
        if top == "clip_model":
            top = "clip_model.visual" if name.startswith("clip_model.visual.") else "clip_model.text"
        row = parts.setdefault(top, [0, 0])
        row[0] += p.numel() if p.requires_grad else 0
        row[1] += p.numel()
    total_t = sum(r[0] for r in parts.values())
    total = sum(r[1] for r in parts.values())
    lines = [f"{k}: {t:,} / {n:,} trainable" for k, (t, n) in parts.items()]
    lines.append(f"total: {total_t:,} / {total:,} trainable ({100 * total_t / max(total, 1):.2f}%)")
    return "\n".join(lines)
