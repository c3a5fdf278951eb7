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
    * ``max_request_pixels``: the pixels of all images of one request together, from their headers,
      before any is decoded;
    * ``max_refine_iters``: the largest ``refine_iters`` a request may ask for;
    * ``max_charset``: characters of a request's ``charset_test``.
    """

    max_request_bytes: int = 8 * 2**20
    max_images: int = 64
    max_pixels: int = 4096 * 4096
    max_request_pixels: int = 64 * 2**20
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


def image_size(data: bytes, name: str, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the header alone, or :class:`ApiError`: empty, not an image, or more than
    ``max_pixels`` (a decompression bomb is refused before any pixel is decoded)."""
    if not data:
        raise ApiError(422, "not_an_image", f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except Image.DecompressionBombError as err:
        raise ApiError(413, "too_many_pixels", f"{name}: {err}") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ApiError(
            422, "not_an_image", f"{name}: not an image (no known image format in {len(data)} bytes)"
        ) from err
    if width * height > max_pixels:
        raise ApiError(
            413,
            "too_many_pixels",
            f"{name}: {width}x{height} = {width * height} pixels, over the limit of {max_pixels} (--max-pixels)",
        )
    return width, height


def open_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Encoded bytes → RGB image through the package's one decoder (:func:`clip4str.data.transforms.
    decode_image_bytes`: 16-bit grayscale scaled, the process-wide pixel budget), so that the service reads
    what ``clip4str read`` reads; or :class:`ApiError` saying why not (see :func:`image_size`), truncated
    or corrupt."""
    from clip4str.data.transforms import decode_image_bytes
    from clip4str.errors import ImageReadError

    image_size(data, name, max_pixels)
    try:
        return decode_image_bytes(data, name)
    except ImageReadError as err:
        text = str(err)
        if "truncated" in text:
            raise ApiError(422, "truncated_image", f"{name}: the image data ends early ({text})") from err
        if "not an image" in text:
            raise ApiError(422, "not_an_image", text) from err
        raise ApiError(422, "corrupt_image", f"{name}: cannot decode the image data ({text})") from err


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
