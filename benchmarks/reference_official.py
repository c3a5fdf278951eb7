"""REFERENCE ONLY — not part of the clip4str package and never used by it.

A straightforward re-implementation of the *official* CLIP4STR (VL4STR) inference computation, kept as the
baseline the speed benchmark compares against and as an independent check of decoding semantics. It follows
the official code's structure and cost model (facts from ``../shared/golden/README.md`` section 10), not its
text:

* every attention is an ``nn.MultiheadAttention`` (CLIP towers in (L, N, E) layout with a float causal mask
  for text; the decoders batch-first with ``need_weights=True``, as PARSeq's decoder layer calls them);
* the autoregressive loops re-run the decoder on the whole prefix at every step, so the cross-attention keys
  and values of the full image memory are projected again at every step and nothing is cached;
* the visual loop stops only once every row has emitted EOS (batch-wide); the cross-modal loop runs exactly
  as many steps as the visual loop did, with no early stop, reusing the same target buffer;
* captions are built row by row in Python (``decode_fast`` + charset adapter) and tokenised with
  ``clip_tokenize`` per caption list, on the CPU, twice per batch with refinement.

Where the official code crashes (NAR decoding, ``use_language_model=False``), this reference takes the
natural extension the package also takes: a one-pass NAR cross branch, and the visual branch alone.

Build it from a :class:`clip4str.model.clip4str.CLIP4STR`; it shares that model's parameter tensors (the
state-dict keys are the official ones), so both compute with the same weights::

    ref = OfficialReference(model).eval()
    logits = ref(images)                     # (N, k, C), the official forward
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clip4str.clip.tokenizer import clip_tokenize
from clip4str.model.clip4str import CLIP4STR

__all__ = ["OfficialReference"]


class _LayerNorm(nn.LayerNorm):
    """CLIP's LayerNorm: computed in fp32, result cast back to the input dtype."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


