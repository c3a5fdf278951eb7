"""CLIP image and text towers with OpenAI's parameter names, so an OpenAI/OpenCLIP state dict loads unchanged.

Only ViT visual towers are supported (CLIP4STR uses ViT-B/16, B/32, L/14 and H/14). Sizes come from a state
dict's shapes through :func:`infer_clip_config`, exactly as the official ``build_model`` infers them: in
particular the head count is ``width // 64`` for both towers (20 vision heads for ViT-H/14).

Shapes: ``N`` batch, ``W`` tower width, ``E`` ``embed_dim``, ``T = 1 + grid**2`` image tokens, ``S`` text
length (at most ``context_length``).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from clip4str.config import CLIPConfig, TextConfig, VisionConfig
from clip4str.errors import CheckpointError

__all__ = [
    "CLIP",
    "LayerNorm",
    "QuickGELU",
    "MultiheadSelfAttention",
    "PackedMultiheadAttention",
    "ResidualAttentionBlock",
    "Transformer",
    "VisionTransformer",
    "infer_clip_config",
    "round_like_official_fp16",
    "check_clip_keys",
]


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype; the result is cast back (as OpenAI's CLIP)."""

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


QUICK_GELU_SCALE = 1.702


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the activation every official CLIP4STR backbone uses."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(QUICK_GELU_SCALE * x)


def _activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown CLIP activation {name!r}; expected 'quick_gelu' or 'gelu'")


class PackedMultiheadAttention(nn.Module):
    """Parameters of multi-head attention as ``nn.MultiheadAttention`` packs them: ``in_proj_weight``
    (3W, W) and ``in_proj_bias`` (3W,) for q, k, v, then ``out_proj``; heads split contiguously."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if heads < 1 or width % heads:
            raise ValueError(f"attention heads={heads} must be >= 1 and divide width={width}")
        self.width = width
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)


class MultiheadSelfAttention(PackedMultiheadAttention):
    """Self-attention computed by ``scaled_dot_product_attention``."""

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """x: (N, L, W) → (N, L, W). ``attn_mask``: additive float or boolean (True = attend) (L, L) mask;
        ``causal``: position i attends to positions <= i (used instead of a mask tensor)."""
        n, length, width = x.shape
        head_dim = width // self.heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = (t.reshape(n, length, self.heads, head_dim).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=causal and attn_mask is None
        )
        return self.out_proj(out.transpose(1, 2).reshape(n, length, width))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``; MLP width 4W."""

    def __init__(self, width: int, heads: int, activation: str = "quick_gelu") -> None:
        super().__init__()
        self.attn = MultiheadSelfAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, width * 4)),
                    ("gelu", _activation(activation)),
                    ("c_proj", nn.Linear(width * 4, width)),
                ]
            )
        )
        self.ln_2 = LayerNorm(width)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """x: (N, L, W) → (N, L, W)."""
        x = x + self.attn(self.ln_1(x), attn_mask=attn_mask, causal=causal)
        return x + self.feed_forward(self.ln_2(x))

    def feed_forward(self, x: Tensor) -> Tensor:
        """The MLP, (N, L, W) → (N, L, W).

        QuickGELU(h) = h·σ(1.702h) = silu(1.702h) / 1.702, so both constants can be folded into the two
        linear layers: one fused activation pass over the (N, L, 4W) hidden tensor instead of three. Scaling
        the weights costs about two passes over (4W, W), so it is done only when the hidden tensor is larger.
        """
        fc, proj = self.mlp.c_fc, self.mlp.c_proj
        tokens = x.numel() // x.shape[-1]
        if not isinstance(self.mlp.gelu, QuickGELU) or tokens <= 2 * x.shape[-1]:
            return self.mlp(x)
        hidden = F.linear(x, fc.weight * QUICK_GELU_SCALE, fc.bias * QUICK_GELU_SCALE)
        hidden = F.silu(hidden, inplace=not torch.is_grad_enabled())
        return F.linear(hidden, proj.weight * (1.0 / QUICK_GELU_SCALE), proj.bias)


class Transformer(nn.Module):
    """A stack of :class:`ResidualAttentionBlock` in ``resblocks`` (an ``nn.ModuleList``, for freezing)."""

    def __init__(self, width: int, layers: int, heads: int, activation: str = "quick_gelu") -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, activation) for _ in range(layers)
        )
        # Recompute activations in the backward pass to save memory (training large backbones).
        self.grad_checkpointing = False

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """x: (N, L, W) → (N, L, W)."""
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled() and x.requires_grad:
                x = checkpoint(block, x, attn_mask, causal, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask, causal=causal)
        return x


