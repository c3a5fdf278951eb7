"""PARSeq-style two-stream decoder, as used by both CLIP4STR branches.

Parameter names follow the official checkpoints (``pos_queries``, ``layers.{i}.self_attn.in_proj_weight``,
``text_embed.embedding.weight``, ``norm``, ``head``) so released weights load without a key map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clip4str.clip.model import PackedMultiheadAttention


def additive_mask(
    attn_mask: Tensor | None, key_padding_mask: Tensor | None, dtype: torch.dtype
) -> Tensor | None:
    """Merge a float (L, S) mask (``-inf`` = blocked) and a bool (N, S) padding mask into (N|1, 1, L|1, S)."""
    mask = None
    if attn_mask is not None:
        mask = attn_mask.to(dtype)[None, None]
    if key_padding_mask is not None:
        pad = torch.zeros(key_padding_mask.shape, dtype=dtype, device=key_padding_mask.device)
        pad = pad.masked_fill(key_padding_mask, float("-inf"))[:, None, None, :]
        mask = pad if mask is None else mask + pad
    return mask


class MultiheadAttention(PackedMultiheadAttention):
    """Attention of queries over keys/values from any sequence, with attention dropout (packed parameters
    as ``nn.MultiheadAttention``). The key/value projection (:meth:`project_kv`) can be computed once and
    reused across decoding steps.

    Inputs are batch-first: query (N, L, E), key/value (N, S, E). ``mask`` is additive, broadcastable to
    (N, heads, L, S).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__(embed_dim, num_heads)
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        # Opt-in (attention maps): when a list, each attend() appends its probabilities (N, heads, L, S).
        self.record: list[Tensor] | None = None

    def _split(self, x: Tensor) -> Tensor:
        n, s, _ = x.shape
        return x.view(n, s, self.heads, self.head_dim).transpose(1, 2)

    def project_kv(self, key: Tensor, value: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Key/value projections split into heads: two (N, heads, S, head_dim) tensors."""
        e = self.width
        w, b = self.in_proj_weight, self.in_proj_bias
        if value is None or value is key:
            k, v = F.linear(key, w[e:], b[e:]).chunk(2, dim=-1)
        else:
            k = F.linear(key, w[e : 2 * e], b[e : 2 * e])
            v = F.linear(value, w[2 * e :], b[2 * e :])
        return self._split(k), self._split(v)

    def attend(self, query: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attention of (N, L, E) queries over projected heads ``k``, ``v`` → (N, L, E)."""
        e = self.width
        q = self._split(F.linear(query, self.in_proj_weight[:e], self.in_proj_bias[:e]))
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        if self.record is not None:
            self.record.append(self.probabilities(q, k, mask))
        n, _, l, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(n, l, e))

    def probabilities(self, q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attention probabilities (N, heads, L, S) in float32 of split queries ``q`` over keys ``k``, as
        :meth:`attend` weighs the values (without dropout). Computed apart, so outputs never change."""
        scores = (q.float() @ k.float().transpose(-2, -1)) * self.head_dim**-0.5
        if mask is not None:
            scores = scores + mask.float()
        return scores.softmax(-1)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        k, v = self.project_kv(key, value)
        return self.attend(query, k, v, mask)


class DecoderLayer(nn.Module):
    """Pre-LN two-stream layer: self-attention of queries over (normalised) content, cross-attention over
    memory, GELU MLP. The content stream is updated the same way (with its own mask) except in the last layer.
    """

    def __init__(self, d_model: int, nhead: int, mlp_ratio: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout)
        self.cross_attn = MultiheadAttention(d_model, nhead, dropout)
        self.linear1 = nn.Linear(d_model, d_model * mlp_ratio)
        self.linear2 = nn.Linear(d_model * mlp_ratio, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_c = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def stream(
        self,
        x: Tensor,
        x_norm: Tensor,
        content_norm: Tensor,
        memory: Tensor | tuple[Tensor, Tensor],
        self_mask: Tensor | None,
    ) -> Tensor:
        """One stream update. ``memory`` is (N, S, E) or its precomputed cross-attention (k, v) heads."""
        x = x + self.dropout1(self.self_attn(x_norm, content_norm, content_norm, self_mask))
        mem_k, mem_v = memory if isinstance(memory, tuple) else self.cross_attn.project_kv(memory)
        x = x + self.dropout2(self.cross_attn.attend(self.norm1(x), mem_k, mem_v))
        x = x + self.dropout3(self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(x))))))
        return x

    def stream_cached(
        self,
        x: Tensor,
        x_norm: Tensor,
        self_kv: tuple[Tensor, Tensor],
        memory_kv: tuple[Tensor, Tensor],
        self_mask: Tensor | None,
    ) -> Tensor:
        """:meth:`stream` with the self-attention keys/values of the content already projected."""
        x = x + self.dropout1(self.self_attn.attend(x_norm, *self_kv, self_mask))
        x = x + self.dropout2(self.cross_attn.attend(self.norm1(x), *memory_kv))
        x = x + self.dropout3(self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(x))))))
        return x

    def forward(
        self,
        query: Tensor,
        content: Tensor,
        memory: Tensor | tuple[Tensor, Tensor],
        query_mask: Tensor | None,
        content_mask: Tensor | None,
        update_content: bool,
    ) -> tuple[Tensor, Tensor]:
        content_norm = self.norm_c(content)
        query = self.stream(query, self.norm_q(query), content_norm, memory, query_mask)
        if update_content:
            content = self.stream(content, content_norm, content_norm, memory, content_mask)
        return query, content


@dataclass
class StepCache:
    """State of an incremental decode (:meth:`Decoder.step`): per layer, the memory's cross-attention
    keys/values (N, heads, S, head_dim) and the content's self-attention keys/values (N, heads, steps,
    head_dim), filled one position per step."""

    memory_kv: list[tuple[Tensor, Tensor]]
    keys: list[Tensor]
    values: list[Tensor]
    offsets: Tensor  # (steps + 1, E): position offset of content token t
    steps: Tensor  # (steps,) arange


class TokenEmbedding(nn.Module):
    """Character embedding scaled by sqrt(width), as PARSeq."""

    def __init__(self, num_tokens: int, width: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_tokens, width)
        self.scale = math.sqrt(width)

    def forward(self, ids: Tensor) -> Tensor:
        return self.scale * self.embedding(ids)


class Decoder(nn.Module):
    """Two-stream decoder with its own position queries, character embedding and classification head.

    ``forward(tgt, memory, ...)``: ``tgt`` (N, L) ids starting with [B]; returns logits (N, Q, num_classes)
    for Q queries (default: the first L position queries).
    """

    def __init__(
        self,
        width: int,
        depth: int,
        num_heads: int,
        mlp_ratio: int,
        dropout: float,
        num_tokens: int,
        num_classes: int,
        max_positions: int,
    ) -> None:
        super().__init__()
        self.width = width
        self.layers = nn.ModuleList(DecoderLayer(width, num_heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.text_embed = TokenEmbedding(num_tokens, width)
        self.pos_queries = nn.Parameter(torch.empty(1, max_positions, width))
        self.head = nn.Linear(width, num_classes)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official init: trunc_normal(0.02) for Linear/Embedding/pos_queries, zero biases, xavier MHA."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.trunc_normal_(module.weight, std=0.02)
            elif isinstance(module, MultiheadAttention):
                nn.init.xavier_uniform_(module.in_proj_weight)
                nn.init.zeros_(module.in_proj_bias)
        nn.init.trunc_normal_(self.pos_queries, std=0.02)

    def embed_content(self, tgt: Tensor) -> Tensor:
        """(N, L) ids → (N, L, E): [B] gets no position; token j ≥ 1 gets ``pos_queries[j-1]``."""
        emb = self.text_embed(tgt)
        length = tgt.shape[1]
        if length > 1:
            emb = torch.cat([emb[:, :1], emb[:, 1:] + self.pos_queries[:, : length - 1]], dim=1)
        return self.dropout(emb)

    def memory_kv(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per-layer cross-attention keys/values of ``memory``, to reuse across decoding steps."""
        return [layer.cross_attn.project_kv(memory) for layer in self.layers]

    def init_cache(self, memory_kv: list[tuple[Tensor, Tensor]], num_steps: int) -> StepCache:
        """An empty content cache for :meth:`step`, for ``num_steps`` autoregressive steps."""
        k0 = memory_kv[0][0]
        n, heads, _, head_dim = k0.shape
        shape = (n, heads, num_steps, head_dim)
        # Zeros, not empty: masked slots are multiplied by an exact 0 weight, and 0 * NaN would be NaN.
        keys = [k0.new_zeros(shape) for _ in self.layers]
        values = [k0.new_zeros(shape) for _ in self.layers]
        # Position offsets of the content tokens: none for [B] (step 0), pos_queries[t - 1] for step t.
        offsets = torch.cat([self.pos_queries.new_zeros(1, self.width), self.pos_queries[0]], dim=0)
        steps = torch.arange(num_steps, device=k0.device)
        return StepCache(memory_kv, keys, values, offsets, steps)

    def step(self, cache: StepCache, ids: Tensor, t: Tensor) -> Tensor:
        """One greedy autoregressive step with static shapes (CUDA-graph and ``torch.compile`` friendly).

        Appends content token ``ids`` (N,) at position ``t`` (a one-element long tensor) to ``cache`` and
        reads position ``t`` with the single query ``pos_queries[t]``, attending over the content 0..t.
        Returns logits (N, 1, C). Equal to :meth:`forward` on the whole prefix with that query.
        """
        n = ids.shape[0]
        content = self.text_embed(ids)[:, None] + cache.offsets.index_select(0, t)[None]
        content = self.dropout(content)
        query = self.dropout(self.pos_queries[0].index_select(0, t)[None].expand(n, -1, -1))
        # Keys after position t are not written yet: mask them out (shapes stay the same at every step).
        mask = torch.zeros(cache.steps.shape, dtype=query.dtype, device=query.device)
        mask = mask.masked_fill(cache.steps > t, float("-inf"))[None, None, None]
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            content_norm = layer.norm_c(content)
            k, v = layer.self_attn.project_kv(content_norm)
            cache.keys[i].index_copy_(2, t, k)
            cache.values[i].index_copy_(2, t, v)
            self_kv = (cache.keys[i], cache.values[i])
            query = layer.stream_cached(query, layer.norm_q(query), self_kv, cache.memory_kv[i], mask)
            if i < last:
                content = layer.stream_cached(content, content_norm, self_kv, cache.memory_kv[i], mask)
        return self.head(self.norm(query))

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor | list[tuple[Tensor, Tensor]],
        query: Tensor | None = None,
        query_mask: Tensor | None = None,
        content_mask: Tensor | None = None,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Logits (N, Q, C).

        Args:
            tgt: (N, L) token ids, ``[B]`` first.
            memory: (N, S, E) memory, or the output of :meth:`memory_kv`.
            query: (N|1, Q, E) position queries; default ``pos_queries[:, :L]``.
            query_mask: (Q, L) additive float mask of queries over content.
            content_mask: (L, L) additive mask of the content stream (used only when depth > 1).
            padding_mask: (N, L) bool, True = content position ignored.
        """
        n, length = tgt.shape
        content = self.embed_content(tgt)
        if query is None:
            query = self.pos_queries[:, :length]
        query = self.dropout(query.expand(n, -1, -1))
        dtype = content.dtype
        q_mask = additive_mask(query_mask, padding_mask, dtype)
        c_mask = additive_mask(content_mask, padding_mask, dtype) if len(self.layers) > 1 else None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            mem = memory[i] if isinstance(memory, list) else memory
            query, content = layer(query, content, mem, q_mask, c_mask, update_content=i < last)
        return self.head(self.norm(query))
