"""The torch-free reader: exported ONNX graphs driven by a numpy decoding loop (numpy, Pillow, onnxruntime,
and the CLIP tokenizer's ftfy and regex).

It is the PyTorch :class:`~clip4str.api.Recognizer`'s twin: the same :class:`~clip4str.reading.BatchReader`
(batches, prefetching, bad files reported with their path), preprocessing
(:func:`~clip4str.data.transforms.preprocess_array`), caption rule (``CharTokenizer.decode_caption`` and the
``CharsetAdapter``), CLIP tokenizer, masks (:mod:`clip4str.decoding`) and reading of the final probabilities
(:func:`~clip4str.reading.predictions_from_probs`). The loop below mirrors ``CLIP4STR.decode``.

Loading never runs code from the files: each graph's bytes are checked against the manifest's SHA-256 and
handed to ONNX Runtime as bytes (so no external-data path is followed), no custom-op library is registered,
and a graph whose inputs or outputs are not the manifest's is refused (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clip4str.charset import CharsetAdapter, CharTokenizer
from clip4str.config import ModelConfig
from clip4str.data.transforms import ImageSource, load_image, preprocess_array
from clip4str.decoding import DecodeOptions, causal_mask_array, cloze_mask_array
from clip4str.deploy.manifest import load_folder, uses_external_data
from clip4str.errors import CheckpointError
from clip4str.reading import BatchReader, Prediction, _as_list, predictions_from_probs, softmax

KvList = list[np.ndarray]


def _session(graph: str, data: bytes, folder: Path, providers: Sequence[str] | None, threads: int | None):
    """An ONNX Runtime session over checked bytes: no external-data file is ever read (refused before,
    and ONNX Runtime pointed at an empty folder for them), no custom-op library registered."""
    import tempfile

    import onnxruntime as ort

    path = folder / (graph + ".onnx")
    try:
        external = uses_external_data(data)
    except ValueError as err:
        raise CheckpointError(f"{path}: not an ONNX graph ({err})") from None
    if external:
        raise CheckpointError(
            f"{path}: the graph reads tensors from other files (ONNX external data); clip4str exports never do, "
            "so it is refused (docs/security.md)"
        )
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory(prefix="clip4str-no-external-data-") as empty:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", empty)
        try:
            return ort.InferenceSession(
                data, sess_options=opts, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types; one line for the user
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{path}: ONNX Runtime cannot load it: {first[:300]}") from None


class OnnxRecognizer(BatchReader):
    """A folder of exported ONNX graphs (``clip4str export MODEL DIR --format onnx``), ready to read.

    Args:
        folder: the export folder (``manifest.json`` and the ``.onnx`` files it lists).
        options: how to decode (default: the exported model's :class:`~clip4str.decoding.DecodeOptions`);
            ``mode``, ``refine_iters``, ``visual_only`` and ``charset_test`` are runtime choices; the precision
            was chosen at export (fp32, or int8 by ``--int8``).
        providers: ONNX Runtime execution providers (default: ``CPUExecutionProvider``).
        threads: intra-op threads per session (default: ONNX Runtime's).
        name: what to call the model in messages.
        **changes: :class:`~clip4str.decoding.DecodeOptions` fields changing ``options``.
    """

    def __init__(
        self,
        folder: str | Path,
        options: DecodeOptions | None = None,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        name: str | None = None,
        **changes: Any,
    ) -> None:
        self.folder = Path(folder)
        self.manifest, graphs = load_folder(self.folder)
        try:
            self.config = ModelConfig.from_dict(self.manifest["config"])
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{self.folder}: the manifest's model config is invalid: {err}") from None
        self.tokenizer = CharTokenizer(self.config.charset_train)
        self.precision = str(self.manifest.get("precision", "fp32"))
        source = Path(str(self.manifest.get("source", {}).get("model") or "")).name
        self.name = (
            name or f"{source or self.manifest.get('name') or self.folder.name} (ONNX {self.precision})"
        )
        self.device = "onnxruntime:" + ",".join(providers or ["CPUExecutionProvider"])
        self.sessions = {g: _session(g, data, self.folder, providers, threads) for g, data in graphs.items()}
        for graph, session in self.sessions.items():
            got = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
            want = (self.manifest["inputs"].get(graph), self.manifest["outputs"].get(graph))
            if got[1] != want[1] or not set(got[0]) <= set(want[0] or []):
                raise CheckpointError(
                    f"{self.folder / (graph + '.onnx')}: its inputs/outputs {got} are not the manifest's {want}"
                )
        # an input the graph does not use (content_mask with one decoder layer) is dropped by the exporter
        self._input_names = {g: {i.name for i in s.get_inputs()} for g, s in self.sessions.items()}
        self._adapters: dict[str, CharsetAdapter] = {}
        self._caption_tokenizer = None
        self.options = self._usable((options or DecodeOptions.of_model(self.config)).replace(**changes))

    # ------------------------------------------------------------------------------------------ options
    def _usable(self, options: DecodeOptions) -> DecodeOptions:
        if options.precision not in ("fp32", "auto"):
            raise ValueError(
                f"precision {options.precision!r}: an ONNX export's precision is fixed when it is exported "
                f"(this one: {self.precision}); export with --int8 for a quantized model"
            )
        options = options.replace(precision="fp32")
        if not options.visual_only:
            if "text" not in self.sessions:
                raise ValueError(f"{self.folder} was exported visual-only: read with visual_only=True")
            self.caption_tokenizer  # noqa: B018 - the BPE vocabulary is read now, not at the first image
        return options

    def with_options(self, **changes: Any) -> OnnxRecognizer:
        """This recognizer (the same sessions) with changed decoding options."""
        import copy

        other = copy.copy(self)
        other.options = self._usable(self.options.replace(**changes))
        return other

    @property
    def caption_tokenizer(self):
        if self._caption_tokenizer is None:
            from clip4str.clip.tokenizer import get_tokenizer

            self._caption_tokenizer = get_tokenizer()
        return self._caption_tokenizer

    @property
    def test_charset(self) -> str:
        return self.options.charset_test or self.config.resolved_charset_test

    def _adapter(self, charset_test: str | None) -> CharsetAdapter:
        key = charset_test or self.config.resolved_charset_test
        if key not in self._adapters:
            self._adapters[key] = CharsetAdapter(key)
        return self._adapters[key]

    def __repr__(self) -> str:
        o = self.options
        decoding = "visual only" if o.visual_only else f"{o.mode}, refine_iters={o.refine_iters}"
        return (
            f"OnnxRecognizer({self.name!r}, {self.device!r}, {decoding}, charset of {len(self.test_charset)})"
        )

    # ------------------------------------------------------------------------------------------ reading
    def preprocess(self, images: ImageSource | Sequence[ImageSource]) -> np.ndarray:
        """Paths, PIL images, bytes or arrays → (N, 3, H, W) float32, as the model expects them."""
        return preprocess_array([load_image(im) for im in _as_list(images)], self.config.preprocess)

    def predictions_from_logits(self, logits: np.ndarray) -> list[Prediction]:
        """Final logits (N, L, C) → one :class:`~clip4str.reading.Prediction` per row."""
        return predictions_from_probs(self.tokenizer, softmax(logits))

    def _predict(self, pixels: np.ndarray) -> list[Prediction]:
        return self.predictions_from_logits(self.logits(pixels))

    def logits(self, pixels: np.ndarray, options: DecodeOptions | None = None) -> np.ndarray:
        """(N, 3, H, W) float32 preprocessed images → final logits (N, k, C): ``CLIP4STR.decode``'s loop."""
        o = options or self.options
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if pixels.ndim != 4 or pixels.shape[0] == 0:
            raise ValueError(f"expected images of shape (N, 3, H, W) with N >= 1, got {pixels.shape}")
        depth = self.config.decoder.depth
        num_steps = self.config.max_label_length + 1
        image = dict(
            zip(self.manifest["outputs"]["image"], self.sessions["image"].run(None, {"pixels": pixels}))
        )
        vis_kv = [image[f"visual_{kind}{i}"] for i in range(depth) for kind in "kv"]
        vis = self._first_pass("visual_decoder", vis_kv, o.mode, num_steps)
        if o.visual_only:
            for _ in range(o.refine_iters):
                vis = self._refine("visual_decoder", vis_kv, vis, num_steps)
            return vis
        adapter = self._adapter(o.charset_test)
        image_kv = [image[f"cross_{kind}{i}"] for i in range(depth) for kind in "kv"]
        text_cache: dict[str, KvList] = {}
        cross_kv = self._cross_kv(image_kv, vis, adapter, text_cache)
        cross = self._first_pass("cross_decoder", cross_kv, o.mode, num_steps)
        for _ in range(o.refine_iters):
            vis = self._refine("visual_decoder", vis_kv, vis, num_steps)
            cross_kv = self._cross_kv(image_kv, vis, adapter, text_cache)
            cross = self._refine("cross_decoder", cross_kv, cross, num_steps)
        return cross

    # ------------------------------------------------------------------------------------------ the loop
    def _decoder(
        self,
        graph: str,
        tgt: np.ndarray,
        positions: np.ndarray,
        query_mask: np.ndarray,
        content_mask: np.ndarray,
        padding: np.ndarray,
        kv: KvList,
    ) -> np.ndarray:
        session = self.sessions[graph]
        feed = {
            "tgt": np.ascontiguousarray(tgt, dtype=np.int64),
            "positions": positions.astype(np.int64),
            "query_mask": np.ascontiguousarray(query_mask, dtype=np.float32),
            "content_mask": np.ascontiguousarray(content_mask, dtype=np.float32),
            "padding": np.ascontiguousarray(padding, dtype=bool),
        }
        feed.update((f"memory_{kind}{i // 2}", t) for i, (kind, t) in enumerate(zip("kv" * len(kv), kv)))
        wanted = self._input_names[graph]
        return session.run(None, {k: v for k, v in feed.items() if k in wanted})[0]

    def _first_pass(self, graph: str, kv: KvList, mode: str, num_steps: int) -> np.ndarray:
        """Autoregressive (stops once every row has emitted EOS) or one-pass logits (N, k, C)."""
        n = kv[0].shape[0]
        tok = self.tokenizer
        if mode == "nar":
            tgt = np.full((n, 1), tok.bos_id, dtype=np.int64)
            zeros = np.zeros((num_steps, 1), dtype=np.float32)
            return self._decoder(
                graph,
                tgt,
                np.arange(num_steps),
                zeros,
                np.zeros((1, 1), np.float32),
                np.zeros((n, 1), bool),
                kv,
            )
        tgt = np.full((n, num_steps), tok.pad_id, dtype=np.int64)
        tgt[:, 0] = tok.bos_id
        done = np.zeros(n, dtype=bool)
        causal = causal_mask_array(num_steps)
        outputs = []
        for i in range(num_steps):
            j = i + 1
            step = self._decoder(
                graph,
                tgt[:, :j],
                np.array([i]),
                np.zeros((1, j), np.float32),
                causal[:j, :j],
                np.zeros((n, j), bool),
                kv,
            )
            outputs.append(step)
            next_ids = step[:, 0].argmax(-1)
            if j < num_steps:
                tgt[:, j] = next_ids
            done |= next_ids == tok.eos_id
            if done.all():
                break
        return np.concatenate(outputs, axis=1)

    def _refine(self, graph: str, kv: KvList, logits: np.ndarray, num_steps: int) -> np.ndarray:
        """One cloze iteration over the previous greedy prediction → (N, num_steps, C)."""
        n = logits.shape[0]
        tgt = np.concatenate(
            [np.full((n, 1), self.tokenizer.bos_id, np.int64), logits[:, :-1].argmax(-1)], axis=1
        )
        padding = np.cumsum(tgt == self.tokenizer.eos_id, axis=1) > 0
        mask = cloze_mask_array(num_steps)
        length = tgt.shape[1]
        return self._decoder(
            graph, tgt, np.arange(num_steps), mask[:, :length], mask[:length, :length], padding, kv
        )

    def _cross_kv(
        self, image_kv: KvList, vis_logits: np.ndarray, adapter: CharsetAdapter, cache: dict[str, KvList]
    ) -> KvList:
        """The cross-modal decoder's memory keys/values: the image's, then the caption's text features'.
        Each distinct caption is encoded once per call (``cache``: caption → its per-layer k/v rows), so a
        refinement caption equal to the first one costs nothing."""
        captions = [adapter(c) for c in self.tokenizer.decode_caption(vis_logits.argmax(-1))]
        new = list(dict.fromkeys(c for c in captions if c not in cache))
        if new:
            ids = self.caption_tokenizer.ids(new, context_length=self.config.caption_length, truncate=True)
            text = self.sessions["text"].run(None, {"caption_ids": ids.astype(np.int64)})
            for row, caption in enumerate(new):
                cache[caption] = [t[row] for t in text]
        text_kv = [np.stack([cache[c][i] for c in captions]) for i in range(len(image_kv))]
        return [np.concatenate([im, t], axis=2) for im, t in zip(image_kv, text_kv)]


def load_onnx(folder: str | Path, options: DecodeOptions | None = None, **kwargs: Any) -> OnnxRecognizer:
    """:class:`OnnxRecognizer` of an export folder (see its arguments)."""
    return OnnxRecognizer(folder, options, **kwargs)


def load_onnx_for_cli(args: Any, changes: dict[str, Any]) -> OnnxRecognizer:
    """The ONNX reader ``--runtime onnx`` asks for: ``--model`` an export folder, else a release name or
    checkpoint exported once into the cache (:func:`clip4str.deploy.cache.onnx_folder`); ``--device``
    cpu or cuda picks ONNX Runtime's provider."""
    from clip4str.deploy.cache import onnx_folder

    if getattr(args, "compile", False) or getattr(args, "overrides", None):
        raise ValueError("--compile and --set do not apply to --runtime onnx (export with them instead)")
    device = str(getattr(args, "device", "cpu") or "cpu")
    if device == "cpu":
        providers = ["CPUExecutionProvider"]
    elif device.startswith("cuda"):
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        raise ValueError(f"--device {device} with --runtime onnx: use cpu or cuda")
    if changes.get("precision") in ("auto", None):
        changes = {**changes, "precision": None}
    folder = onnx_folder(getattr(args, "model", None))
    threads = getattr(args, "threads", None)
    if (
        threads is None and device == "cpu"
    ):  # as the torch reader: 1 thread for small models (clip4str.threads)
        from clip4str.deploy.manifest import read_manifest
        from clip4str.threads import default_threads

        manifest = read_manifest(folder)
        size = sum(int(f.get("bytes", 0)) for f in manifest["files"].values())
        threads = default_threads(size // (4 if manifest.get("precision") == "fp32" else 1))
    return OnnxRecognizer(folder, providers=providers, threads=threads, **changes)
