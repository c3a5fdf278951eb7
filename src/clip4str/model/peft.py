"""Parameter-efficient tuning of CLIP4STR's image features: the adapter modules.

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
applied by ``CLIP4STR.freeze_``). The variants that switch these adapters on (``'clip-adapter'``,
``'ladder'``) are in :mod:`clip4str.presets`; official ``str_adapter`` files are converted by
:mod:`clip4str.checkpoints`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clip4str.clip.model import LayerNorm, ResidualAttentionBlock, VisionTransformer
from clip4str.config import ADAPTER_KINDS, AdapterConfig, ConfigError, ModelConfig

__all__ = ["ClipAdapter", "LadderSideAdapter", "build_image_adapter", "trainable_parameter_names"]


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