def sincos_positions(grid_hw: tuple[int, int], width: int) -> Tensor:
    """(1 + rows*cols, width) 2D sine-cosine position table, row-major, with a zero row for the class token:
    half the channels encode the row, half the column (as MAE's fixed table)."""
    if width % 4:
        raise ValueError(f"a sine-cosine position table needs a width divisible by 4, got {width}")
    quarter = width // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid_hw[0], dtype=torch.float64),
        torch.arange(grid_hw[1], dtype=torch.float64),
        indexing="ij",
    )
    angles = [pos.flatten()[:, None] * freqs[None] for pos in (rows, cols)]
    table = torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1)
    return torch.cat([torch.zeros(1, width, dtype=torch.float64), table]).float()


class ConvStem(nn.Module):
    """3x3 convolutions (GELU between) halving H and/or W until the ``patch`` stride is reached, then a 1x1
    projection to ``width``: the patch grid of a strided patch convolution, with locality built in.
    (N, 3, H, W) → (N, width, H / ph, W / pw)."""

    def __init__(self, width: int, patch: tuple[int, int]) -> None:
        super().__init__()
        (ph, pw), layers, channels = patch, [], 3
        if ph & (ph - 1) or pw & (pw - 1):
            raise ValueError(f"a convolutional stem needs power-of-two patch sides, got {ph}x{pw}")
        out = max(width // 2 ** max(ph.bit_length(), pw.bit_length()), 16)
        while ph > 1 or pw > 1:
            stride = (2 if ph > 1 else 1, 2 if pw > 1 else 1)
            out = min(out * 2, width)
            layers += [nn.Conv2d(channels, out, 3, stride=stride, padding=1), nn.GELU()]
            channels, ph, pw = out, ph // stride[0], pw // stride[1]
        layers.append(nn.Conv2d(channels, width, 1))
        self.layers = nn.Sequential(*layers)
        # He init keeps the image signal alive through the stack (PyTorch's default shrinks it ~100x here).
        for conv in self.layers[::2]:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images)


