"""Image loading and inference preprocessing, shared by ``read``, ``eval``, validation and training.

This module is on the inference path: it imports only PIL and numpy (torch only where tensors are made), so
the ONNX reader shares it without PyTorch.

The preprocessing is the official one (``SceneTextDataModule.get_transform`` without augmentation):
PIL ``img.resize((W, H), BICUBIC)`` ignoring the aspect ratio, ``/ 255``, then ``(x - mean) / std`` in
float32. It is bit-exact with the tensors the official code feeds its model.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from torch import Tensor

from clip4str.config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PreprocessConfig
from clip4str.errors import ImageReadError
from clip4str.files import MAX_IMAGE_BYTES, read_regular_file

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
    "image_size_of_bytes",
    "load_image",
    "normalize_uint8",
    "preprocess",
    "preprocess_array",
    "preprocess_one",
    "preprocess_one_array",
    "resize",
    "to_rgb",
]


# Images over PIL's hard limit (2 x Image.MAX_IMAGE_PIXELS, 179 Mpx by default) are refused as decompression
# bombs. Below it every image is legal, so PIL's warning between 89 and 179 Mpx is not repeated here; instead
# at most DECODE_BUDGET_PIXELS are decoded at once per process (an image larger than the budget decodes alone).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning, module=r"PIL\.")
DECODE_BUDGET_PIXELS = 48_000_000


class _PixelBudget:
    """A counting semaphore over pixels: threads decoding images share ``limit`` pixels."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    @contextmanager
    def take(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.limit)
        with self._cond:
            while self.used and self.used + pixels > self.limit:
                self._cond.wait()
            self.used += pixels
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()


_BUDGET = _PixelBudget(DECODE_BUDGET_PIXELS)


