"""Request inputs of the service: limits, the JSON error, image decoding that refuses bombs and truncation,
and the per-request decoding options."""

from __future__ import annotations

import io
import unicodedata
import warnings
from dataclasses import asdict, dataclass

from PIL import Image, UnidentifiedImageError

from clip4str.charset import PRESETS


@dataclass
class Limits:
    """What one request may hold. Defaults are safe for word crops on a shared machine.

    * ``max_request_bytes``: the whole body (multipart or raw), checked on the Content-Length and while
      reading;
    * ``max_images``: image parts of one request;
    * ``max_pixels``: width x height of one image, checked from its header before decoding (bombs);
    * ``max_refine_iters``: the largest ``refine_iters`` a request may ask for;
    * ``max_charset``: characters of a request's ``charset_test``.
    """

    max_request_bytes: int = 8 * 2**20
    max_images: int = 64
    max_pixels: int = 4096 * 4096
    max_refine_iters: int = 8
    max_charset: int = 4096

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            low = 0 if name == "max_refine_iters" else 1
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")


class ApiError(Exception):
    """A request the service refuses: HTTP ``status``, a stable ``code`` and a message naming the problem."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers

    def body(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}


def open_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Encoded bytes → RGB image, or :class:`ApiError` saying why not: empty, not an image, more than
    ``max_pixels`` (checked from the header, before any pixel is decoded), truncated or corrupt."""
    if not data:
        raise ApiError(422, "not_an_image", f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ApiError(413, "too_many_pixels", f"{name}: {err}") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ApiError(
            422, "not_an_image", f"{name}: not an image (no known image format in {len(data)} bytes)"
        ) from err
    width, height = img.size
    if width * height > max_pixels:
        raise ApiError(
            413,
            "too_many_pixels",
            f"{name}: {width}x{height} = {width * height} pixels, over the limit of {max_pixels} (--max-pixels)",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
        return img.convert("RGB")
    except OSError as err:
        if "truncated" in str(err):
            raise ApiError(422, "truncated_image", f"{name}: the image data ends early ({err})") from err
        raise ApiError(422, "corrupt_image", f"{name}: cannot decode the image data ({err})") from err
    except (SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise ApiError(422, "corrupt_image", f"{name}: cannot decode the image data ({err})") from err


def charset_option(value: str, limit: int) -> str:
    """A request's ``charset_test``: a preset name (36, 62, 94, vietnamese) or the characters themselves
    (never a file: requests do not name server paths)."""
    if value in PRESETS:
        return PRESETS[value]
    text = unicodedata.normalize("NFC", value)
    if not text:
        raise ApiError(422, "bad_option", "charset_test: empty")
    if len(text) > limit:
        raise ApiError(422, "bad_option", f"charset_test: {len(text)} characters, over the limit of {limit}")
    if len(set(text)) != len(text):
        raise ApiError(422, "bad_option", "charset_test: repeats a character")
    return text
