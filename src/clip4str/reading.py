"""What every reader shares, PyTorch or ONNX Runtime: the result type, the greedy reading of final
probabilities, and batched, prefetched reading of files and streams.

Torch-free (numpy and Pillow): :class:`clip4str.api.Recognizer` and :class:`clip4str.deploy.OnnxRecognizer`
both build on :class:`BatchReader`, so they read, batch, skip bad files and report errors the same way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image

from clip4str.data.transforms import ImageSource, load_image, preprocess_array, preprocess_one_array

if TYPE_CHECKING:
    from clip4str.charset import CharTokenizer
    from clip4str.config import ModelConfig
    from clip4str.decoding import DecodeOptions

T = TypeVar("T")


@dataclass
class Prediction:
    """One image's reading: ``text``, ``confidence`` (product of ``char_probs``), and the per-position
    probabilities of the read characters followed by that of the end-of-sequence token."""

    text: str
    confidence: float
    char_probs: list[float] = field(default_factory=list)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float32 (max-subtracted)."""
    x = logits.astype(np.float32, copy=False)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def predictions_from_probs(tokenizer: CharTokenizer, probs: np.ndarray) -> list[Prediction]:
    """Final probabilities (N, L, C) → one :class:`Prediction` per row: greedy, cut at the first EOS,
    confidence the product of the kept characters' and the EOS's probabilities (the official rule)."""
    ids = probs.argmax(-1)
    best = np.take_along_axis(probs, ids[..., None], -1)[..., 0]
    texts, ends = tokenizer.read_ids(ids)
    out = []
    for text, row, end in zip(texts, best, ends):
        kept = row[:end]
        out.append(
            Prediction(text=text, confidence=float(np.prod(kept)), char_probs=[float(v) for v in kept])
        )
    return out


class BatchReader:
    """Reading in batches over a model-specific ``_predict(pixels)``; subclasses set ``options``
    (a :class:`~clip4str.decoding.DecodeOptions`, for ``batch_size``) and ``config`` (for preprocessing)."""

    options: DecodeOptions
    config: ModelConfig

    def _predict(self, pixels: np.ndarray) -> list[Prediction]:
        """(N, 3, H, W) float32 preprocessed images → N predictions."""
        raise NotImplementedError

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
            batch = [load_image(im) for im in items[start : start + size]]
            out.extend(self._predict(preprocess_array(batch, self.config.preprocess)))
        return out

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

        def prepare(data: Any) -> np.ndarray | Exception:
            if isinstance(data, Exception):
                return data
            try:
                return preprocess_one_array(load(data), cfg)
            except Exception as err:  # noqa: BLE001 - reported to the caller with its item
                return err

        # A batch is ``size`` consecutive items, less those that fail: which images share a forward pass
        # (and so the last bits of their confidences) depends only on the items' positions, so any run that
        # reads the same aligned runs of items (``clip4str batch``) gets exactly the same numbers.
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            batch: list[tuple[T, np.ndarray | Exception]] = []
            for item, pixels in _ordered_prefetch(pool, prepare, items, fetched, window=2 * size):
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

    def _flush(
        self, batch: list[tuple[T, np.ndarray | Exception]]
    ) -> Iterator[tuple[T, Prediction | Exception]]:
        """Read the images of ``batch`` in one forward pass; yield every item in order (errors in place)."""
        good = [a for _, a in batch if not isinstance(a, Exception)]
        preds = iter(self._predict(np.stack(good)) if good else [])
        for item, pixels in batch:
            yield item, pixels if isinstance(pixels, Exception) else next(preds)


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
