"""Export a CLIP4STR model to ONNX: four graphs driven by the torch-free reader's numpy loop.

Layout (``DIR/``; N is dynamic everywhere, L and Q in the decoders):

* ``image.onnx``: ``pixels`` (N, 3, H, W) float32 → ``visual_k{i}``, ``visual_v{i}``, ``cross_k{i}``,
  ``cross_v{i}`` (N, heads, T, head_dim) per decoder layer i: the image memory's cross-attention keys and
  values for both decoders, projected once per image;
* ``text.onnx``: ``caption_ids`` (N, S) int64 CLIP token ids → ``text_k{i}``, ``text_v{i}``
  (N, heads, S, head_dim): the caption's CLIP text features projected for the cross-modal decoder;
* ``visual_decoder.onnx``, ``cross_decoder.onnx``: ``tgt`` (N, L) int64, ``positions`` (Q,) int64,
  ``query_mask`` (Q, L) float32, ``content_mask`` (L, L) float32, ``padding`` (N, L) bool, ``memory_k{i}``,
  ``memory_v{i}`` → ``logits`` (N, Q, C): one pass of the two-stream decoder (an autoregressive step,
  a non-autoregressive pass or a refinement).
* ``manifest.json``: :mod:`clip4str.deploy.manifest`.

Why not one graph: the caption between the visual and the cross-modal branch is a string (greedy text, cut
at ``[E]``, charset-adapted, CLIP-BPE-tokenized with ftfy), which ONNX cannot express without custom ops.
The loop that stops at EOS, refinement and the ``mode``/``refine_iters``/``visual_only`` options therefore
live in numpy (:class:`~clip4str.deploy.onnx_reader.OnnxRecognizer`), which also stops as soon as every row
has ended instead of running all 26 steps.
"""

from __future__ import annotations

import io
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clip4str.deploy.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    graph_file,
    sha256_bytes,
    source_fingerprint,
    write_manifest_text,
)
from clip4str.errors import CheckpointError
from clip4str.model.clip4str import CLIP4STR
from clip4str.model.decoder import Decoder

OPSET = 17
DECODER_INPUTS = ("tgt", "positions", "query_mask", "content_mask", "padding")


def _kv_names(prefix: str, depth: int) -> list[str]:
    return [f"{prefix}_{kind}{i}" for i in range(depth) for kind in ("k", "v")]


def _flat(kv: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, ...]:
    return tuple(t for pair in kv for t in pair)


class ImageGraph(nn.Module):
    """pixels (N, 3, H, W) → both decoders' image-memory keys/values, flattened per layer (k, v)."""

    def __init__(self, model: CLIP4STR) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: Tensor) -> tuple[Tensor, ...]:
        memory = self.model.encode(pixels)
        return _flat(self.model.visual_decoder.memory_kv(memory)) + _flat(
            self.model.cross_decoder.memory_kv(memory)
        )


class TextGraph(nn.Module):
    """caption ids (N, S) → the cross-modal decoder's keys/values of the CLIP text features."""

    def __init__(self, model: CLIP4STR) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor) -> tuple[Tensor, ...]:
        feats = self.model.clip_model.encode_text_tokens(ids)
        return _flat(self.model.cross_decoder.memory_kv(feats.to(self.model.dtype)))