class VisionTransformer(nn.Module):
    """CLIP's ViT: patch conv (no bias), class token, positional embedding, ``ln_pre``, blocks, ``ln_post``,
    ``proj`` (W, E)."""

    def __init__(self, cfg: VisionConfig, embed_dim: int, activation: str = "quick_gelu") -> None:
        super().__init__()
        width = cfg.width
        self.image_hw = cfg.image_hw
        self.patch_hw = cfg.patch_hw
        self.grid_hw = cfg.grid_hw
        if cfg.stem == "conv":
            self.stem = ConvStem(width, cfg.patch_hw)
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_hw, stride=cfg.patch_hw, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        if cfg.stem == "conv":
            # A from-scratch model: positions start as a sine-cosine table as strong as the stem's features,
            # so the decoders' queries can find character positions from the first steps.
            self.positional_embedding = nn.Parameter(sincos_positions(cfg.grid_hw, width))
        else:
            self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.num_tokens, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, cfg.layers, cfg.heads, activation)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim))

    @property
    def patch_embedding(self) -> nn.Module:
        """(N, 3, H, W) → (N, W, rows, cols): ``conv1`` (CLIP) or the convolutional ``stem``."""
        return self.stem if hasattr(self, "stem") else self.conv1

    def embed(self, images: Tensor) -> Tensor:
        """The input of the first block: patches, class token, positions, ``ln_pre``. (N, 3, H, W) → (N, T, W)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError("expected at least one image, got an empty batch")
        if tuple(images.shape[-2:]) != self.image_hw:
            (h, w), (ph, pw) = self.image_hw, self.patch_hw
            raise ValueError(
                f"images of size {tuple(images.shape[-2:])} do not fit this ViT, whose positional embedding is "
                f"for {h}x{w} images (patch {ph}x{pw}); resize the images to {h}x{w}"
            )
        x = self.patch_embedding(images.to(self.class_embedding.dtype))  # (N, W, rows, cols)
        x = x.flatten(2).transpose(1, 2)  # (N, rows*cols, W)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def forward(self, images: Tensor) -> Tensor:
        """images (N, 3, H, W) → ``ln_post`` of every token projected: (N, T, E)."""
        x = self.transformer(self.embed(images))
        return self.ln_post(x) @ self.proj


class CLIP(nn.Module):
    """OpenAI-layout CLIP with a ViT image tower and a causal text tower.

    ``state_dict()`` keys equal OpenAI's (``visual.conv1.weight``,
    ``transformer.resblocks.0.attn.in_proj_weight``, ``token_embedding.weight``, ``text_projection``,
    ``logit_scale``, ...); there are no buffers.
    """

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_dim = cfg.embed_dim
        self.context_length = cfg.text.context_length
        self.visual = VisionTransformer(cfg.vision, cfg.embed_dim, cfg.activation)
        text = cfg.text
        self.transformer = Transformer(text.width, text.layers, text.heads, cfg.activation)
        self.token_embedding = nn.Embedding(text.vocab_size, text.width)
        self.positional_embedding = nn.Parameter(torch.empty(text.context_length, text.width))
        self.ln_final = LayerNorm(text.width)
        self.text_projection = nn.Parameter(torch.empty(text.width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """Random init in the style of OpenAI's CLIP (normal with width-scaled std; LayerNorm 1/0)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for tower in (self.transformer, self.visual.transformer):
            width, layers = tower.width, tower.layers
            attn_std = width**-0.5
            proj_std = attn_std * (2 * layers) ** -0.5
            fc_std = (2 * width) ** -0.5
            for block in tower.resblocks:
                nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=self.transformer.width**-0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.class_embedding.dtype

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations during backward (both towers) to save memory."""
        self.visual.transformer.grad_checkpointing = enable
        self.transformer.grad_checkpointing = enable

    def encode_image_tokens(self, images: Tensor) -> Tensor:
        """images (N, 3, H, W) → (N, T, E): ``ln_post`` on all tokens (CLS first) ``@ visual.proj``.

        This is CLIP4STR's image memory (``encode_image(img, cls=False, projection=True)`` in the original).
        """
        return self.visual(images)

    def encode_text_tokens(self, ids: Tensor) -> Tensor:
        """ids (N, S) integer token ids, S <= context_length → (N, S, E).

        Causal self-attention over the S positions (the 77×77 mask sliced to S×S), ``ln_final`` and
        ``@ text_projection`` at every position; padding positions are computed like any other (no mask).
        """
        if ids.dim() != 2:
            raise ValueError(f"expected token ids of shape (N, S), got {tuple(ids.shape)}")
        if ids.is_floating_point():
            raise ValueError(f"token ids must be an integer tensor, got {ids.dtype}")
        length = ids.shape[1]
        if length > self.context_length:
            raise ValueError(
                f"text length {length} exceeds the text tower's context length {self.context_length}"
            )
        x = self.token_embedding(ids.long())
        x = x + self.positional_embedding[:length].to(x.dtype)
        x = self.transformer(x, causal=True)
        return self.ln_final(x) @ self.text_projection

    def encode_image(self, images: Tensor) -> Tensor:
        """images (N, 3, H, W) → (N, E): the projected class token, as OpenAI's ``encode_image``."""
        return self.encode_image_tokens(images)[:, 0]

    def encode_text(self, ids: Tensor) -> Tensor:
        """ids (N, S) → (N, E): the projected feature at each row's highest id (EOT), as OpenAI's."""
        tokens = self.encode_text_tokens(ids)
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), ids.argmax(dim=-1)]

    def forward(self, images: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
        """images (N, 3, H, W), ids (M, S) → (logits_per_image (N, M), logits_per_text (M, N))."""
        image_features = F.normalize(self.encode_image(images), dim=-1)
        text_features = F.normalize(self.encode_text(ids), dim=-1)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


# --------------------------------------------------------------------------------------------------
# Sizes from a state dict.

_REQUIRED_KEYS = (
    "visual.conv1.weight",
    "visual.class_embedding",
    "visual.positional_embedding",
    "visual.proj",
    "token_embedding.weight",
    "positional_embedding",
    "text_projection",
    "ln_final.weight",
)


def check_clip_keys(keys: object, prefix: str = "", source: str = "state dict") -> None:
    """Raise :class:`CheckpointError` unless ``keys`` look like an OpenAI-layout ViT CLIP state dict.

    Recognises (and rejects with a specific message) ResNet CLIP visual towers, Hugging Face
    ``transformers`` CLIP files and CLIP4STR checkpoints passed where a bare CLIP is expected.
    """
    keys = set(keys)  # type: ignore[arg-type]
    p = prefix
    if any(k.startswith(f"{p}visual.layer1.") or k.startswith(f"{p}visual.attnpool.") for k in keys):
        raise CheckpointError(
            f"{source} holds a ResNet (ModifiedResNet) CLIP visual tower, which clip4str does not support; "
            "use a ViT CLIP (ViT-B/16, ViT-B/32, ViT-L/14, ViT-H/14)"
        )
    if any(
        k.startswith(f"{p}vision_model.") or k.startswith(f"{p}text_model.") or ".vision_model.encoder." in k
        for k in keys
    ):
        raise CheckpointError(
            f"{source} is in the Hugging Face transformers CLIP layout (vision_model.encoder.layers...), "
            "which is not supported; use OpenAI's .pt file or OpenCLIP's open_clip_pytorch_model.bin / "
            "open_clip_model.safetensors"
        )
    missing = [p + k for k in _REQUIRED_KEYS if p + k not in keys]
    if missing:
        if not p and any(k.startswith("clip_model.") for k in keys):
            raise CheckpointError(
                f"{source} looks like a CLIP4STR checkpoint (keys start with 'clip_model.'), not a bare "
                "CLIP; load it with clip4str.checkpoints.load_model, or pass prefix='clip_model.'"
            )
        sample = ", ".join(sorted(keys)[:5]) or "no keys at all"
        raise CheckpointError(
            f"{source} is not an OpenAI-layout CLIP state dict: missing key {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f"; expected keys such as {', '.join(repr(p + k) for k in _REQUIRED_KEYS[:4])}; found {sample}"
        )


def _layer_indices(keys: set[str], pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.fullmatch(pattern, k))}
    if found and found != set(range(len(found))):
        raise CheckpointError(f"transformer layer indices are not contiguous from 0: {sorted(found)}")
    return len(found)


