"""The user-facing recognizer: images in, text out.

>>> import clip4str
>>> reader = clip4str.load("clip4str-base")            # or a path to a .ckpt / .pt / model folder
>>> reader.read("word.png")[0].text
"""

from __future__ import annotations

import contextlib
import copy
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from PIL import Image
from torch import Tensor

from clip4str.data.transforms import ImageSource, load_image, preprocess, preprocess_one
from clip4str.decoding import DecodeOptions
from clip4str.model.clip4str import CLIP4STR

if TYPE_CHECKING:
    from clip4str.config import ModelConfig
    from clip4str.explain import Explanation

T = TypeVar("T")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # DecodeOptions.precision other than fp32


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
        model: the network (its config carries the preprocessing and the default decoding).
        device: where to run ('cpu', 'cuda', 'cuda:1', ...).
        options: how to decode; default: the model config's (:meth:`DecodeOptions.of_model`).
        compile: ``torch.compile`` the encoder and the decoding step (pays on GPUs for large runs; the first
            batch of each size compiles, which takes minutes on a CPU).
        name: what to call the model in messages (default: its config's name).
        **changes: :class:`~clip4str.decoding.DecodeOptions` fields changing ``options``: ``mode``,
            ``refine_iters``, ``visual_only``, ``charset_test``, ``precision`` ('fp16' only on CUDA),
            ``batch_size``; None keeps the value.
    """

    def __init__(
        self,
        model: CLIP4STR,
        device: str | torch.device = "cpu",
        options: DecodeOptions | None = None,
        *,
        compile: bool = False,
        name: str | None = None,
        **changes: Any,
    ) -> None:
        if options is not None and not isinstance(options, DecodeOptions):
            raise TypeError(f"options must be a DecodeOptions, got {type(options).__name__}")
        self.device = check_device(device)
        self.model = model.to(self.device).eval()
        self.options = self._usable((options or DecodeOptions.of_model(model.config)).replace(**changes))
        self.name = name or model.config.name or "unnamed model"
        if compile:
            model.enable_compile()

    def _usable(self, options: DecodeOptions) -> DecodeOptions:
        """``options`` once they are known to work here: fp16 needs CUDA; the text branch's vocabulary is
        loaded now (FileNotFoundError saying where it looked), not at the first read."""
        if options.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' on CPU")
        if not options.visual_only and self.model.text_encoder is None:
            self.model.load_text_vocabulary()
        return options

    def with_options(self, **changes: Any) -> Recognizer:
        """This recognizer (the same model, not a copy) with changed decoding options."""
        other = copy.copy(self)
        other.options = self._usable(self.options.replace(**changes))
        return other

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def test_charset(self) -> str:
        """The characters predictions are restricted to before they become captions."""
        return self.options.charset_test or self.config.resolved_charset_test

    def __repr__(self) -> str:
        o = self.options
        decoding = "visual only" if o.visual_only else f"{o.mode}, refine_iters={o.refine_iters}"
        return (
            f"Recognizer({self.name!r}, device={str(self.device)!r}, {decoding}, precision={o.precision!r}, "
            f"charset of {len(self.test_charset)})"
        )

    def preprocess(self, images: ImageSource | Sequence[ImageSource]) -> Tensor:
        """Paths, PIL images, bytes or arrays → (N, 3, H, W) float32, as the model expects them."""
        return preprocess([load_image(im) for im in _as_list(images)], self.config.preprocess)

    @torch.inference_mode()
    def logits(self, pixels: Tensor, options: DecodeOptions | None = None) -> Tensor:
        """(N, 3, H, W) preprocessed images → final logits (N, L, C) (float32), the official ``forward``,
        decoded with ``options`` (default: this recognizer's)."""
        options = options or self.options
        autocast = (
            contextlib.nullcontext()
            if options.precision == "fp32"
            else torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[options.precision])
        )
        with autocast:
            out = self.model.decode(pixels.to(self.device), options)
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
        size = self.options.replace(batch_size=batch_size).batch_size
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
        yield from self.read_stream((str(p) for p in paths), batch_size=batch_size, workers=workers)

    def read_stream(
        self,
        items: Iterable[T],
        fetch: Callable[[T], Any] | None = None,
        load: Callable[[Any], Image.Image] = load_image,
        batch_size: int | None = None,
        workers: int = 4,
    ) -> Iterator[tuple[T, Prediction | Exception]]:
        """Read a stream of images in batches, yielding ``(item, prediction)`` in order, or ``(item, error)``
        for one that cannot be read. ``items`` is consumed as the results are: it may be endless.

        ``fetch(item)`` runs in the calling thread (e.g. reading bytes from an LMDB, whose transactions stay
        on one thread); ``load(fetched)`` → RGB image and the preprocessing run in ``workers`` threads,
        about two batches ahead of the model.
        """
        size = self.options.replace(batch_size=batch_size).batch_size
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

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            batch: list[tuple[T, Tensor]] = []
            for item, pixels in _ordered_prefetch(pool, prepare, items, fetched, window=2 * size):
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


def _ordered_prefetch(
    pool: ThreadPoolExecutor,
    work: Callable[[Any], Any],
    items: Iterable[T],
    fetch: Callable[[T], Any],
    window: int,
) -> Iterator[tuple[T, Any]]:
    """``(item, work(fetch(item)))`` in order: ``fetch`` on this thread as items are pulled, ``work`` in
    ``pool``, with at most ``window`` items pulled ahead of the consumer."""
    pending: deque[tuple[T, Any]] = deque()
    for item in items:
        pending.append((item, pool.submit(work, fetch(item))))
        if len(pending) >= window:
            done, future = pending.popleft()
            yield done, future.result()
    while pending:
        done, future = pending.popleft()
        yield done, future.result()


def _as_list(images: Any) -> list[Any]:
    if isinstance(images, (str, Path, bytes, bytearray, memoryview)) or not isinstance(images, Sequence):
        if hasattr(images, "ndim") and getattr(images, "ndim", 0) == 4:  # a batch array
            return list(images)
        return [images]
    return list(images)


def load(
    name_or_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    options: DecodeOptions | None = None,
    *,
    compile: bool = False,
    overrides: list[str] | dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    **changes: Any,
) -> Recognizer:
    """Load a released model by name (downloaded once) or any checkpoint file/folder, ready to read.

    Args:
        name_or_path: a release name (``clip4str-base``, ``clip4str-large``, ``clip4str-huge``, ... see
            ``clip4str models``), an official ``.ckpt``/``.pt`` file, or a clip4str model folder/safetensors.
            Default: ``clip4str-small``, shipped inside the package (no download).
        device, options, compile: see :class:`Recognizer`.
        **changes: decoding options (``mode``, ``refine_iters``, ``visual_only``, ``charset_test``,
            ``precision``, ``batch_size``: see :class:`~clip4str.decoding.DecodeOptions`), checked before
            anything is downloaded.
        overrides: config changes applied before building (e.g. ``{'decoder.num_heads': 4}``).
        cache_dir, offline: download cache and offline mode (default: the Hugging Face cache and
            ``HF_HUB_OFFLINE``).
    """
    from clip4str.config import parse_overrides
    from clip4str.factory import create_model
    from clip4str.hub import DEFAULT_MODEL, get_release, resolve_model

    name_or_path = name_or_path or DEFAULT_MODEL
    check_device(device)  # before any download: a CUDA device on a CPU-only machine fails at once
    (options or DecodeOptions()).replace(**changes)  # likewise a bad option
    path = resolve_model(name_or_path, cache_dir=cache_dir, offline=offline)
    release = None if Path(name_or_path).exists() else get_release(str(name_or_path))
    model = create_model(path, **parse_overrides(overrides))
    name = release.name if release is not None else str(path)
    return Recognizer(model, device, options, compile=compile, name=name, **changes)