class _QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class _ResBlock(nn.Module):
    def __init__(self, width: int, heads: int, activation: str) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = _LayerNorm(width)
        act = _QuickGELU() if activation == "quick_gelu" else nn.GELU()
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
        self.mlp.add_module("gelu", act)
        self.mlp.add_module("c_proj", nn.Linear(width * 4, width))
        self.ln_2 = _LayerNorm(width)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        """x: (L, N, W)."""
        mask = None if attn_mask is None else attn_mask.to(x.dtype)
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, activation: str) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(_ResBlock(width, heads, activation) for _ in range(layers))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class _Visual(nn.Module):
    def __init__(self, cfg, embed_dim: int, activation: str) -> None:
        super().__init__()
        w = cfg.width
        self.conv1 = nn.Conv2d(3, w, cfg.patch_size, cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(w))
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.num_tokens, w))
        self.ln_pre = _LayerNorm(w)
        self.transformer = _Transformer(w, cfg.layers, cfg.heads, activation)
        self.ln_post = _LayerNorm(w)
        self.proj = nn.Parameter(torch.zeros(w, embed_dim))

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) → every token, ``ln_post`` then ``@ proj``: (N, T, E) (``cls=False, projection=True``)."""
        x = self.conv1(x.to(self.conv1.weight.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(
            x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device
        )
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x).permute(1, 0, 2)
        x = self.transformer(x).permute(1, 0, 2)
        return self.ln_post(x) @ self.proj


class _CLIP(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.visual = _Visual(cfg.vision, cfg.embed_dim, cfg.activation)
        t = cfg.text
        self.transformer = _Transformer(t.width, t.layers, t.heads, cfg.activation)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.zeros(t.context_length, t.width))
        self.ln_final = _LayerNorm(t.width)
        self.text_projection = nn.Parameter(torch.zeros(t.width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.zeros(()))

    def encode_text(self, ids: Tensor) -> Tensor:
        """(N, S) ids → (N, S, E): causal mask sliced to S×S, ``ln_final`` and projection at every position."""
        s = ids.shape[1]
        x = self.token_embedding(ids.long()) + self.positional_embedding[:s]
        mask = torch.full((s, s), float("-inf"), device=ids.device).triu(1)
        x = self.transformer(x.permute(1, 0, 2), mask).permute(1, 0, 2)
        return self.ln_final(x) @ self.text_projection


class _DecoderLayer(nn.Module):
    def __init__(self, d: int, nhead: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, nhead, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d, d * mlp_ratio)
        self.linear2 = nn.Linear(d * mlp_ratio, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm_q = nn.LayerNorm(d)
        self.norm_c = nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def stream(self, tgt, tgt_norm, tgt_kv, memory, mask, padding):
        tgt2, _ = self.self_attn(tgt_norm, tgt_kv, tgt_kv, attn_mask=mask, key_padding_mask=padding)
        tgt = tgt + self.dropout1(tgt2)
        tgt2, _ = self.cross_attn(self.norm1(tgt), memory, memory)
        tgt = tgt + self.dropout2(tgt2)
        tgt2 = self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(tgt)))))
        return tgt + self.dropout3(tgt2)

    def forward(self, query, content, memory, query_mask, content_mask, padding, update_content: bool):
        content_norm = self.norm_c(content)
        query = self.stream(query, self.norm_q(query), content_norm, memory, query_mask, padding)
        if update_content:
            content = self.stream(content, content_norm, content_norm, memory, content_mask, padding)
        return query, content


class _Decoder(nn.Module):
    def __init__(self, width, depth, heads, mlp_ratio, dropout, num_tokens, num_classes, max_positions):
        super().__init__()
        self.width = width
        self.layers = nn.ModuleList(_DecoderLayer(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.text_embed = nn.Module()
        self.text_embed.embedding = nn.Embedding(num_tokens, width)
        self.pos_queries = nn.Parameter(torch.zeros(1, max_positions, width))
        self.head = nn.Linear(width, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt, memory, tgt_mask=None, padding=None, tgt_query=None, tgt_query_mask=None):
        """The official ``visual_decode``/``cross_decode`` followed by the head → logits (N, Q, C)."""
        n, length = tgt.shape
        scale = self.width**0.5
        null_ctx = scale * self.text_embed.embedding(tgt[:, :1])
        emb = self.pos_queries[:, : length - 1] + scale * self.text_embed.embedding(tgt[:, 1:])
        content = self.dropout(torch.cat([null_ctx, emb], dim=1))
        if tgt_query is None:
            tgt_query = self.pos_queries[:, :length].expand(n, -1, -1)
        query = self.dropout(tgt_query)
        if padding is not None:
            # Same semantics as the bool mask the official code passes; a float mask avoids torch's
            # deprecation warning about mixing bool and float masks.
            padding = torch.zeros(padding.shape, device=padding.device).masked_fill(padding, float("-inf"))
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            query, content = layer(query, content, memory, tgt_query_mask, tgt_mask, padding, i < last)
        return self.head(self.norm(query))


class OfficialReference(nn.Module):
    """The official VL4STR inference computation on the weights of a :class:`CLIP4STR` (shared, not copied)."""

    def __init__(self, model: CLIP4STR) -> None:
        super().__init__()
        cfg = model.config
        self.config = cfg
        self.tokenizer = model.tokenizer
        self.charset_adapter = model.charset_adapter
        self.clip_model = _CLIP(cfg.clip)
        d = cfg.decoder

        def make() -> _Decoder:
            return _Decoder(
                cfg.clip.embed_dim,
                d.depth,
                d.num_heads,
                d.mlp_ratio,
                d.dropout,
                len(model.tokenizer),
                model.tokenizer.num_classes,
                cfg.max_label_length + 1,
            )

        self.visual_decoder = make()
        self.cross_decoder = make()
        self.load_state_dict(model.state_dict(keep_vars=True), strict=True, assign=True)

    def cross_memory(self, memory: Tensor, logits: Tensor) -> Tensor:
        """Captions from the argmax, one row at a time; ``clip_tokenize``; CLIP text tokens; concat."""
        ids = logits.softmax(-1).argmax(-1)
        captions = []
        for row in ids.tolist():  # the official decode_fast: join every token string, cut at '[E]'
            text = "".join(self.tokenizer.itos[i] for i in row)
            cut = text.find("[E]")
            captions.append(self.charset_adapter(text if cut < 0 else text[:cut]))
        text_ids = clip_tokenize(captions, context_length=self.config.caption_length, truncate=True)
        text = self.clip_model.encode_text(text_ids.to(memory.device))
        return torch.cat([memory.detach(), text.to(memory.dtype)], dim=1)

    @torch.no_grad()
    def forward(
        self,
        images: Tensor,
        max_length: int | None = None,
        mode: str = "ar",
        refine_iters: int = 1,
        visual_only: bool = False,
    ) -> Tensor:
        """Official ``VL4STR.forward`` → logits (N, k, C) (cross-modal unless ``visual_only``)."""
        tok = self.tokenizer
        testing = max_length is None
        max_length = (
            self.config.max_label_length
            if max_length is None
            else min(max_length, self.config.max_label_length)
        )
        num_steps = max_length + 1
        dtype = self.visual_decoder.pos_queries.dtype
        memory = self.clip_model.visual(images.to(dtype))
        bs = memory.shape[0]
        dev = memory.device
        vdec, cdec = self.visual_decoder, self.cross_decoder
        pos_queries = vdec.pos_queries[:, :num_steps].expand(bs, -1, -1)
        cross_pos = cdec.pos_queries[:, :num_steps].expand(bs, -1, -1)
        tgt_mask = query_mask = torch.triu(torch.full((num_steps, num_steps), float("-inf"), device=dev), 1)

        tgt_in = None
        if mode == "ar":
            tgt_in = torch.full((bs, num_steps), tok.pad_id, dtype=torch.long, device=dev)
            tgt_in[:, 0] = tok.bos_id
            outs = []
            for i in range(num_steps):
                j = i + 1
                p_i = vdec(
                    tgt_in[:, :j], memory, tgt_mask[:j, :j], None, pos_queries[:, i:j], query_mask[i:j, :j]
                )
                outs.append(p_i)
                if j < num_steps:
                    tgt_in[:, j] = p_i.squeeze(1).argmax(-1)
                    if testing and (tgt_in == tok.eos_id).any(dim=-1).all():
                        break
            logits = torch.cat(outs, dim=1)
        else:
            bos = torch.full((bs, 1), tok.bos_id, dtype=torch.long, device=dev)
            logits = vdec(bos, memory, tgt_query=pos_queries)

        if not visual_only:
            cross_mem = self.cross_memory(memory, logits)
            if mode == "ar":
                outs = []
                for i in range(logits.shape[1]):  # exactly k steps, the same buffer, no early stop
                    j = i + 1
                    p_i = cdec(
                        tgt_in[:, :j],
                        cross_mem,
                        tgt_mask[:j, :j],
                        None,
                        cross_pos[:, i:j],
                        query_mask[i:j, :j],
                    )
                    outs.append(p_i)
                    if j < num_steps:
                        tgt_in[:, j] = p_i.squeeze(1).argmax(-1)
                cross_logits = torch.cat(outs, dim=1)
            else:
                bos = torch.full((bs, 1), tok.bos_id, dtype=torch.long, device=dev)
                cross_logits = cdec(bos, cross_mem, tgt_query=cross_pos)

        # The official code edits the mask in place: query i then hides only content i + 1.
        query_mask[torch.triu(torch.ones(num_steps, num_steps, dtype=torch.bool, device=dev), 2)] = 0
        bos = torch.full((bs, 1), tok.bos_id, dtype=torch.long, device=dev)
        for _ in range(refine_iters):
            tgt_in = torch.cat([bos, logits[:, :-1].argmax(-1)], dim=1)
            padding = (tgt_in == tok.eos_id).int().cumsum(-1) > 0
            n = tgt_in.shape[1]
            logits = vdec(tgt_in, memory, tgt_mask[:n, :n], padding, pos_queries, query_mask[:, :n])
            if visual_only:
                continue
            cross_mem = self.cross_memory(memory, logits)
            tgt_in = torch.cat([bos, cross_logits[:, :-1].argmax(-1)], dim=1)
            padding = (tgt_in == tok.eos_id).int().cumsum(-1) > 0
            n = tgt_in.shape[1]
            cross_logits = cdec(tgt_in, cross_mem, tgt_mask[:n, :n], padding, cross_pos, query_mask[:, :n])
        return logits if visual_only else cross_logits