def infer_clip_config(
    state_dict: Mapping[str, Tensor],
    activation: str = "quick_gelu",
    head_width: int = 64,
    prefix: str = "",
) -> CLIPConfig:
    """Every CLIP size from the shapes of an OpenAI-layout state dict, as the official ``build_model``.

    ``prefix`` selects the CLIP keys inside a larger dict (e.g. ``'clip_model.'`` in a CLIP4STR checkpoint).
    Heads are ``width // head_width`` for both towers. Raises :class:`CheckpointError` naming a missing key,
    or for ResNet / Hugging Face-format CLIPs.
    """
    keys = {k for k in state_dict if k.startswith(prefix)}
    check_clip_keys(keys, prefix)

    def shape(key: str) -> tuple[int, ...]:
        return tuple(state_dict[prefix + key].shape)

    p = re.escape(prefix)
    vision_width, in_ch, patch, patch_w = shape("visual.conv1.weight")
    if in_ch != 3 or patch != patch_w:
        raise CheckpointError(
            f"{prefix}visual.conv1.weight has shape {shape('visual.conv1.weight')}; expected (width, 3, p, p)"
        )
    vision_layers = _layer_indices(keys, p + r"visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_weight")
    rows = shape("visual.positional_embedding")[0]
    grid = round(math.sqrt(rows - 1))
    if grid * grid + 1 != rows:
        raise CheckpointError(
            f"{prefix}visual.positional_embedding has {rows} rows; expected 1 + grid**2 (e.g. 197 for 14x14)"
        )
    text_width = shape("ln_final.weight")[0]
    text_layers = _layer_indices(keys, p + r"transformer\.resblocks\.(\d+)\.attn\.in_proj_weight")
    if vision_layers == 0 or text_layers == 0:
        tower = "visual.transformer" if vision_layers == 0 else "transformer"
        raise CheckpointError(
            f"no {prefix}{tower}.resblocks.<i>.attn.in_proj_weight keys: the tower has no layers"
        )
    for width, name in ((vision_width, "vision"), (text_width, "text")):
        if width < head_width:
            raise CheckpointError(
                f"{name} width {width} is smaller than head_width={head_width}; pass a smaller head_width"
            )
    vision = VisionConfig(
        width=vision_width,
        layers=vision_layers,
        heads=vision_width // head_width,
        patch_size=patch,
        image_size=patch * grid,
    )
    text = TextConfig(
        width=text_width,
        layers=text_layers,
        heads=text_width // head_width,
        context_length=shape("positional_embedding")[0],
        vocab_size=shape("token_embedding.weight")[0],
    )
    return CLIPConfig(embed_dim=shape("text_projection")[1], vision=vision, text=text, activation=activation)


_FP16_ROUNDED = re.compile(
    r"(^|\.)(conv1\.weight|attn\.in_proj_weight|attn\.in_proj_bias|attn\.out_proj\.(weight|bias)"
    r"|mlp\.c_fc\.(weight|bias)|mlp\.c_proj\.(weight|bias)|visual\.proj|text_projection)$"
)


def round_like_official_fp16(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Reproduce the official ``build_model`` → ``convert_weights`` → ``.float()`` round trip.

    Weights and biases of every conv, linear and attention layer, plus ``visual.proj`` and
    ``text_projection``, are rounded to fp16 and returned as fp32; LayerNorms, embeddings,
    class/positional embeddings and ``logit_scale`` keep their values (as fp32). Only fresh training
    from an fp32 (OpenCLIP) file sees a difference: OpenAI's files are already fp16.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if isinstance(value, Tensor) and value.is_floating_point():
            if _FP16_ROUNDED.search(key):
                value = value.half()
            value = value.float()
        out[key] = value
    return out
