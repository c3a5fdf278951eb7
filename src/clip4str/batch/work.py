"""What one model worker does with one chunk of items: the same reading as ``clip4str read``. No Ray here.

A chunk is one aligned run of items: ``--batch-size`` crops (one forward pass of those that decode) or,
with ``--detect``, one group of photos whose words are read together. ``clip4str read`` forms exactly
these runs over the same list (:meth:`clip4str.reading.BatchReader.read_stream`,
:func:`clip4str.detect.iter_photos`), so texts and confidences are equal to the last bit.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from typing import Any

from clip4str.batch.inputs import Item, fetch_bytes, load_item

__all__ = ["PHOTOS_PER_CHUNK", "ChunkWorker"]

PHOTOS_PER_CHUNK = 4  # iter_photos' default group, the one clip4str read --detect uses


class ChunkWorker:
    """A loaded reader (and detector with ``detect``) that turns chunks of items into output rows.

    ``settings``: the command's model and decoding arguments (see :func:`worker_settings`), ``threads``:
    torch threads and image-decoding threads (None: leave torch's default).
    """

    def __init__(self, settings: dict[str, Any], threads: int | None = None) -> None:
        from clip4str.cli.read import load_recognizer

        self.settings = settings
        self.threads = max(2, threads or 4)  # image-decoding threads
        if threads:  # the model's threads too (as clip4str read --threads)
            from clip4str.threads import set_threads

            set_threads(threads)
            settings = {**settings, "args": {**settings["args"], "threads": threads}}
        quiet = io.StringIO()
        with contextlib.redirect_stderr(quiet):  # its "clip4str: model ..." line is the driver's to print
            self.reader = load_recognizer(argparse.Namespace(**settings["args"]))
        self.detector = None
        if settings["detect"]:
            from clip4str.detect import as_detector

            self.detector = as_detector(None)
        o = self.reader.options
        self.model = self.reader.name
        runtime = "onnx" if type(self.reader).__name__.startswith("Onnx") else "torch"
        self.options = {
            "runtime": runtime,
            "device": str(getattr(self.reader, "device", settings["args"]["device"])),
            "mode": o.mode,
            "refine_iters": o.refine_iters,
            "visual_only": o.visual_only,
            "precision": o.precision,
            "charset_test": settings["args"].get("charset_test"),
            "batch_size": o.batch_size,
            "detect": bool(settings["detect"]),
            "orientation": settings["orientation"] if settings["detect"] else None,
        }

    def read_chunk(self, items: list[Item], start: int) -> list[dict[str, Any]]:
        """Rows for ``items`` (indices ``start``, ``start + 1``, ...), in order; an item that cannot be read
        is a row with ``error`` set, and a failure of the model fails only this chunk's rows."""
        try:
            results = self._photos(items) if self.detector is not None else self._crops(items)
        except Exception as err:  # noqa: BLE001 - the job goes on; these rows say why they are empty
            line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            results = [RuntimeError(f"the model failed on this batch: {line}")] * len(items)
        rows = []
        for i, (item, result) in enumerate(zip(items, results)):
            row: dict[str, Any] = {"index": start + i, "path": item.path, "model": self.model}
            row["options"] = self.options
            if isinstance(result, Exception):
                row["error"] = _one_line(result)
            elif isinstance(result, dict):  # a photo
                row.update(result)
            else:
                row.update(text=result.text, confidence=result.confidence, char_probs=result.char_probs)
            rows.append(row)
        return rows

    def _crops(self, items: list[Item]) -> list[Any]:
        def fetch(item: Item) -> tuple[Item, bytes | None]:
            # LMDB reads stay on this thread (one transaction per thread); files and URIs load in the pool
            return item, fetch_bytes(item) if item.kind == "lmdb" else None

        def load(fetched: tuple[Item, bytes | None]) -> Any:
            item, data = fetched
            if data is None:
                return load_item(item)
            from clip4str.data.transforms import decode_image_bytes

            return decode_image_bytes(data, item.path)

        stream = self.reader.read_stream(
            items, fetch=fetch, load=load, batch_size=len(items) or 1, workers=self.threads
        )
        return [result for _, result in stream]

    def _photos(self, items: list[Item]) -> list[Any]:
        from clip4str.detect import iter_photos

        sources: list[Any] = []
        results: list[Any] = [None] * len(items)
        for i, item in enumerate(items):
            if item.kind == "file":
                sources.append((i, item.path))  # as clip4str read --detect: iter_photos loads the path
                continue
            try:
                sources.append((i, load_item(item)))
            except Exception as err:  # noqa: BLE001 - this photo's row says why
                results[i] = err
        # one group: the chunk is at most PHOTOS_PER_CHUNK inputs, those that failed above included
        photos = iter_photos(
            self.reader,
            [src for _, src in sources],
            self.detector,
            orientation=self.settings["orientation"],
            photos_per_batch=PHOTOS_PER_CHUNK,
        )
        for (i, _), (_, photo) in zip(sources, photos):
            if isinstance(photo, Exception):
                results[i] = photo
                continue
            words = [{"text": w.text, "confidence": w.confidence, "box": w.box} for w in photo.words]
            results[i] = {
                "text": " ".join(w.text for w in photo.words),
                "width": photo.width,
                "height": photo.height,
                "words": words,
            }
        return results


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    return first


def worker_settings(args: argparse.Namespace, charset_test: str | None) -> dict[str, Any]:
    """The picklable settings a worker loads its reader from: the decoding arguments of ``clip4str read``
    (``charset_test`` already resolved to its characters, so no worker reads the driver's files)."""
    keys = ("model", "device", "batch_size", "decode", "refine_iters", "visual_only", "precision", "compile")
    values = {k: getattr(args, k) for k in keys}
    values.update(overrides=list(args.overrides or []), runtime=args.runtime, charset_test=charset_test)
    return {
        "args": values,
        "runtime": args.runtime,
        "detect": bool(args.detect),
        "orientation": args.orientation,
    }
