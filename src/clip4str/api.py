"""The user-facing recognizer: images in, text out.

>>> import clip4str
>>> reader = clip4str.load("clip4str-base")            # or a path to a .ckpt / .pt / model folder
>>> reader.read("word.png")[0].text
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from PIL import Image
from torch import Tensor

from clip4str.config import MAX_REFINE_ITERS
from clip4str.data.transforms import ImageSource, load_image, preprocess, preprocess_one
from clip4str.model.clip4str import CLIP4STR

if TYPE_CHECKING:
    from clip4str.explain import Explanation

T = TypeVar("T")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Prediction:
    """One image's reading: ``text``, ``confidence`` (product of ``char_probs``), and the per-position
    probabilities of the read characters followed by that of the end-of-sequence token."""

    text: str
    confidence: float
    char_probs: list[float] = field(default_factory=list)


class Recognizer:
    """A loaded CLIP4STR model with its preprocessing and decoding options.

    Args:
        model: the network (its config carries the preprocessing).
        device: where to run ('cpu', 'cuda', 'cuda:1', ...).
        mode: 'ar' or 'nar' decoding (default: the model config's).
        refine_iters: cloze refinement iterations (default: the model config's).
        visual_only: read with the visual branch alone.
        charset_test: restrict predictions fed to the text encoder to these characters (changes logits, as
            in the official evaluation); None keeps the checkpoint's.
        batch_size: images per forward pass in :meth:`read`.
        precision: 'fp32', 'bf16' or 'fp16' (autocast; fp16 only on CUDA).
        compile: ``torch.compile`` the encoder and the decoding step (pays on GPUs for large runs; the first
            batch of each size compiles, which takes minutes on a CPU).
    """

    def __init__(
        self,
        model: CLIP4STR,
        device: str | torch.device = "cpu",
        mode: str | None = None,
        refine_iters: int | None = None,
        visual_only: bool | None = None,
        charset_test: str | None = None,
        batch_size: int = 32,
        precision: str = "fp32",
        compile: bool = False,
        name: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device = check_device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' on CPU")
        self.model = model.to(self.device).eval()
        if charset_test is not None:
            self.model.set_charset_test(charset_test)
        dec = self.model.config.decoding
        self.mode = dec.mode if mode is None else mode
        self.refine_iters = dec.refine_iters if refine_iters is None else refine_iters
        self.visual_only = dec.visual_only if visual_only is None else visual_only
        if self.mode not in ("ar", "nar"):
            raise ValueError(f"mode must be 'ar' or 'nar', got {self.mode!r}")
        if not 0 <= self.refine_iters <= MAX_REFINE_ITERS:  # 10**9 would never finish
            raise ValueError(f"refine_iters must be in [0, {MAX_REFINE_ITERS}], got {self.refine_iters}")
        self.batch_size = batch_size
        self.precision = precision
        self.name = name or self.model.config.name or "unnamed model"
        if not self.visual_only and self.model.text_encoder is None:
            self.model.caption_tokenizer  # noqa: B018 - finds CLIP's vocabulary now, or says where it looked
        if compile:
            self.model.enable_compile()

    @property
    def config(self):
        return self.model.config

    def __repr__(self) -> str:
        decoding = "visual only" if self.visual_only else f"{self.mode}, refine_iters={self.refine_iters}"
        return (
            f"Recognizer({self.name!r}, device={str(self.device)!r}, {decoding}, precision={self.precision!r}, "
            f"charset of {len(self.config.resolved_charset_test)})"
        )

    def preprocess(self, images: ImageSource | Sequence[ImageSource]) -> Tensor:
        """Paths, PIL images, bytes or arrays → (N, 3, H, W) float32, as the model expects them."""
        return preprocess([load_image(im) for im in _as_list(images)], self.config.preprocess)

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    @torch.inference_mode()
    def logits(self, pixels: Tensor) -> Tensor:
        """(N, 3, H, W) preprocessed images → final logits (N, L, C) (float32), the official ``forward``."""
        with self._autocast():
            out = self.model.decode(
                pixels.to(self.device),
                mode=self.mode,
                refine_iters=self.refine_iters,
                visual_only=self.visual_only,
            )
        return out.float()

    def predictions_from_logits(self, logits: Tensor) -> list[Prediction]:
        """Final logits (N, L, C) → one :class:`Prediction` per row (greedy, cut at the first EOS)."""
        texts, probs = self.model.tokenizer.decode(logits.float().softmax(-1))
        return [
            Prediction(text=t, confidence=float(p.prod()), char_probs=[float(v) for v in p])
            for t, p in zip(texts, probs)
        ]

    def read(
        self, images: ImageSource | Sequence[ImageSource], batch_size: int | None = None
    ) -> list[Prediction]:
        """Read the text of one image or a sequence of images (paths, PIL images, bytes or arrays).

        Raises :class:`~clip4str.errors.ImageReadError` for an unreadable file; use :meth:`read_files` to
        skip and report bad files instead.
        """
        items = _as_list(images)
        size = self._batch_size(batch_size)
        out: list[Prediction] = []
        for start in range(0, len(items), size):
            out.extend(
                self.predictions_from_logits(self.logits(self.preprocess(items[start : start + size])))
            )
        return out

    def explain(self, images: ImageSource | Sequence[ImageSource], figure: bool = True) -> list[Explanation]:
        """Read images and say where the final decoder looked for each character: per image an
        :class:`~clip4str.explain.Explanation` (text, confidence, attention maps (len(text), rows, cols) over
        the patch grid, and a PIL figure when ``figure``). The plain :meth:`read` path records nothing."""
        from clip4str.explain import explain

        return explain(self, images, figure=figure)

    def read_files(
        self,
        paths: Iterable[str | Path],
        batch_size: int | None = None,
        workers: int = 4,
    ) -> Iterator[tuple[str, Prediction | Exception]]:
        """Read many files, yielding ``(path, prediction)`` in order, or ``(path, error)`` for a file that
        cannot be read. Image decoding and preprocessing run in ``workers`` threads, overlapping the model.
        """
        yield from self.read_stream([str(p) for p in paths], batch_size=batch_size, workers=workers)

    def read_stream(
        self,
        items: Iterable[T],
        fetch: Callable[[T], Any] | None = None,
        load: Callable[[Any], Image.Image] = load_image,
        batch_size: int | None = None,
        workers: int = 4,
    ) -> Iterator[tuple[T, Prediction | Exception]]:
        """Read a stream of images in batches, yielding ``(item, prediction)`` in order, or ``(item, error)``
        for one that cannot be read.

        ``fetch(item)`` runs in the calling thread (e.g. reading bytes from an LMDB, whose transactions stay
        on one thread); ``load(fetched)`` → RGB image and the preprocessing run in ``workers`` threads,
        about two batches ahead of the model.
        """
        size = self._batch_size(batch_size)
        cfg = self.config.preprocess

        def fetched(item: T) -> Any:
            try:
                return item if fetch is None else fetch(item)
            except Exception as err:  # noqa: BLE001 - reported to the caller with its item
                return err

        def prepare(data: Any) -> Tensor | Exception:
            if isinstance(data, Exception):
                return data
            try:
                return preprocess_one(load(data), cfg)
            except Exception as err:  # noqa: BLE001 - reported to the caller with its item
                return err

        items = list(items)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            prepared = _bounded_map(pool, prepare, (fetched(item) for item in items), window=2 * size)
            batch: list[tuple[T, Tensor]] = []
            for item, pixels in zip(items, prepared):
                if isinstance(pixels, Exception):
                    yield from self._flush(batch)
                    batch = []
                    yield item, pixels
                    continue
                batch.append((item, pixels))
                if len(batch) == size:
                    yield from self._flush(batch)
                    batch = []
            yield from self._flush(batch)

    def read_photos(self, images: ImageSource | Sequence[ImageSource], detector: Any = None, **options: Any):
        """Find and read the words of whole photos → one :class:`clip4str.detect.Photo` per image
        (``path``, ``width``, ``height``, ``words`` in reading order, each with ``box``, ``text``,
        ``confidence``). ``detector``: RapidOCR's by default (``pip install 'clip4str[detect]'``), any
        object with ``detect(image) → quads`` or a function. Options: see :func:`clip4str.detect.read_photos`.
        """
        from clip4str.detect import read_photos

        return read_photos(self, images, detector, **options)

    def read_regions(self, image: ImageSource, boxes: Any, **options: Any):
        """Read given boxes of one image (quads ``[[x, y] × 4]`` or ``[x0, y0, x1, y1]``) → one
        :class:`clip4str.detect.Word` per box, in order. Needs no detector."""
        from clip4str.detect import read_regions

        return read_regions(self, image, boxes, **options)

    def _batch_size(self, batch_size: int | None) -> int:
        if batch_size is None:
            return self.batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return batch_size

    def _flush(self, batch: list[tuple[T, Tensor]]) -> Iterator[tuple[T, Prediction]]:
        if not batch:
            return
        preds = self.predictions_from_logits(self.logits(torch.stack([t for _, t in batch])))
        yield from zip([p for p, _ in batch], preds)


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, or ValueError saying why it cannot be used on this machine."""
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {str(device)!r}: use cpu, cuda, cuda:N or mps") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r}: no CUDA GPU is usable here (torch {torch.__version__}); use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {str(device)!r} is not supported: use cpu, cuda, cuda:N or mps")
    return dev


def _bounded_map(pool: ThreadPoolExecutor, fn, items: Iterable[Any], window: int) -> Iterator[Any]:
    """``pool.map`` in order, with at most ``window`` items submitted ahead of the consumer."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _as_list(images: Any) -> list[Any]:
    if isinstance(images, (str, Path, bytes, bytearray, memoryview)) or not isinstance(images, Sequence):
        if hasattr(images, "ndim") and getattr(images, "ndim", 0) == 4:  # a batch array
            return list(images)
        return [images]
    return list(images)


def load(
    name_or_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    *,
    mode: str | None = None,
    refine_iters: int | None = None,
    visual_only: bool | None = None,
    charset_test: str | None = None,
    batch_size: int = 32,
    precision: str = "fp32",
    compile: bool = False,
    overrides: list[str] | dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
) -> Recognizer:
    """Load a released model by name (downloaded once) or any checkpoint file/folder, ready to read.

    Args:
        name_or_path: a release name (``clip4str-base``, ``clip4str-large``, ``clip4str-huge``, ... see
            ``clip4str models``), an official ``.ckpt``/``.pt`` file, or a clip4str model folder/safetensors.
            Default: ``clip4str-base``, the best released B/16 (downloaded once).
        device, mode, refine_iters, visual_only, charset_test, batch_size, precision, compile: see
            :class:`Recognizer`.
        overrides: config changes applied before building (e.g. ``{'decoder.num_heads': 4}``).
        cache_dir, offline: download cache and offline mode (default: the Hugging Face cache and
            ``HF_HUB_OFFLINE``).
    """
    from clip4str.config import parse_overrides
    from clip4str.factory import create_model
    from clip4str.hub import DEFAULT_MODEL, get_release, resolve_model

    name_or_path = name_or_path or DEFAULT_MODEL
    check_device(device)  # before any download: a CUDA device on a CPU-only machine fails at once
    path = resolve_model(name_or_path, cache_dir=cache_dir, offline=offline)
    release = None if Path(name_or_path).exists() else get_release(str(name_or_path))
    model = create_model(path, **parse_overrides(overrides))
    return Recognizer(
        model,
        device=device,
        mode=mode,
        refine_iters=refine_iters,
        visual_only=visual_only,
        charset_test=charset_test,
        batch_size=batch_size,
        precision=precision,
        compile=compile,
        name=release.name if release is not None else str(path),
    )
