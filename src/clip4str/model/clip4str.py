"""The CLIP4STR network: CLIP image encoder, visual decoder, CLIP text encoder and cross-modal decoder.

Decoding (``forward``/``decode``) is the dual predict-and-refine scheme of the paper:

1. the visual decoder reads the image memory autoregressively (or in one non-autoregressive pass);
2. its greedy prediction becomes a caption, which the CLIP text encoder turns into text features; the
   cross-modal decoder reads ``[image memory (detached); text features]`` autoregressively;
3. each refinement iteration re-runs both decoders as cloze models on their previous predictions, the
   cross-modal memory being rebuilt from the refined visual prediction.

The output is the cross-modal logits. Each row stops decoding at its own end-of-sequence, so a row's text
and confidence never depend on the rest of its batch (the official loop runs the cross-modal pass for as
many steps as the whole batch's visual pass took, which can cut a row short).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clip4str.charset import CharsetAdapter, CharTokenizer
from clip4str.clip.model import CLIP
from clip4str.config import ModelConfig
from clip4str.decoding import DecodeOptions, causal_mask_array, cloze_mask_array
from clip4str.model.decoder import Decoder
from clip4str.model.permutations import attention_masks, generate_permutations


@dataclass
class DecodeTrace:
    """Intermediate results of one decoding, for tests and debugging (all logits (N, k, C))."""

    visual_initial: Tensor | None = None
    cross_initial: Tensor | None = None
    captions: list[list[str]] = field(default_factory=list)
    refine_visual: list[Tensor] = field(default_factory=list)
    refine_cross: list[Tensor] = field(default_factory=list)


@dataclass
class SpeedOptions:
    """Inference shortcuts of :meth:`CLIP4STR.decode`; none changes a prediction (each can be switched off
    to measure what it buys, see ``clip4str bench --ablate``).

    * ``kv_cache``: autoregressive steps append one token to cached self-attention keys/values instead of
      re-encoding the whole prefix (static shapes, :meth:`Decoder.step`);
    * ``reuse_memory_kv``: the image memory's cross-attention keys/values are projected once per decoder
      and image and reused by every pass (refinement included); the cross-modal decoder projects only the
      16 text tokens of each new caption;
    * ``reuse_text``: CLIP text features are computed once per distinct caption within a call (duplicates
      in the batch, and refinement captions equal to the first ones, are not re-encoded).
    """

    kv_cache: bool = True
    reuse_memory_kv: bool = True
    reuse_text: bool = True


def cloze_mask(num_steps: int, device: torch.device) -> Tensor:
    """(num_steps, num_steps) additive mask where query i hides only content i + 1 (its own target)."""
    return torch.from_numpy(cloze_mask_array(num_steps)).to(device)


def causal_mask(size: int, device: torch.device) -> Tensor:
    return torch.from_numpy(causal_mask_array(size)).to(device)


class CLIP4STR(nn.Module):
    """CLIP4STR. State-dict keys match the official checkpoints (``clip_model.*``, ``visual_decoder.*``,
    ``cross_decoder.*``).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = CharTokenizer(config.charset_train)
        self.clip_model = CLIP(config.clip)
        dec = config.decoder

        def make_decoder() -> Decoder:
            return Decoder(
                width=config.clip.embed_dim,
                depth=dec.depth,
                num_heads=dec.num_heads,
                mlp_ratio=dec.mlp_ratio,
                dropout=dec.dropout,
                num_tokens=len(self.tokenizer),
                num_classes=self.tokenizer.num_classes,
                max_positions=config.max_label_length + 1,
            )

        self.visual_decoder = make_decoder()
        self.cross_decoder = make_decoder()
        # Training aid only (config.ctc_loss_weight > 0): per-column character logits, class 0 ([E]) as blank.
        self.ctc_head: nn.Linear | None = None
        if config.ctc_loss_weight > 0:
            self.ctc_head = nn.Linear(config.clip.embed_dim, self.tokenizer.num_classes)
        # Optional parts (parameter-efficient tuning, another text encoder); None = the official model.
        self.image_adapter: nn.Module | None = None
        self.text_encoder: nn.Module | None = None
        if config.adapter.kind != "none":
            from clip4str.model.peft import build_image_adapter

            self.image_adapter = build_image_adapter(config)
        if config.text_encoder != "clip":
            from clip4str.model.text_encoders import build_text_encoder

            self.text_encoder = build_text_encoder(config)
        self.perm_rng = np.random.default_rng()
        self.speed = SpeedOptions()
        self._compiled: dict = {}  # torch.compile'd callables (enable_compile); not submodules
        self._caption_tokenizer = None
        self._adapters: dict[str, CharsetAdapter] = {}  # per-call test charsets (DecodeOptions.charset_test)
        self.set_charset_test(config.charset_test)
        self.freeze_()

    # ------------------------------------------------------------------------------------------ setup
    @property
    def device(self) -> torch.device:
        return self.visual_decoder.pos_queries.device

    @property
    def dtype(self) -> torch.dtype:
        return self.visual_decoder.pos_queries.dtype

    def set_charset_test(self, charset_test: str | None) -> None:
        """Set the model's own test charset (``config.charset_test``, saved with it): the characters
        predictions are restricted to before they become captions, unless a decoding names its own."""
        if charset_test is not None and not charset_test:
            raise ValueError("charset_test must not be empty (None uses charset_train)")
        self.config.charset_test = charset_test
        self.charset_adapter = CharsetAdapter(self.config.resolved_charset_test)

    def freeze_(self) -> None:
        """Apply the config's freezing (``logit_scale`` is unused and always frozen).

        * ``text_freeze_layers`` N > 0: the first N text blocks with the token and position embeddings (the
          official default, N = 6); -1: the whole text tower, ``ln_final`` and ``text_projection`` included.
        * ``image_freeze_layers`` N > 0: the first N image blocks with the class and position embeddings (the
          official choice: ``conv1`` and ``ln_pre`` keep training); -1: the whole image tower.
        * ``freeze_token_embeddings``: the text token embedding alone (a strategy of the paper's PEFT study).
        """
        cfg = self.config
        clip = self.clip_model
        clip.requires_grad_(True)
        clip.logit_scale.requires_grad_(False)
        text_stem = [clip.token_embedding.weight, clip.positional_embedding]
        text_head = [clip.ln_final.weight, clip.ln_final.bias, clip.text_projection]
        visual = clip.visual
        image_stem = [visual.class_embedding, visual.positional_embedding]
        image_head = [
            *visual.patch_embedding.parameters(),
            *visual.ln_pre.parameters(),
            *visual.ln_post.parameters(),
            visual.proj,
        ]
        for n_layers, stem, blocks, head in (
            (cfg.text_freeze_layers, text_stem, clip.transformer.resblocks, text_head),
            (cfg.image_freeze_layers, image_stem, visual.transformer.resblocks, image_head),
        ):
            if n_layers == 0:
                continue
            frozen = stem + (head if n_layers < 0 else [])
            for block in blocks if n_layers < 0 else blocks[:n_layers]:
                frozen.extend(block.parameters())
            for p in frozen:
                p.requires_grad_(False)
        if cfg.freeze_token_embeddings:
            clip.token_embedding.weight.requires_grad_(False)

    def load_text_vocabulary(self):
        """CLIP's caption tokenizer, its BPE vocabulary read on the first call (FileNotFoundError naming
        where it looked): call it at load time so that a missing file is reported before any reading."""
        if self._caption_tokenizer is None:
            from clip4str.clip.tokenizer import ClipTokenizer

            self._caption_tokenizer = ClipTokenizer()
        return self._caption_tokenizer

    caption_tokenizer = property(load_text_vocabulary)

    def charset_adapter_for(self, charset_test: str | None) -> CharsetAdapter:
        """The test-charset adapter of a decoding: the model's own for None, else one per charset (kept)."""
        if charset_test is None:
            return self.charset_adapter
        if charset_test not in self._adapters:
            self._adapters[charset_test] = CharsetAdapter(charset_test)
        return self._adapters[charset_test]

    def enable_compile(self, mode: str | None = None, backend: str = "inductor") -> None:
        """``torch.compile`` the image encoder and the autoregressive decoding step for inference.

        The step has static shapes (:meth:`Decoder.step`), so it compiles once per batch size. Compiled
        functions are kept outside the module tree: ``state_dict`` keys do not change. Meant for GPUs; on
        CPU compilation takes minutes and did not pay (docs/benchmarks.md). Undo with
        :meth:`disable_compile`.
        """
        import torch._dynamo

        # Two decoders x a few batch sizes: keep every specialisation.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        self._compiled["encode"] = torch.compile(self._encode_eager, mode=mode, backend=backend)
        for decoder in (self.visual_decoder, self.cross_decoder):
            self._compiled[id(decoder)] = torch.compile(
                decoder.step, mode=mode, backend=backend, dynamic=False
            )

    def disable_compile(self) -> None:
        """Return to eager execution."""
        self._compiled.clear()

    @contextlib.contextmanager
    def record_attention(self, visual_only: bool = False) -> Iterator[list[Tensor]]:
        """While active, the last layer of the final decoder (the cross-modal one, or the visual one when
        ``visual_only``) records its cross-attention probabilities; nothing else changes.

        Yields the list each pass of that decoder appends to: (N, heads, 1, S) per autoregressive step,
        (N, heads, Q, S) per non-autoregressive or refinement pass. S indexes the decoder's memory: the T
        image tokens (class token first, then patches row by row), then, for the cross-modal decoder, the text
        tokens. Runs eagerly (compiled callables are set aside meanwhile); not thread-safe.
        """
        decoder = self.visual_decoder if visual_only else self.cross_decoder
        attn = decoder.layers[-1].cross_attn
        records: list[Tensor] = []
        compiled, self._compiled = self._compiled, {}
        attn.record = records
        try:
            yield records
        finally:
            attn.record = None
            self._compiled = compiled

    # ------------------------------------------------------------------------------------------ parts
    def encode(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) normalised images → image memory (N, T, E): every ViT token, CLS included."""
        return self._compiled.get("encode", self._encode_eager)(images)

    def _encode_eager(self, images: Tensor) -> Tensor:
        if self.image_adapter is not None:
            return self.image_adapter(self.clip_model.visual, images.to(self.dtype))
        return self.clip_model.encode_image_tokens(images.to(self.dtype))

    def captions_from_logits(self, logits: Tensor, adapter: CharsetAdapter | None = None) -> list[str]:
        """Greedy captions of (N, k, C) logits, cut at '[E]' and passed through the test-charset adapter
        (default: the model's own)."""
        adapter = self.charset_adapter if adapter is None else adapter
        return [adapter(c) for c in self.tokenizer.decode_caption(logits.argmax(-1))]

    def caption_ids(self, captions: list[str]) -> Tensor:
        """Captions → (N, caption_length) CLIP token ids on the model's device."""
        ids = self.caption_tokenizer(captions, context_length=self.config.caption_length, truncate=True)
        return ids.to(self.device)

    def cross_memory(self, memory: Tensor, logits: Tensor, captions: list[str] | None = None) -> Tensor:
        """[image memory (detached); CLIP text features of the prediction]: (N, T + caption_length, E)."""
        if captions is None:
            captions = self.captions_from_logits(logits)
        return torch.cat([memory.detach(), self.text_features(captions).to(memory.dtype)], dim=1)

    def text_features(self, captions: list[str]) -> Tensor:
        """Text-encoder tokens of the captions: (N, caption_length, E) for CLIP."""
        if self.text_encoder is not None:
            return self.text_encoder(captions)  # (N, S, E), its own tokenizer and projection
        return self.clip_model.encode_text_tokens(self.caption_ids(captions))

    # ------------------------------------------------------------------------------------------ decoding
    def _memory_kv(self, decoder: Decoder, memory: Tensor) -> Tensor | list[tuple[Tensor, Tensor]]:
        return decoder.memory_kv(memory) if self.speed.reuse_memory_kv else memory

    def _autoregressive(
        self, decoder: Decoder, memory: Tensor | list[tuple[Tensor, Tensor]], num_steps: int, stop_early: bool
    ) -> Tensor:
        """Greedy AR decoding → logits (N, k, C), k <= num_steps; stops once every row has emitted EOS.

        ``memory`` is (N, S, E) or its :meth:`Decoder.memory_kv`. Rows keep decoding after their own EOS
        (their later positions are ignored downstream), so each row's result is independent of its batch.
        """
        if isinstance(memory, Tensor):
            memory = decoder.memory_kv(memory)
        n = memory[0][0].shape[0]
        device = memory[0][0].device
        bos, pad, eos = self.tokenizer.bos_id, self.tokenizer.pad_id, self.tokenizer.eos_id
        tgt = torch.full((n, num_steps), pad, dtype=torch.long, device=device)
        tgt[:, 0] = bos
        done = torch.zeros(n, dtype=torch.bool, device=device)
        cache = decoder.init_cache(memory, num_steps) if self.speed.kv_cache else None
        step = self._compiled.get(id(decoder), decoder.step)
        causal = None if cache is not None else causal_mask(num_steps, device)
        steps = torch.arange(num_steps, device=device)
        outputs = []
        for i in range(num_steps):
            j = i + 1
            if cache is not None:
                step_logits = step(cache, tgt[:, i], steps[i:j])
            else:
                step_logits = decoder(
                    tgt[:, :j], memory, query=decoder.pos_queries[:, i:j], content_mask=causal[:j, :j]
                )
            outputs.append(step_logits)
            next_ids = step_logits.squeeze(1).argmax(-1)
            if j < num_steps:
                tgt[:, j] = next_ids
            if stop_early:
                done |= next_ids == eos
                if bool(done.all()):
                    break
        return torch.cat(outputs, dim=1)

    def _non_autoregressive(
        self, decoder: Decoder, memory: Tensor | list[tuple[Tensor, Tensor]], num_steps: int
    ) -> Tensor:
        """All positions in one pass from [B] alone → (N, num_steps, C)."""
        n = memory.shape[0] if isinstance(memory, Tensor) else memory[0][0].shape[0]
        tgt = torch.full((n, 1), self.tokenizer.bos_id, dtype=torch.long, device=self.device)
        return decoder(tgt, memory, query=decoder.pos_queries[:, :num_steps])

    def _first_pass(
        self,
        decoder: Decoder,
        memory: Tensor | list[tuple[Tensor, Tensor]],
        mode: str,
        num_steps: int,
        stop_early: bool,
    ) -> Tensor:
        """A decoder's first reading of its memory: autoregressive ('ar') or in one pass ('nar')."""
        if mode == "ar":
            return self._autoregressive(decoder, memory, num_steps, stop_early)
        return self._non_autoregressive(decoder, memory, num_steps)

    def _refine(
        self, decoder: Decoder, memory: Tensor | list[tuple[Tensor, Tensor]], logits: Tensor, num_steps: int
    ) -> Tensor:
        """One cloze iteration: re-read the previous greedy prediction with each position's own token
        hidden and everything from the first EOS on ignored → (N, num_steps, C).
        """
        n = logits.shape[0]
        bos = torch.full((n, 1), self.tokenizer.bos_id, dtype=torch.long, device=logits.device)
        tgt = torch.cat([bos, logits[:, :-1].argmax(-1)], dim=1)
        padding = (tgt == self.tokenizer.eos_id).int().cumsum(-1) > 0
        mask = cloze_mask(num_steps, logits.device)
        length = tgt.shape[1]
        return decoder(
            tgt,
            memory,
            query=decoder.pos_queries[:, :num_steps],
            query_mask=mask[:, :length],
            content_mask=mask[:length, :length],
            padding_mask=padding,
        )

    def _text_features(self, captions: list[str], cache: dict[str, Tensor] | None) -> Tensor:
        """CLIP text tokens (N, caption_length, E) of ``captions``; with ``cache`` (caption → features),
        each distinct caption is encoded once."""
        if cache is None:
            return self.text_features(captions)
        new = list(dict.fromkeys(c for c in captions if c not in cache))
        if new:
            feats = self.text_features(new)
            cache.update(zip(new, feats.unbind(0)))
        return torch.stack([cache[c] for c in captions])

    def _cross_kv(
        self,
        memory: Tensor,
        image_kv: list[tuple[Tensor, Tensor]] | None,
        captions: list[str],
        text_cache: dict[str, Tensor] | None,
    ) -> Tensor | list[tuple[Tensor, Tensor]]:
        """The cross-modal decoder's memory for ``captions``: (N, T + caption_length, E), or its keys/values
        with the image part's taken from ``image_kv``."""
        text = self._text_features(captions, text_cache).to(memory.dtype)
        if image_kv is None:
            return torch.cat([memory.detach(), text], dim=1)
        text_kv = self.cross_decoder.memory_kv(text)
        return [
            (torch.cat([ik, tk], dim=2), torch.cat([iv, tv], dim=2))
            for (ik, iv), (tk, tv) in zip(image_kv, text_kv)
        ]

    def decode(
        self,
        images: Tensor,
        options: DecodeOptions | None = None,
        *,
        mode: str | None = None,
        refine_iters: int | None = None,
        visual_only: bool | None = None,
        charset_test: str | None = None,
        max_length: int | None = None,
        trace: DecodeTrace | None = None,
    ) -> Tensor:
        """Dual predict-and-refine decoding → logits (N, k, C).

        Args:
            images: (N, 3, H, W) normalised images.
            options: how to decode (default: :meth:`DecodeOptions.of_model` of this model's config);
                ``precision`` and ``batch_size`` are the caller's business.
            mode, refine_iters, visual_only, charset_test: changes to ``options`` (None keeps them).
            max_length: decode exactly ``min(max_length, max_label_length) + 1`` positions without early
                stopping (the validation path); None stops once every row has emitted EOS.
            trace: filled with intermediate logits and captions when given.
        """
        options = (options or DecodeOptions.of_model(self.config)).replace(
            mode=mode, refine_iters=refine_iters, visual_only=visual_only, charset_test=charset_test
        )
        adapter = self.charset_adapter_for(options.charset_test)
        stop_early = max_length is None
        max_label_length = self.config.max_label_length
        num_steps = (max_label_length if max_length is None else min(max_length, max_label_length)) + 1

        memory = self.encode(images)
        vis_mem = self._memory_kv(self.visual_decoder, memory)
        vis_logits = self._first_pass(self.visual_decoder, vis_mem, options.mode, num_steps, stop_early)
        if trace is not None:
            trace.visual_initial = vis_logits
        if options.visual_only:
            for _ in range(options.refine_iters):
                vis_logits = self._refine(self.visual_decoder, vis_mem, vis_logits, num_steps)
                if trace is not None:
                    trace.refine_visual.append(vis_logits)
            return vis_logits

        text_cache: dict[str, Tensor] | None = {} if self.speed.reuse_text else None
        image_kv = self.cross_decoder.memory_kv(memory.detach()) if self.speed.reuse_memory_kv else None
        captions = self.captions_from_logits(vis_logits, adapter)
        cross_mem = self._cross_kv(memory, image_kv, captions, text_cache)
        cross_logits = self._first_pass(self.cross_decoder, cross_mem, options.mode, num_steps, stop_early)
        if trace is not None:
            trace.cross_initial = cross_logits
            trace.captions.append(captions)
        for _ in range(options.refine_iters):
            vis_logits = self._refine(self.visual_decoder, vis_mem, vis_logits, num_steps)
            captions = self.captions_from_logits(vis_logits, adapter)
            cross_mem = self._cross_kv(memory, image_kv, captions, text_cache)
            cross_logits = self._refine(self.cross_decoder, cross_mem, cross_logits, num_steps)
            if trace is not None:
                trace.refine_visual.append(vis_logits)
                trace.refine_cross.append(cross_logits)
                trace.captions.append(captions)
        return cross_logits

    def forward(self, images: Tensor, max_length: int | None = None) -> Tensor:
        """Final logits (N, k, C) with the config's decoding; the quantity the official ``forward`` returns."""
        return self.decode(images, max_length=max_length)

    # ------------------------------------------------------------------------------------------ training
    def training_loss(
        self, images: Tensor, labels: list[str], perms: Tensor | None = None, details: dict | None = None
    ) -> Tensor:
        """Permuted sequence modelling loss of both branches (scalar).

        Args:
            images: (N, 3, H, W) normalised images.
            labels: N strings over ``charset_train``.
            perms: (K, L + 2) permutations to use instead of drawing them (L = longest label).
            details: filled with per-permutation logits, masks and losses when given.
        """
        tok = self.tokenizer
        tgt = tok.encode(labels, device=images.device)
        memory = self.encode(images)
        if perms is None:
            perms = generate_permutations(
                tgt.shape[1] - 2,
                self.config.perm_num,
                self.config.perm_forward,
                self.config.perm_mirrored,
                rng=self.perm_rng,
            )
        perms = perms.to(images.device)
        if perms.shape[1] != tgt.shape[1]:
            raise ValueError(
                f"perms have {perms.shape[1]} columns, expected longest label + 2 = {tgt.shape[1]}"
            )
        tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
        padding = (tgt_in == tok.pad_id) | (tgt_in == tok.eos_id)
        vis_kv = self.visual_decoder.memory_kv(memory)
        targets_with_eos = tgt_out
        total = memory.new_zeros(())
        numel = 0
        n = int((tgt_out != tok.pad_id).sum())
        for i, perm in enumerate(perms):
            content_mask, query_mask = attention_masks(perm)
            vis_logits, captions, cross_logits = self._both_branches(
                tgt_in, vis_kv, memory, content_mask, query_mask, padding
            )
            if n > 0:
                total = total + n * self._branch_loss(vis_logits, cross_logits, tgt_out)
                numel += n
            if details is not None:
                details.setdefault("per_perm", []).append(
                    {
                        "perm": perm,
                        "content_mask": content_mask,
                        "query_mask": query_mask,
                        "visual_logits": vis_logits,
                        "cross_logits": cross_logits,
                        "captions": captions,
                        "tgt_out_used": tgt_out.clone(),
                        "n": n,
                    }
                )
            if i == 1:
                # After the forward and reverse orderings, [E] is no longer a target.
                tgt_out = torch.where(tgt_out == tok.eos_id, tok.pad_id, tgt_out)
                n = int((tgt_out != tok.pad_id).sum())
        if details is not None:
            details.update(tgt=tgt, perms=perms, memory=memory, numel=numel)
        loss = total / max(numel, 1)
        if self.ctc_head is not None:
            loss = loss + self.config.ctc_loss_weight * self._ctc_loss(memory, targets_with_eos)
        weight = self.config.context_free_loss_weight
        if weight > 0:
            # Every query sees only [B]: each character (and [E]) must be found in the image.
            size = tgt_in.shape[1]
            only_bos = torch.full((size, size), float("-inf"), device=images.device)
            only_bos[:, 0] = 0.0
            vis_logits, _, cross_logits = self._both_branches(
                tgt_in, vis_kv, memory, causal_mask(size, images.device), only_bos, padding
            )
            loss = loss + weight * self._branch_loss(vis_logits, cross_logits, targets_with_eos)
        return loss

    def _ctc_loss(self, memory: Tensor, targets: Tensor) -> Tensor:
        """Mean CTC loss of ``ctc_head`` over the image memory's patch columns (rows averaged).

        Args:
            memory: (N, 1 + rows*cols, E) image tokens, class token first.
            targets: (N, L + 1) character ids with [E] (id 0, the blank) and padding after them.
        """
        rows, cols = self.clip_model.visual.grid_hw
        columns = memory[:, 1:].unflatten(1, (rows, cols)).mean(1)  # (N, cols, E)
        log_probs = self.ctc_head(columns).float().log_softmax(-1).transpose(0, 1)  # (cols, N, C)
        is_char = (targets != self.tokenizer.eos_id) & (targets != self.tokenizer.pad_id)
        lengths = is_char.sum(1)
        frames = torch.full_like(lengths, cols)
        return F.ctc_loss(
            log_probs, targets[is_char], frames, lengths, blank=self.tokenizer.eos_id, zero_infinity=True
        )

    def _both_branches(
        self,
        tgt_in: Tensor,
        vis_kv: list[tuple[Tensor, Tensor]],
        memory: Tensor,
        content_mask: Tensor,
        query_mask: Tensor,
        padding: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One teacher-forced pass of both decoders → (visual logits, captions, cross logits), logits (N, L+1, C)."""
        vis_logits = self.visual_decoder(
            tgt_in, vis_kv, query_mask=query_mask, content_mask=content_mask, padding_mask=padding
        )
        captions = self.captions_from_logits(vis_logits)
        cross_mem = self.cross_memory(memory, vis_logits, captions)
        cross_logits = self.cross_decoder(
            tgt_in, cross_mem, query_mask=query_mask, content_mask=content_mask, padding_mask=padding
        )
        return vis_logits, captions, cross_logits

    def _branch_loss(self, vis_logits: Tensor, cross_logits: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy of the visual branch plus ``cross_loss_weight`` × the cross-modal branch's."""
        pad = self.tokenizer.pad_id
        ce_vis = F.cross_entropy(vis_logits.flatten(0, 1), targets.flatten(), ignore_index=pad)
        ce_cross = F.cross_entropy(cross_logits.flatten(0, 1), targets.flatten(), ignore_index=pad)
        return ce_vis + self.config.cross_loss_weight * ce_cross

    def validation_logits_loss(self, images: Tensor, labels: list[str]) -> tuple[Tensor, Tensor, int]:
        """Validation: decode exactly ``longest label + 1`` positions → (logits, mean CE, token count)."""
        tok = self.tokenizer
        targets = tok.encode(labels, device=images.device)[:, 1:]
        logits = self.decode(images, max_length=targets.shape[1] - 1)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=tok.pad_id)
        return logits, loss, int((targets != tok.pad_id).sum())