class DecoderGraph(nn.Module):
    """One decoder pass over precomputed memory keys/values → logits (N, Q, C)."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(
        self,
        tgt: Tensor,
        positions: Tensor,
        query_mask: Tensor,
        content_mask: Tensor,
        padding: Tensor,
        *kv: Tensor,
    ) -> Tensor:
        query = self.decoder.pos_queries[0].index_select(0, positions)[None]
        memory = [(kv[2 * i], kv[2 * i + 1]) for i in range(len(kv) // 2)]
        return self.decoder(
            tgt, memory, query=query, query_mask=query_mask, content_mask=content_mask, padding_mask=padding
        )


def _export(module: nn.Module, args: tuple, inputs: list[str], outputs: list[str], dynamic: dict) -> bytes:
    buffer = io.BytesIO()
    module.eval()  # the exporter restores the wrapper's mode afterwards: a fresh module's is training
    with torch.no_grad(), warnings.catch_warnings():
        # the traced shape checks (batch not empty, image size) are fixed at export, as intended
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter (see docs/deploy.md)
        torch.onnx.export(
            module,
            args,
            buffer,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return buffer.getvalue()


def export_graphs(
    model: CLIP4STR, visual_only: bool = False
) -> dict[str, tuple[bytes, list[str], list[str]]]:
    """The four graphs as ONNX bytes with their input and output names: ``{graph: (bytes, inputs, outputs)}``."""
    if model.text_encoder is not None and not visual_only:
        raise CheckpointError(
            f"text encoder {model.config.text_encoder!r} does not export to ONNX (its tokenizer is not CLIP's); "
            "export with --visual-only, or use the PyTorch reader"
        )
    if next(model.parameters()).dtype != torch.float32:
        raise ValueError("export an fp32 model (create_model builds one)")
    was_training = model.training
    try:
        return _export_graphs(model.eval(), visual_only)
    finally:
        model.train(was_training)


def _export_graphs(model: CLIP4STR, visual_only: bool) -> dict[str, tuple[bytes, list[str], list[str]]]:
    cfg = model.config
    depth = cfg.decoder.depth
    h, w = cfg.preprocess.image_size
    n = 2
    batch = {0: "batch"}
    out: dict[str, tuple[bytes, list[str], list[str]]] = {}

    image_outputs = _kv_names("visual", depth) + _kv_names("cross", depth)
    pixels = torch.zeros(n, 3, h, w)
    out["image"] = (
        _export(
            ImageGraph(model),
            (pixels,),
            ["pixels"],
            image_outputs,
            {"pixels": batch, **{o: batch for o in image_outputs}},
        ),
        ["pixels"],
        image_outputs,
    )
    if not visual_only:
        text_outputs = _kv_names("text", depth)
        ids = torch.zeros(n, cfg.caption_length, dtype=torch.long)
        out["text"] = (
            _export(
                TextGraph(model),
                (ids,),
                ["caption_ids"],
                text_outputs,
                {"caption_ids": batch, **{o: batch for o in text_outputs}},
            ),
            ["caption_ids"],
            text_outputs,
        )
    tok = model.tokenizer
    length, queries = 3, 2
    memory_size = {
        "visual_decoder": model.clip_model.visual.grid_hw[0] * model.clip_model.visual.grid_hw[1] + 1
    }
    memory_size["cross_decoder"] = memory_size["visual_decoder"] + cfg.caption_length
    heads = cfg.decoder.num_heads
    head_dim = cfg.clip.embed_dim // heads
    for graph, decoder in (("visual_decoder", model.visual_decoder), ("cross_decoder", model.cross_decoder)):
        kv_inputs = _kv_names("memory", depth)
        args = (
            torch.full((n, length), tok.bos_id, dtype=torch.long),
            torch.arange(queries, dtype=torch.long),
            torch.zeros(queries, length),
            torch.zeros(length, length),
            torch.zeros(n, length, dtype=torch.bool),
            *[torch.zeros(n, heads, memory_size[graph], head_dim) for _ in kv_inputs],
        )
        dynamic = {
            "tgt": {0: "batch", 1: "length"},
            "positions": {0: "queries"},
            "query_mask": {0: "queries", 1: "length"},
            "content_mask": {0: "length", 1: "length"},
            "padding": {0: "batch", 1: "length"},
            **{name: {0: "batch", 2: "memory"} for name in kv_inputs},
            "logits": {0: "batch", 1: "queries"},
        }
        inputs = [*DECODER_INPUTS, *kv_inputs]
        data = _export(DecoderGraph(decoder), args, inputs, ["logits"], dynamic)
        out[graph] = (data, inputs, ["logits"])
    return out


def build_manifest(
    model: CLIP4STR,
    graphs: dict[str, tuple[bytes, list[str], list[str]]],
    source: str,
    source_sha256: str | None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """The manifest of exported ``graphs`` (see :mod:`clip4str.deploy.manifest`)."""
    import clip4str

    cfg = model.config
    tok = model.tokenizer
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": cfg.name or Path(source).name,
        "source": {"model": str(source), "sha256": source_sha256},
        "precision": precision,
        "opset": OPSET,
        "charset_train": cfg.charset_train,
        "charset_test": cfg.resolved_charset_test,
        "tokens": {"eos": tok.eos_id, "bos": tok.bos_id, "pad": tok.pad_id, "num_classes": tok.num_classes},
        "preprocess": {
            "image_size": list(cfg.preprocess.image_size),
            "mean": list(cfg.preprocess.mean),
            "std": list(cfg.preprocess.std),
            "interpolation": cfg.preprocess.interpolation,
        },
        "max_label_length": cfg.max_label_length,
        "caption_length": cfg.caption_length,
        "decoding": {
            "defaults": {
                "mode": cfg.decoding.mode,
                "refine_iters": cfg.decoding.refine_iters,
                "visual_only": cfg.decoding.visual_only,
            },
            "runtime_options": ["mode", "refine_iters", "visual_only", "charset_test"],
        },
        "visual_only_export": "text" not in graphs,
        "config": cfg.to_dict(),
        "inputs": {g: ins for g, (_, ins, _) in graphs.items()},
        "outputs": {g: outs for g, (_, _, outs) in graphs.items()},
        "files": {
            graph_file(g): {"sha256": sha256_bytes(data), "bytes": len(data)}
            for g, (data, _, _) in graphs.items()
        },
        "exported_by": {
            "clip4str": clip4str.__version__,
            "torch": torch.__version__.split("+")[0],
            "exporter": "torch.onnx (TorchScript)",
            "python": sys.version.split()[0],
        },
    }


def write_export(
    folder: str | Path,
    graphs: dict[str, tuple[bytes, list[str], list[str]]],
    manifest: dict[str, Any],
    write: Callable[[Path, bytes], None],
) -> Path:
    """Write the graphs, then the manifest last (a folder without a manifest is never taken for a model),
    each through ``write(path, data)`` (the command's output guard)."""
    folder = Path(folder)
    for graph, (data, _, _) in graphs.items():
        write(folder / graph_file(graph), data)
    write(folder / MANIFEST_NAME, write_manifest_text(manifest).encode("utf-8"))
    return folder


def export_onnx(
    model: CLIP4STR,
    folder: str | Path,
    *,
    source: str = "",
    source_sha256: str | None = None,
    visual_only: bool = False,
    write: Callable[[Path, bytes], None] | None = None,
) -> Path:
    """Export ``model`` to ``folder`` (``image.onnx``, ``text.onnx``, the two decoders, ``manifest.json``).

    ``write(path, data)`` writes one file (default: an atomic write that replaces nothing it did not make
    is the caller's business: the CLI passes its :class:`~clip4str.files.OutputGuard`'s ``write_bytes``).
    """
    folder = Path(folder)
    graphs = export_graphs(model, visual_only=visual_only)
    manifest = build_manifest(model, graphs, source, source_sha256)
    if write is None:
        from clip4str.files import atomic_write

        def write(path: Path, data: bytes) -> None:
            atomic_write(path, lambda tmp: tmp.write_bytes(data))

        folder.mkdir(parents=True, exist_ok=True)
    return write_export(folder, graphs, manifest, write)


def run_export(args: Any, guard: Any) -> int:
    """``clip4str export MODEL OUT --format onnx [--int8] [--visual-only]`` through the command's
    :class:`~clip4str.files.OutputGuard`: every file is claimed before the model loads; an existing non-empty
    OUT needs ``--overwrite``, which replaces only the files an export writes (nothing is deleted)."""
    from clip4str.config import parse_overrides
    from clip4str.deploy.manifest import GRAPHS
    from clip4str.errors import OutputError
    from clip4str.factory import create_model
    from clip4str.hub import resolve_model

    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise OutputError(
            f"OUT {out}: the folder exists and is not empty; give --overwrite to replace an earlier export's "
            "files there (nothing else is touched), or choose a new folder"
        )
    names = [graph_file(g) for g in GRAPHS if not (g == "text" and args.visual_only)] + [MANIFEST_NAME]
    for name in names:  # checked before the model loads
        guard.claim(out / name, "OUT", parents=True)
    model = create_model(args.model, **parse_overrides(args.overrides))
    try:
        source_sha = source_fingerprint(resolve_model(args.model, offline=True))
    except Exception:  # noqa: BLE001 - a preset or config has no file to fingerprint
        source_sha = None
    graphs = export_graphs(model, visual_only=args.visual_only)
    precision = "fp32"
    if args.int8:
        from clip4str.deploy.quantize import quantize_int8

        graphs, precision = quantize_int8(graphs), "int8"
    manifest = build_manifest(model, graphs, args.model, source_sha, precision=precision)
    write_export(out, graphs, manifest, lambda path, data: guard.write_bytes(path, data, "OUT"))
    size = sum(len(data) for data, _, _ in graphs.values())
    print(f"wrote {out} ({len(graphs)} ONNX graphs, {size / 2**20:.1f} MB, {precision}, opset {OPSET})")
    return 0
