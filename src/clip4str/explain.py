"""Attention maps: where the model looked in the image for each character it read.

For each read character, the map is the cross-attention of the final decoder (the cross-modal one, or the
visual one in visual-only decoding) over the image patches, in its last layer and final pass, averaged over
heads: (rows, cols) over the patch grid ``config.clip.vision.grid_hw``, which covers the whole image as the
preprocessing stretched it. Weights are renormalised over the patches (the class token and, for the
cross-modal decoder, the caption's text tokens take the rest; ``image_share`` says how much).

>>> reader = clip4str.load(path)
>>> ex = reader.explain("word.png")[0]
>>> ex.text, ex.attention.shape            # ('hello', (5, 14, 14))
>>> ex.figure.save("map.png")              # the image with one heat map per character

Recording is opt-in (:meth:`CLIP4STR.record_attention`): the plain read path computes no weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from clip4str.data.transforms import ImageSource, load_image, preprocess
from clip4str.decoding import DecodeOptions

if TYPE_CHECKING:
    from clip4str.api import Recognizer

__all__ = ["Explanation", "attention_figure", "decode", "explain", "explain_pixels"]


def decode(
    reader: Recognizer, pixels: Tensor, options: DecodeOptions | None = None, attention: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Decode (N, 3, H, W) preprocessed images → the final logits (N, k, C) float32 of
    :meth:`Recognizer.logits` with ``options`` (default: the reader's) and, when ``attention``, the final
    decoder's cross-attention averaged over heads (N, k, S) float32. Not thread-safe while recording."""
    options = options or reader.options
    if not attention:
        return reader.logits(pixels, options), None
    with reader.model.record_attention(options.visual_only) as records:
        logits = reader.logits(pixels, options)
    # The final pass: the last refinement or NAR pass (N, h, Q, S), else the AR steps (N, h, 1, S) each.
    final_pass = options.refine_iters > 0 or options.mode == "nar"
    weights = records[-1] if final_pass else torch.cat(records, dim=2)
    return logits, weights.mean(1)[:, : logits.shape[1]]


@dataclass
class Explanation:
    """One image's reading with, per read character, where the final decoder looked.

    ``attention`` (len(text), rows, cols) float32: each map sums to 1 over the patch grid (row-major over
    the stretched image). ``image_share`` (len(text),): the fraction of the raw attention that went to image
    patches. ``figure``: the image with one heat map per character (None unless asked for).
    """

    text: str
    confidence: float
    char_probs: list[float]
    attention: np.ndarray
    image_share: list[float]
    grid_hw: tuple[int, int]
    image: Image.Image | None = field(default=None, repr=False)
    figure: Image.Image | None = field(default=None, repr=False)

    def to_dict(self, decimals: int = 4) -> dict:
        """JSON-ready: text, confidence, char_probs, grid_hw, image_share and attention as nested lists."""
        return {
            "text": self.text,
            "confidence": self.confidence,
            "char_probs": self.char_probs,
            "grid_hw": list(self.grid_hw),
            "image_share": [round(v, decimals) for v in self.image_share],
            "attention": np.round(self.attention, decimals).tolist(),
        }


def explain_pixels(
    reader: Recognizer, pixels: Tensor, options: DecodeOptions | None = None
) -> list[Explanation]:
    """Explanations (no image, no figure) of (N, 3, H, W) preprocessed images, decoded with ``options``
    (default: the reader's)."""
    logits, weights = decode(reader, pixels, options, attention=True)
    assert weights is not None
    rows, cols = reader.config.clip.vision.grid_hw
    patches = rows * cols
    if weights.shape[-1] < 1 + patches:
        raise ValueError(
            f"decoder memory has {weights.shape[-1]} tokens, fewer than 1 + {rows}x{cols} patches"
        )
    image_part = weights[..., 1 : 1 + patches].cpu()  # (N, k, rows*cols): the class token comes first
    share = image_part.sum(-1)  # (N, k)
    maps = (image_part / share.clamp_min(1e-12)[..., None]).reshape(*image_part.shape[:2], rows, cols)
    out = []
    for i, pred in enumerate(reader.predictions_from_logits(logits)):
        n = len(pred.text)
        out.append(
            Explanation(
                text=pred.text,
                confidence=pred.confidence,
                char_probs=pred.char_probs,
                attention=maps[i, :n].numpy().astype(np.float32),
                image_share=[float(v) for v in share[i, :n]],
                grid_hw=(rows, cols),
            )
        )
    return out


