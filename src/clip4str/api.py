"""The user-facing recognizer: images in, text out.

>>> import clip4str
>>> reader = clip4str.load("clip4str-base")            # or a path to a .ckpt / .pt / model folder
>>> reader.read("word.png")[0].text
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from clip4str.data.transforms import ImageSource, load_image, preprocess
from clip4str.decoding import DecodeOptions
from clip4str.model.clip4str import CLIP4STR
from clip4str.precision import choose_precision
from clip4str.reading import BatchReader, Prediction, _as_list, _ordered_prefetch, predictions_from_probs

if TYPE_CHECKING:
    from clip4str.config import ModelConfig
    from clip4str.explain import Explanation

__all__ = ["Prediction", "Recognizer", "check_device", "load", "_as_list", "_ordered_prefetch"]
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # DecodeOptions.precision other than fp32


class Recognizer(BatchReader):
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
        if options.precision == "auto":
            options = options.replace(precision=choose_precision(self.device).precision)
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
        probs = logits.float().softmax(-1).cpu().numpy()
        return predictions_from_probs(self.model.tokenizer, probs)

    def _predict(self, pixels: np.ndarray) -> list[Prediction]:
        return self.predictions_from_logits(self.logits(torch.from_numpy(pixels)))

    def explain(self, images: ImageSource | Sequence[ImageSource], figure: bool = True) -> list[Explanation]:
        """Read images and say where the final decoder looked for each character: per image an
        :class:`~clip4str.explain.Explanation` (text, confidence, attention maps (len(text), rows, cols) over
        the patch grid, and a PIL figure when ``figure``). The plain :meth:`read` path records nothing."""
        from clip4str.explain import explain

        return explain(self, images, figure=figure)


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
