"""Image loading and inference preprocessing, shared by ``read``, ``eval``, validation and training.

This module is on the inference path: it imports only PIL, numpy and torch (no kornia, no augmentation).

The preprocessing is the official one (``SceneTextDataModule.get_transform`` without augmentation):
PIL ``img.resize((W, H), BICUBIC)`` ignoring the aspect ratio, ``/ 255``, then ``(x - mean) / std`` in
float32. It is bit-exact with the tensors the official code feeds its model.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from clip4str.config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PreprocessConfig
from clip4str.errors import ImageReadError

ImageSource = str | Path | bytes | bytearray | memoryview | Image.Image | np.ndarray

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "ImageSource",
    "Preprocess",
    "decode_image_bytes",
    "load_image",
    "normalize_uint8",
    "preprocess",
    "preprocess_one",
    "resize",
]


def decode_image_bytes(data: bytes | bytearray | memoryview, name: str = "<bytes>") -> Image.Image:
    """Decode encoded image bytes (PNG, JPEG, ...) into an RGB image; ``name`` is used in the error."""
    try:
        with Image.open(io.BytesIO(bytes(data))) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{name}: cannot decode image ({len(data)} bytes): {err}") from err


def _from_array(array: np.ndarray) -> Image.Image:
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or a.size == 0:
        raise ValueError(f"image array must be HxW, HxWx1, HxWx3 or HxWx4 and non-empty, got shape {a.shape}")
    if a.dtype == np.uint8:
        u8 = a
    elif a.dtype == np.bool_:
        u8 = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0:
            raise ValueError(
                f"float image arrays must hold values in [0, 1], got range [{a.min()}, {a.max()}]; "
                "pass uint8 for 0..255 data"
            )
        u8 = np.round(a * 255.0).astype(np.uint8)
    else:
        raise ValueError(f"image array dtype must be uint8 or float in [0, 1], got {a.dtype}")
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[u8.ndim if u8.ndim == 2 else u8.shape[2]]
    return Image.fromarray(np.ascontiguousarray(u8), mode=mode).convert("RGB")


def load_image(src: ImageSource) -> Image.Image:
    """Return an RGB ``PIL.Image`` from a path, encoded bytes, a PIL image or an array.

    Arrays may be HxW, HxWx1, HxWx3 or HxWx4 (alpha dropped, as PIL's ``convert('RGB')`` does), uint8 or
    float in [0, 1]. EXIF orientation is not applied, as in the official code.

    Raises:
        ImageReadError: a path is missing, unreadable or not an image (the message names the path).
        ValueError: an array has an unsupported shape, dtype or value range.
    """
    if isinstance(src, Image.Image):
        return src if src.mode == "RGB" else src.convert("RGB")
    if isinstance(src, (bytes, bytearray, memoryview)):
        return decode_image_bytes(src)
    if isinstance(src, np.ndarray):
        return _from_array(src)
    if isinstance(src, (str, Path)):
        path = Path(src)
        if not path.exists():
            raise ImageReadError(f"image file not found: {path}")
        if path.is_dir():
            raise ImageReadError(f"expected an image file, got a directory: {path}")
        try:
            with Image.open(path) as img:
                img.load()
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise ImageReadError(f"cannot read image {path}: {err}") from err
    raise TypeError(f"cannot load an image from {type(src).__name__}; pass a path, bytes, PIL image or array")


def resize(img: Image.Image, image_size: tuple[int, int], interpolation: str = "bicubic") -> Image.Image:
    """Resize to ``image_size`` = (H, W) exactly, ignoring the aspect ratio (the official behaviour)."""
    h, w = image_size
    if img.size == (w, h):
        return img
    return img.resize((w, h), _RESAMPLE[interpolation])


def normalize_uint8(pixels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (..., 3, H, W) → float32 ``(x / 255 - mean) / std``, with the official rounding."""
    x = pixels.float().div(255)
    shape = (3, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32).view(shape)
    return (x - mean_t) / std_t


def _to_uint8_chw(img: Image.Image) -> Tensor:
    arr = np.asarray(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def preprocess_one(img: Image.Image, cfg: PreprocessConfig) -> Tensor:
    """One RGB image → (3, H, W) float32, resized and normalised as ``cfg`` says (for dataset workers)."""
    return normalize_uint8(_to_uint8_chw(resize(img, cfg.image_size, cfg.interpolation)), cfg.mean, cfg.std)


def preprocess(images: Sequence[Image.Image], cfg: PreprocessConfig) -> Tensor:
    """RGB images → (N, 3, H, W) float32 tensor, each resized to ``cfg.image_size`` and normalised."""
    if len(images) == 0:
        h, w = cfg.image_size
        return torch.empty((0, 3, h, w), dtype=torch.float32)
    pixels = torch.stack([_to_uint8_chw(resize(img, cfg.image_size, cfg.interpolation)) for img in images])
    return normalize_uint8(pixels, cfg.mean, cfg.std)


class Preprocess:
    """Picklable callable ``PIL image → (3, H, W) tensor``: the evaluation / validation transform."""

    def __init__(self, cfg: PreprocessConfig | None = None, **kwargs) -> None:
        self.cfg = cfg if cfg is not None else PreprocessConfig(**kwargs)

    def __call__(self, img: Image.Image) -> Tensor:
        return preprocess_one(img, self.cfg)

    def __repr__(self) -> str:
        c = self.cfg
        return f"Preprocess(image_size={c.image_size}, mean={c.mean}, std={c.std}, {c.interpolation})"
