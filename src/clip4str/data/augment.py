"""Training augmentation equivalent to the official CLIP4STR/PARSeq ``rand_augment_transform()``.

Written here with PIL and numpy (no timm, imgaug, torchvision or kornia). The official transform is timm's
RandAugment over the "increasing" op set with PARSeq's overrides:

* magnitude 5 of 10, 3 ops per image drawn **without replacement** (uniform weights), each applied with
  probability 0.5; geometric ops fill with grey (128, 128, 128) and resample bilinear or bicubic at random;
* Rotate ±15° with ``expand=True`` (``rotate_deg`` 30 at half magnitude); ShearX ±0.45, ShearY ±0.1
  (affine shear factors); TranslateXRel ±5 % of the width, TranslateYRel ±15 % of the height;
* AutoContrast, Equalize, Invert; PosterizeIncreasing keeps 2 bits; SolarizeIncreasing inverts pixels
  >= 128; SolarizeAdd adds 55 to pixels < 128; Color/Contrast/Brightness factor 1 ± 0.45;
* GaussianBlur radius ``round(min(2, max(1, 0.02·max_side)))``; PoissonNoise: a per-pixel (all channels
  alike) value drawn from Poisson(lam) with a random sign, lam = ``round(min(20, max(1, 0.2·max_side))) | 1``;
* SharpnessIncreasing is removed (it fights the blur ops). MotionBlur (kernel
  ``round(min(10, max(3, 0.08·max_side))) | 1``, random angle and direction) and GaussianNoise (sigma
  ``round(min(12.75, max(1, 0.25·max_side))) | 1``) are defined by the official code but disabled there;
  they are available here with ``ops='all'``.

Randomness comes from a numpy ``Generator``: pass ``rng`` explicitly, or give the transform a ``seed``.
Inside a DataLoader worker the generator is re-seeded from the worker's torch seed (plus ``seed``), so
workers differ from each other and from epoch to epoch, reproducibly once torch is seeded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torch import Tensor

from clip4str.config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PreprocessConfig
from clip4str.data.transforms import preprocess_one

FILL = (128, 128, 128)
_RESAMPLES = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)
LEVEL_DENOM = 10.0

# PARSeq's hparams for the geometric ops (effective values are half of these at magnitude 5).
GEOMETRY = {
    "rotate_deg": 30.0,
    "shear_x_pct": 0.9,
    "shear_y_pct": 0.2,
    "translate_x_pct": 0.10,
    "translate_y_pct": 0.30,
}


# --------------------------------------------------------------------------------------------------
# Operations: each takes an RGB PIL image and explicit parameters, and returns a new RGB image.


def auto_contrast(img: Image.Image) -> Image.Image:
    """Stretch each channel so its darkest pixel becomes 0 and its brightest 255."""
    return ImageOps.autocontrast(img)


def equalize(img: Image.Image) -> Image.Image:
    """Histogram-equalise each channel."""
    return ImageOps.equalize(img)


def invert(img: Image.Image) -> Image.Image:
    """``255 - x``."""
    return ImageOps.invert(img)


def rotate(
    img: Image.Image, degrees: float, resample: int = Image.Resampling.BILINEAR, fill=FILL
) -> Image.Image:
    """Rotate counter-clockwise about the centre, enlarging the canvas so no corner is cut off."""
    return img.rotate(degrees, resample=resample, expand=True, fillcolor=fill)


def posterize(img: Image.Image, bits: int) -> Image.Image:
    """Keep the ``bits`` most significant bits of every channel value."""
    return img if bits >= 8 else ImageOps.posterize(img, max(0, int(bits)))


def solarize(img: Image.Image, threshold: int) -> Image.Image:
    """Invert every channel value >= ``threshold``."""
    return ImageOps.solarize(img, threshold)


def solarize_add(img: Image.Image, add: int, threshold: int = 128) -> Image.Image:
    """Add ``add`` (saturating at 255) to every channel value below ``threshold``."""
    lut = [min(255, i + add) if i < threshold else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


def color(img: Image.Image, factor: float) -> Image.Image:
    """Saturation: 0 gives grey, 1 the original, >1 more saturated."""
    return ImageEnhance.Color(img).enhance(factor)


def contrast(img: Image.Image, factor: float) -> Image.Image:
    """Blend with the mean grey level: 0 gives flat grey, 1 the original."""
    return ImageEnhance.Contrast(img).enhance(factor)


def brightness(img: Image.Image, factor: float) -> Image.Image:
    """Scale intensities by ``factor`` (0 gives black)."""
    return ImageEnhance.Brightness(img).enhance(factor)


def sharpness(img: Image.Image, factor: float) -> Image.Image:
    """Blend with a smoothed copy: 0 blurs, 1 is the original, 2 sharpens."""
    return ImageEnhance.Sharpness(img).enhance(factor)


def _affine(img: Image.Image, coeffs: tuple[float, ...], resample: int, fill) -> Image.Image:
    # PIL maps each output pixel (x, y) to the input pixel (a x + b y + c, d x + e y + f).
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, resample=resample, fillcolor=fill)


def shear_x(
    img: Image.Image, factor: float, resample: int = Image.Resampling.BILINEAR, fill=FILL
) -> Image.Image:
    """Horizontal shear: output (x, y) samples input (x + factor·y, y)."""
    return _affine(img, (1, factor, 0, 0, 1, 0), resample, fill)


def shear_y(
    img: Image.Image, factor: float, resample: int = Image.Resampling.BILINEAR, fill=FILL
) -> Image.Image:
    """Vertical shear: output (x, y) samples input (x, y + factor·x)."""
    return _affine(img, (1, 0, 0, factor, 1, 0), resample, fill)


def translate_x(
    img: Image.Image, pixels: float, resample: int = Image.Resampling.BILINEAR, fill=FILL
) -> Image.Image:
    """Shift the content left by ``pixels`` (right when negative)."""
    return _affine(img, (1, 0, pixels, 0, 1, 0), resample, fill)


def translate_y(
    img: Image.Image, pixels: float, resample: int = Image.Resampling.BILINEAR, fill=FILL
) -> Image.Image:
    """Shift the content up by ``pixels`` (down when negative)."""
    return _affine(img, (1, 0, 0, 0, 1, pixels), resample, fill)


def gaussian_blur(img: Image.Image, radius: float) -> Image.Image:
    """Gaussian blur with standard deviation ``radius`` pixels."""
    return img.filter(ImageFilter.GaussianBlur(radius))


def motion_kernel(k: int, angle: float, direction: float) -> np.ndarray:
    """A k×k line kernel through the centre at ``angle`` degrees, summing to 1.

    ``direction`` in [-1, 1] weights one end of the line more (1 + direction·t for t in [-1, 1]), giving
    the asymmetric streak of a moving camera; 0 is a uniform line.
    """
    kernel = np.zeros((k, k), dtype=np.float64)
    c = (k - 1) / 2.0
    dx, dy = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    for t in np.linspace(-1.0, 1.0, 4 * k + 1):
        x, y = c + t * c * dx, c + t * c * dy
        kernel[int(round(y)), int(round(x))] += max(0.0, 1.0 + direction * t)
    if kernel.sum() <= 0:
        kernel[int(c), int(c)] = 1.0
    return kernel / kernel.sum()


def convolve(img: Image.Image, kernel: np.ndarray) -> Image.Image:
    """Correlate each channel with a small odd-sized kernel (edge pixels replicated)."""
    a = np.asarray(img, dtype=np.float32)
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    padded = np.pad(a, ((ph, ph), (pw, pw), (0, 0)), mode="edge")
    out = np.zeros_like(a)
    h, w = a.shape[:2]
    for i, j in zip(*np.nonzero(kernel)):
        out += kernel[i, j] * padded[i : i + h, j : j + w]
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def motion_blur(img: Image.Image, k: int, angle: float = 0.0, direction: float = 0.0) -> Image.Image:
    """Blur along a line of ``k`` pixels at ``angle`` degrees (see :func:`motion_kernel`)."""
    return convolve(img, motion_kernel(k, angle, direction)) if k > 1 else img


def add_noise(img: Image.Image, noise: np.ndarray) -> Image.Image:
    """Add an HxW (same for every channel) or HxWx3 noise array, rounding and clipping to 0..255."""
    a = np.asarray(img, dtype=np.float32)
    if noise.ndim == 2:
        noise = noise[:, :, None]
    return Image.fromarray(np.clip(np.rint(a + noise), 0, 255).astype(np.uint8))


def gaussian_noise(img: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    """Add N(0, sigma²) noise per pixel, the same value on every channel (imgaug's per_channel=False)."""
    return add_noise(img, rng.normal(0.0, sigma, size=(img.height, img.width)))


def poisson_noise(img: Image.Image, lam: float, rng: np.random.Generator) -> Image.Image:
    """Add ±Poisson(lam) per pixel (random sign), the same value on every channel."""
    size = (img.height, img.width)
    noise = rng.poisson(lam, size=size) * rng.choice(np.array([-1.0, 1.0]), size=size)
    return add_noise(img, noise)


# --------------------------------------------------------------------------------------------------
# RandAugment


def _randomly_negate(v: float, rng: np.random.Generator) -> float:
    return -v if rng.random() > 0.5 else v


def _dim_param(level: float, img: Image.Image, max_dim_factor: float, min_level: float = 1) -> int:
    # PARSeq caps blur/noise strength for small images: at most max_dim_factor × the longer side.
    return round(min(level, max(min_level, max_dim_factor * max(img.size))))


def _enhance_factor(m: float, rng: np.random.Generator) -> float:
    return max(0.1, 1.0 + _randomly_negate(m / LEVEL_DENOM * 0.9, rng))


def _resample(rng: np.random.Generator) -> int:
    return _RESAMPLES[int(rng.integers(len(_RESAMPLES)))]


def _geometric(fn: Callable[..., Image.Image], key: str, scale_by: str | None = None):
    def op(img: Image.Image, m: float, rng: np.random.Generator) -> Image.Image:
        v = _randomly_negate(m / LEVEL_DENOM * GEOMETRY[key], rng)
        if scale_by == "w":
            v *= img.width
        elif scale_by == "h":
            v *= img.height
        return fn(img, v, resample=_resample(rng))

    return op


# name -> (img, magnitude, rng) -> img, with the official level-to-argument mappings.
OPS: dict[str, Callable[[Image.Image, float, np.random.Generator], Image.Image]] = {
    "AutoContrast": lambda img, m, rng: auto_contrast(img),
    "Equalize": lambda img, m, rng: equalize(img),
    "Invert": lambda img, m, rng: invert(img),
    "Rotate": _geometric(rotate, "rotate_deg"),
    "PosterizeIncreasing": lambda img, m, rng: posterize(img, 4 - int(m / LEVEL_DENOM * 4)),
    "SolarizeIncreasing": lambda img, m, rng: solarize(img, 256 - int(m / LEVEL_DENOM * 256)),
    "SolarizeAdd": lambda img, m, rng: solarize_add(img, int(m / LEVEL_DENOM * 110)),
    "ColorIncreasing": lambda img, m, rng: color(img, _enhance_factor(m, rng)),
    "ContrastIncreasing": lambda img, m, rng: contrast(img, _enhance_factor(m, rng)),
    "BrightnessIncreasing": lambda img, m, rng: brightness(img, _enhance_factor(m, rng)),
    "SharpnessIncreasing": lambda img, m, rng: sharpness(img, _enhance_factor(m, rng)),
    "ShearX": _geometric(shear_x, "shear_x_pct"),
    "ShearY": _geometric(shear_y, "shear_y_pct"),
    "TranslateXRel": _geometric(translate_x, "translate_x_pct", "w"),
    "TranslateYRel": _geometric(translate_y, "translate_y_pct", "h"),
    "GaussianBlur": lambda img, m, rng: gaussian_blur(img, _dim_param(4 * m / LEVEL_DENOM, img, 0.02)),
    "MotionBlur": lambda img, m, rng: motion_blur(
        img, _dim_param(20 * m / LEVEL_DENOM, img, 0.08, 3) | 1, rng.uniform(0, 360), rng.uniform(-1, 1)
    ),
    "GaussianNoise": lambda img, m, rng: gaussian_noise(
        img, _dim_param(0.1 * 255 * m / LEVEL_DENOM, img, 0.25) | 1, rng
    ),
    "PoissonNoise": lambda img, m, rng: poisson_noise(
        img, _dim_param(40 * m / LEVEL_DENOM, img, 0.2) | 1, rng
    ),
}

OFFICIAL_OPS: tuple[str, ...] = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
    "GaussianBlur",
    "PoissonNoise",
)
ALL_OPS: tuple[str, ...] = (*OFFICIAL_OPS, "MotionBlur", "GaussianNoise")