def explain(
    reader: Recognizer,
    images: ImageSource | Sequence[ImageSource],
    figure: bool = True,
    options: DecodeOptions | None = None,
    batch_size: int | None = None,
) -> list[Explanation]:
    """Read images (paths, PIL images, bytes or arrays) and return an :class:`Explanation` each, with its
    figure drawn when ``figure``. Texts and confidences are those of :meth:`Recognizer.read`."""
    from clip4str.api import _as_list

    items = [load_image(im) for im in _as_list(images)]
    size = (options or reader.options).replace(batch_size=batch_size).batch_size
    out: list[Explanation] = []
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        pixels = preprocess(chunk, reader.config.preprocess)
        for img, ex in zip(chunk, explain_pixels(reader, pixels, options)):
            ex.image = img
            if figure:
                ex.figure = attention_figure(img, ex)
            out.append(ex)
    return out


# ---------------------------------------------------------------------------------------------- drawing
# A perceptual-ish blue → cyan → green → yellow → red ramp (anchor colours, linearly interpolated).
_RAMP = np.array(
    [
        [20, 20, 110],
        [30, 90, 220],
        [40, 190, 220],
        [90, 210, 90],
        [250, 220, 40],
        [240, 120, 20],
        [200, 20, 20],
    ],
    dtype=np.float32,
)


def colorize(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] → (H, W, 3) uint8 colours of the ramp."""
    x = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_RAMP) - 2)
    t = (x - lo)[..., None]
    return (_RAMP[lo] * (1 - t) + _RAMP[lo + 1] * t).round().astype(np.uint8)


def overlay(
    image: Image.Image, attention_map: np.ndarray, size: tuple[int, int], alpha: float = 0.55
) -> Image.Image:
    """The image resized to ``size`` (W, H) with a (rows, cols) map, scaled to its maximum, blended on top."""
    base = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    peak = float(attention_map.max())
    scaled = attention_map / peak if peak > 0 else attention_map
    heat = Image.fromarray(scaled.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    colours = Image.fromarray(colorize(np.asarray(heat)), mode="RGB")
    return Image.blend(base, colours, alpha)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def figure_tile_size(size: tuple[int, int], tile_width: int = 160) -> tuple[int, int]:
    """(width, height) of the tiles of :func:`attention_figure` for an image of ``size``: ``tile_width``
    wide, the image's aspect kept within 32 to ``2 * tile_width`` pixels high. An image already of this
    size draws the same figure, so a service may keep only that copy (``clip4str.serve``)."""
    w, h = size
    return tile_width, int(min(max(round(tile_width * h / max(w, 1)), 32), 2 * tile_width))


def attention_figure(
    image: Image.Image, explanation: Explanation, tile_width: int = 160, columns: int = 4
) -> Image.Image:
    """The paper-style figure: the input, then one tile per read character with its attention map over the
    image and its label ``'c' 0.98`` (the character and its probability)."""
    tile = figure_tile_size(image.size, tile_width)
    tile_h = tile[1]
    label_h, pad = 18, 6
    n = len(explanation.text)
    cols = max(1, min(columns, n))
    rows = (n + cols - 1) // cols
    header_h = tile_h + label_h
    width = pad + cols * (tile_width + pad)
    height = pad + header_h + pad + rows * (tile_h + label_h + pad)
    fig = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(fig)
    font = _font(13)
    fig.paste(image.convert("RGB").resize(tile, Image.Resampling.BICUBIC), (pad, pad))
    title = f"{explanation.text!r}  {explanation.confidence:.3f}" if n else "(nothing read)"
    draw.text((pad, pad + tile_h + 2), title, fill=(0, 0, 0), font=font)
    for i, char in enumerate(explanation.text):
        r, c = divmod(i, cols)
        x = pad + c * (tile_width + pad)
        y = pad + header_h + pad + r * (tile_h + label_h + pad)
        fig.paste(overlay(image, explanation.attention[i], tile), (x, y))
        prob = explanation.char_probs[i] if i < len(explanation.char_probs) else float("nan")
        draw.text((x, y + tile_h + 2), f"{i + 1}: {char!r} {prob:.2f}", fill=(0, 0, 0), font=font)
    return fig