def max_image_pixels() -> int | None:
    """The largest image (in pixels) decoded: PIL's decompression-bomb error threshold (None: no limit)."""
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → RGB. 16-bit grayscale (``I;16*``, and ``I`` holding values above 255) is scaled to
    8 bits (PIL's own conversion clips it, turning most 16-bit images white)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":
        a = np.asarray(img)
        if img.mode.startswith("I;16") or (a.size and int(a.max()) > 255):
            a = (np.clip(a.astype(np.int64), 0, 65535) * 255 + 32767) // 65535
        else:
            a = np.clip(a, 0, 255)
        return Image.fromarray(a.astype(np.uint8), mode="L").convert("RGB")
    return img.convert("RGB")


def _check_size(img: Image.Image, name: str) -> None:
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageReadError(f"{name}: the image is empty ({w}x{h} pixels)")
    limit = max_image_pixels()
    if limit is not None and w * h > limit:
        raise ImageReadError(
            f"{name}: {w}x{h} pixels ({w * h / 1e6:.0f} Mpx) is over the {limit / 1e6:.0f} Mpx limit for an "
            "image (a decompression bomb?); downscale it first"
        )


def _decode(data: bytes | bytearray | memoryview, name: str, what: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_size(img, name)
            with _BUDGET.take(img.size[0] * img.size[1]):
                img.load()
                upright = ImageOps.exif_transpose(img)  # phone photos: as the camera held them
                rgb = to_rgb(upright)
                return rgb.copy() if rgb is img else rgb  # detached from the (closed) file
    except ImageReadError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"{name}: {err}; refused as a decompression bomb (downscale it first)") from err
    except UnidentifiedImageError as err:
        raise ImageReadError(f"{what}: not an image (no format Pillow reads in {len(data)} bytes)") from err
    except (OSError, SyntaxError, ValueError, MemoryError) as err:
        raise ImageReadError(f"{what}: {err}") from err


def decode_image_bytes(data: bytes | bytearray | memoryview, name: str = "<bytes>") -> Image.Image:
    """Decode encoded image bytes (PNG, JPEG, ...) into an RGB image; ``name`` is used in the error.

    Raises :class:`ImageReadError` for undecodable data, an empty image, or one over
    :func:`max_image_pixels` (a decompression bomb), never ending a run with another exception.
    """
    return _decode(data, name, f"{name}: cannot decode image ({len(data)} bytes)")


def image_size_of_bytes(data: bytes | bytearray | memoryview, name: str = "<bytes>") -> tuple[int, int]:
    """(width, height) from the image header alone (nothing decoded); :class:`ImageReadError` if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
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
    float in [0, 1]. 16-bit grayscale is scaled to 8 bits. Encoded images (files, bytes) are turned upright
    by their EXIF orientation, as a photo viewer shows them (the official code reads the stored
    orientation; none of the 11,659 images in ../shared/realdata carries one). Files are read only when
    regular and at most ``MAX_IMAGE_BYTES`` long.

    Raises:
        ImageReadError: a path is missing, unreadable, not a regular file or not an image; an image is
            empty (0 pixels) or a decompression bomb (the message names the path).
        ValueError: an array has an unsupported shape, dtype or value range.
    """
    if isinstance(src, Image.Image):
        _check_size(src, "image")
        return to_rgb(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return decode_image_bytes(src)
    if isinstance(src, np.ndarray):
        return _from_array(src)
    if isinstance(src, (str, Path)):
        # A regular file of at most MAX_IMAGE_BYTES: a FIFO or a link to /dev/zero is refused, not read.
        data = read_regular_file(src, MAX_IMAGE_BYTES, "image file", ImageReadError)
        return _decode(data, str(src), f"cannot read image {src}")
    raise TypeError(f"cannot load an image from {type(src).__name__}; pass a path, bytes, PIL image or array")


def resize(img: Image.Image, image_size: tuple[int, int], interpolation: str = "bicubic") -> Image.Image:
    """Resize to ``image_size`` = (H, W) exactly, ignoring the aspect ratio (the official behaviour)."""
    h, w = image_size
    if img.size == (w, h):
        return img
    return img.resize((w, h), _RESAMPLE[interpolation])


def normalize_uint8(pixels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (..., 3, H, W) → float32 ``(x / 255 - mean) / std``, with the official rounding."""
    import torch

    x = pixels.float().div(255)
    shape = (3, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32).view(shape)
    return (x - mean_t) / std_t


def normalize_array(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 (..., 3, H, W) → float32 ``(x / 255 - mean) / std``: bit-equal to :func:`normalize_uint8`
    (every step is one correctly rounded float32 operation in both)."""
    x = pixels.astype(np.float32) / np.float32(255)
    mean_a = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std_a = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return (x - mean_a) / std_a


def _to_uint8_chw(img: Image.Image) -> np.ndarray:
    return np.asarray(to_rgb(img), dtype=np.uint8).transpose(2, 0, 1)


def preprocess_one_array(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """One RGB image → (3, H, W) float32 array, resized and normalised as ``cfg`` says."""
    return normalize_array(_to_uint8_chw(resize(img, cfg.image_size, cfg.interpolation)), cfg.mean, cfg.std)


def preprocess_array(images: Sequence[Image.Image], cfg: PreprocessConfig) -> np.ndarray:
    """RGB images → (N, 3, H, W) float32 array, each resized to ``cfg.image_size`` and normalised."""
    if len(images) == 0:
        h, w = cfg.image_size
        return np.empty((0, 3, h, w), dtype=np.float32)
    pixels = np.stack([_to_uint8_chw(resize(img, cfg.image_size, cfg.interpolation)) for img in images])
    return normalize_array(pixels, cfg.mean, cfg.std)


def preprocess_one(img: Image.Image, cfg: PreprocessConfig) -> Tensor:
    """One RGB image → (3, H, W) float32 tensor (:func:`preprocess_one_array`; for dataset workers)."""
    import torch

    return torch.from_numpy(preprocess_one_array(img, cfg))


def preprocess(images: Sequence[Image.Image], cfg: PreprocessConfig) -> Tensor:
    """RGB images → (N, 3, H, W) float32 tensor (:func:`preprocess_array`)."""
    import torch

    return torch.from_numpy(preprocess_array(images, cfg))


class Preprocess:
    """Picklable callable ``PIL image → (3, H, W) tensor``: the evaluation / validation transform."""

    def __init__(self, cfg: PreprocessConfig | None = None, **kwargs) -> None:
        self.cfg = cfg if cfg is not None else PreprocessConfig(**kwargs)

    def __call__(self, img: Image.Image) -> Tensor:
        return preprocess_one(img, self.cfg)

    def __repr__(self) -> str:
        c = self.cfg
        return f"Preprocess(image_size={c.image_size}, mean={c.mean}, std={c.std}, {c.interpolation})"