def resolve_ops(ops: str | Sequence[str]) -> tuple[str, ...]:
    """'official' (default, the released models' list), 'all' (adds MotionBlur and GaussianNoise) or names."""
    if isinstance(ops, str):
        if ops == "official":
            return OFFICIAL_OPS
        if ops == "all":
            return ALL_OPS
        ops = [o.strip() for o in ops.split(",") if o.strip()]
    unknown = [o for o in ops if o not in OPS]
    if unknown or not ops:
        raise ValueError(
            f"unknown augmentation op(s) {unknown or ops}; valid: {', '.join(OPS)}, 'official', 'all'"
        )
    return tuple(ops)


class _SeededRandom:
    """Owns a numpy Generator that is re-seeded in each DataLoader worker (see module docstring)."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self._owner: tuple[int, int] | None = None

    def rng(self) -> np.random.Generator:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        owner = (os.getpid(), info.id if info is not None else -1)
        if self._rng is None or self._owner != owner:
            if info is not None:
                entropy = [info.seed % (1 << 63)] + ([self.seed] if self.seed is not None else [])
                self._rng = np.random.default_rng(entropy)
            else:
                self._rng = np.random.default_rng(self.seed)
            self._owner = owner
        return self._rng


@dataclass
class AppliedOp:
    name: str
    applied: bool


class RandAugment(_SeededRandom):
    """Pick ``num_layers`` distinct ops uniformly; apply each with probability ``prob`` at ``magnitude``.

    ``__call__(img, rng=None)`` uses ``rng`` when given (fully reproducible), else the transform's own.
    ``last_ops`` records what the last call picked and applied (for tests and visual checks).
    """

    def __init__(
        self,
        magnitude: float = 5,
        num_layers: int = 3,
        ops: str | Sequence[str] = "official",
        prob: float = 0.5,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        self.magnitude = float(magnitude)
        self.ops = resolve_ops(ops)
        if not 0 < num_layers <= len(self.ops):
            raise ValueError(f"num_layers must be in 1..{len(self.ops)} (number of ops), got {num_layers}")
        self.num_layers = num_layers
        self.prob = prob
        self.last_ops: list[AppliedOp] = []

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> Image.Image:
        rng = rng if rng is not None else self.rng()
        img = img if img.mode == "RGB" else img.convert("RGB")
        chosen = rng.choice(len(self.ops), size=self.num_layers, replace=False)
        self.last_ops = []
        m = max(0.0, min(self.magnitude, LEVEL_DENOM))
        for idx in chosen:
            name = self.ops[int(idx)]
            applied = self.prob >= 1.0 or rng.random() <= self.prob
            if applied:
                img = OPS[name](img, m, rng)
            self.last_ops.append(AppliedOp(name, applied))
        return img

    def __repr__(self) -> str:
        return f"RandAugment(magnitude={self.magnitude}, num_layers={self.num_layers}, ops={list(self.ops)})"


class TrainTransform:
    """``PIL image → (3, H, W)`` float32: RandAugment, bicubic resize to ``image_size``, mean/std normalise.

    The resize and normalisation are :func:`clip4str.data.transforms.preprocess_one`, the code used at
    inference. ``augment=False`` gives the validation transform with the same statistics.
    """

    def __init__(
        self,
        image_size: int | Sequence[int] = (224, 224),
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        augment: bool = True,
        magnitude: float = 5,
        num_layers: int = 3,
        ops: str | Sequence[str] = "official",
        seed: int | None = None,
    ) -> None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.cfg = PreprocessConfig(image_size=size, mean=tuple(mean), std=tuple(std))  # type: ignore[arg-type]
        self.augment = RandAugment(magnitude, num_layers, ops, seed=seed) if augment else None

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> Tensor:
        if self.augment is not None:
            img = self.augment(img, rng)
        return preprocess_one(img, self.cfg)

    def __repr__(self) -> str:
        return f"TrainTransform({self.cfg}, augment={self.augment})"


def build_train_transform(
    image_size: int | Sequence[int] = (224, 224),
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    seed: int | None = None,
    magnitude: float = 5,
    num_layers: int = 3,
    ops: str | Sequence[str] = "official",
) -> TrainTransform:
    """The official training transform (RandAugment m=5, n=3, then resize and CLIP normalisation)."""
    return TrainTransform(image_size, mean, std, True, magnitude, num_layers, ops, seed)
