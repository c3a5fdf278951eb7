"""The HTTP service: a FastAPI app around one :class:`~clip4str.api.Recognizer`.

Routes: ``POST /v1/read``, ``POST /v1/explain``, ``GET /v1/models``, ``GET /health``, ``GET /openapi.json``,
and the web page at ``/`` (assets under ``/static``, all served from the package). Images are decoded and
preprocessed in a small thread pool, batched across requests by :class:`DynamicBatcher`, and run on one
model thread: the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import base64
import html
import io
import logging
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from clip4str.api import Recognizer
from clip4str.data.transforms import preprocess_one
from clip4str.decoding import DecodeOptions
from clip4str.explain import Explanation, attention_figure, explain_pixels, figure_tile_size
from clip4str.serve.batching import Closed, DynamicBatcher, QueueFull
from clip4str.serve.inputs import ApiError, Limits, charset_option, image_size, open_image

log = logging.getLogger("clip4str.serve")
STATIC = Path(__file__).parent / "static"
OPTIONS = ("decode", "refine_iters", "visual_only", "charset_test")


@dataclass
class ServeSettings:
    """Batching and limits of the service (see ``clip4str serve --help``)."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    preprocess_workers: int = 2
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.max_wait_ms < 0 or self.preprocess_workers < 1:
            raise ValueError(
                f"--max-batch ({self.max_batch}), --max-queue ({self.max_queue}) and --workers "
                f"({self.preprocess_workers}) must be >= 1, --max-wait-ms ({self.max_wait_ms}) >= 0"
            )
        if self.limits.max_images > self.max_queue:
            raise ValueError(
                f"--max-images ({self.limits.max_images}) is over --max-queue ({self.max_queue}): such a "
                "request could never be queued"
            )


# ------------------------------------------------------------------------------------------------ schema
class Reading(BaseModel):
    name: str = Field(description="the file name of the part, or 'body' for raw bytes")
    text: str
    confidence: float = Field(description="product of char_probs")
    char_probs: list[float] = Field(description="probability of each read character, then of the end token")


class ReadResponse(BaseModel):
    model: str
    results: list[Reading]


class Explained(Reading):
    grid_hw: list[int] = Field(description="(rows, cols) of the patch grid the maps cover")
    image_share: list[float] = Field(description="per character: the share of attention on image patches")
    attention: list[list[list[float]]] = Field(
        description="per character, (rows, cols) weights summing to 1: the final decoder's cross-attention "
        "over the image patches, averaged over heads"
    )
    figure_png: str | None = Field(None, description="base64 PNG of the figure, when figure=true")


class ExplainResponse(BaseModel):
    model: str
    results: list[Explained]


class ModelInfo(BaseModel):
    name: str
    device: str
    precision: str
    charset: str
    charset_test: str
    max_label_length: int
    image_hw: list[int]
    grid_hw: list[int]
    decode: str
    refine_iters: int
    visual_only: bool


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str
    model: str
    queued: int
    batches: int
    images: int


class ErrorBody(BaseModel):
    error: str = Field(description="a stable code, e.g. not_an_image, too_many_pixels, queue_full")
    detail: str = Field(description="what was wrong, naming the image or option")


_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "image files as multipart/form-data parts (any field name), or one image's raw bytes",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "malformed request or no image",
        413: "too many bytes, images or pixels",
        415: "unsupported Content-Type",
        422: "not an image, truncated or corrupt image, bad option",
        503: "queue full (see Retry-After) or shutting down",
    }.items()
}


# ------------------------------------------------------------------------------------------------ helpers
class BodyLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` (by Content-Length up front, else while reading)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self, size: str) -> ApiError:
        return ApiError(
            413,
            "too_many_bytes",
            f"request body of {size} bytes is over the limit of {self.max_bytes} (--max-bytes)",
        )

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            err = self._error(length.decode("latin-1"))
            await JSONResponse(err.body(), status_code=err.status)(scope, receive, send)
            return
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._error(f"more than {self.max_bytes}")
            return message

        await self.app(scope, limited, send)


class ShutdownAnswer:
    """ASGI middleware: a request the server cancels when ``--drain-timeout`` runs out answers 503
    ``shutting_down`` (not a 500 and an ASGI traceback), if its answer has not started."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if started:
                raise
            log.warning(
                "%s %s: cancelled by the shutdown (--drain-timeout); answered 503",
                scope["method"],
                scope["path"],
            )
            err = ApiError(
                503, "shutting_down", "the service shut down before this request finished (--drain-timeout)"
            )
            await JSONResponse(err.body(), status_code=err.status, headers={"Connection": "close"})(
                scope, receive, send
            )


def model_name(requested: str | Path | None, reader: Recognizer | None = None) -> str:
    """The name to show: the reader's own, the release name asked for, a path's file or folder name, or
    the package's default release."""
    own = getattr(reader, "name", None)
    if isinstance(own, str) and own:
        return own
    if requested:
        path = Path(requested)
        return path.name if path.exists() else str(requested)
    from clip4str.hub import DEFAULT_MODEL

    return DEFAULT_MODEL


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def create_app(reader: Recognizer, name: str, settings: ServeSettings | None = None) -> FastAPI:
    """The service for ``reader``, shown as ``name``."""
    settings = settings or ServeSettings()
    limits = settings.limits
    batcher = DynamicBatcher(
        lambda key, payloads: _run_batch(reader, key, payloads),
        max_batch=settings.max_batch,
        max_wait=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
    )
    pool = ThreadPoolExecutor(
        max_workers=max(1, settings.preprocess_workers), thread_name_prefix="clip4str-io"
    )
    cfg = reader.config

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        log.info(
            "serving %s on %s (max batch %d, max wait %.1f ms)",
            name,
            reader.device,
            settings.max_batch,
            settings.max_wait_ms,
        )
        yield
        await batcher.close()
        pool.shutdown(wait=False)

    app = FastAPI(
        title="clip4str",
        summary="CLIP4STR scene text recognition: read word images, see where the model looked.",
        version=_version(),
        docs_url=None,  # the interactive docs load scripts from a CDN; the schema is at /openapi.json
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.reader = reader
    app.add_middleware(BodyLimit, max_bytes=limits.max_request_bytes)
    app.add_middleware(ShutdownAnswer)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_option(request: Request, err: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in err.errors()]
        return JSONResponse({"error": "bad_option", "detail": "; ".join(parts)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, f"http_{err.status_code}")
        return JSONResponse(
            {"error": code, "detail": str(err.detail)}, status_code=err.status_code, headers=err.headers
        )

    async def images_of(request: Request) -> list[tuple[str, bytes]]:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        items: list[tuple[str, bytes]] = []
        if media == "multipart/form-data":
            try:
                form = await request.form(max_files=limits.max_images, max_fields=16, max_part_size=64 * 1024)
            except ClientDisconnect as err:
                raise _gone() from err
            except StarletteHTTPException as err:
                if "too many files" in str(err.detail).lower():
                    raise ApiError(
                        413,
                        "too_many_images",
                        f"more than {limits.max_images} images in one request (--max-images)",
                    ) from err
                raise ApiError(
                    400, "bad_multipart", f"cannot parse the multipart body: {err.detail}"
                ) from err
            try:
                for i, (key, value) in enumerate(form.multi_items()):
                    if not isinstance(value, UploadFile):
                        raise ApiError(
                            422,
                            "bad_option",
                            f"form field {key!r} is not a file: send images as file parts and options in the "
                            f"query string ({', '.join(OPTIONS)})",
                        )
                    items.append((value.filename or f"{key}[{i}]", await value.read()))
            finally:
                await form.close()
        elif media.startswith("image/") or media == "application/octet-stream":
            try:
                items.append(("body", await request.body()))
            except ClientDisconnect as err:
                raise _gone() from err
        else:
            raise ApiError(
                415,
                "unsupported_media_type",
                f"Content-Type {media or '(none)'!r} is not accepted: send multipart/form-data with image files, "
                "or one image's bytes as image/* or application/octet-stream",
            )
        if not items:
            raise ApiError(400, "no_images", "the request holds no image")
        if len(items) > limits.max_images:
            raise ApiError(
                413,
                "too_many_images",
                f"{len(items)} images, over the limit of {limits.max_images} (--max-images)",
            )
        return items

    def label(index: int, filename: str) -> str:
        return f"image {index + 1} ({filename})"

    def prepare(index: int, filename: str, data: bytes, keep: bool) -> tuple[torch.Tensor, Any]:
        """(runs in the decoding pool) bytes → preprocessed (3, H, W) tensor, and, if ``keep``, the image
        for its figure: only the figure's tile (160 px wide, at most 320 high; the same figure), the full
        image is dropped here."""
        image = open_image(data, label(index, filename), limits.max_pixels)
        pixels = preprocess_one(image, cfg.preprocess)
        if not keep:
            return pixels, None
        tile = figure_tile_size(image.size)
        return pixels, image if image.size == tile else image.resize(tile, Image.Resampling.BICUBIC)

    def options_of(
        request: Request,
        mode: str | None,
        refine_iters: int | None,
        visual_only: bool | None,
        charset: str | None,
        extra: tuple[str, ...] = (),
    ) -> DecodeOptions:
        unknown = sorted(set(request.query_params) - set(OPTIONS) - set(extra))
        if unknown:
            raise ApiError(
                422,
                "bad_option",
                f"unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS + extra)}",
            )
        charset_test = None if charset is None else charset_option(charset, limits.max_charset)
        try:
            return reader.options.replace(
                mode=mode, refine_iters=refine_iters, visual_only=visual_only, charset_test=charset_test
            )
        except ValueError as err:
            raise ApiError(422, "bad_option", str(err)) from err

    async def run(
        request: Request, options: DecodeOptions, explain: bool, keep: bool = False
    ) -> tuple[list[str], list[Any], list[Any]]:
        """Images of the request → (names, predictions or explanations, the images for figures if ``keep``).

        Memory stays bounded: every header is checked (pixels per image and per request) before any image
        is decoded; images are decoded only once their places in the queue are reserved, by the decoding
        pool's threads (one image each at a time), and only their preprocessed tensors (and small figure
        copies) are kept.
        """
        if batcher.closing:
            raise ApiError(503, "shutting_down", "the service is shutting down")
        items = await images_of(request)
        names = [n for n, _ in items]
        loop = asyncio.get_running_loop()
        sizes = await asyncio.gather(
            *(
                loop.run_in_executor(pool, image_size, data, label(i, n), limits.max_pixels)
                for i, (n, data) in enumerate(items)
            )
        )
        total = sum(w * h for w, h in sizes)
        if total > limits.max_request_pixels:
            raise ApiError(
                413,
                "too_many_pixels",
                f"the request's {len(items)} images hold {total} pixels together, over the limit of "
                f"{limits.max_request_pixels} (--max-request-pixels)",
            )
        try:
            reservation = batcher.reserve(len(items))
            try:
                prepared = await asyncio.gather(
                    *(
                        loop.run_in_executor(pool, prepare, i, n, data, keep)
                        for i, (n, data) in enumerate(items)
                    )
                )
                del items
                results = await batcher.submit(
                    (options, explain), [pixels for pixels, _ in prepared], reservation
                )
                kept = [image for _, image in prepared]
                del prepared  # the tensors go now; only the figure tiles (if any) wait for the answer
            finally:
                reservation.release()
        except QueueFull as err:
            raise ApiError(
                503, "queue_full", str(err), headers={"Retry-After": str(err.retry_after)}
            ) from err
        except Closed as err:
            raise ApiError(503, "shutting_down", str(err)) from err
        return names, results, kept

    decode_q = Query(None, description="'ar' (autoregressive) or 'nar'; default: the model's")
    refine_q = Query(None, ge=0, le=limits.max_refine_iters, description="cloze refinement iterations")
    visual_q = Query(None, description="read with the visual branch alone")
    charset_q = Query(
        None,
        description="restrict the captions to a charset: a preset (36, 62, 94, vietnamese) or characters",
    )

    @app.post("/v1/read", response_model=ReadResponse, responses=_ERRORS, openapi_extra=_IMAGE_BODY)
    async def read(
        request: Request,
        decode: Literal["ar", "nar"] | None = decode_q,
        refine_iters: int | None = refine_q,
        visual_only: bool | None = visual_q,
        charset_test: str | None = charset_q,
    ) -> ReadResponse:
        """Read the text of one or many word images: per image its text, confidence and per-character
        probabilities (those of ``clip4str read``). Images of concurrent requests share forward passes."""
        options = options_of(request, decode, refine_iters, visual_only, charset_test)
        names, preds, _ = await run(request, options, explain=False)
        return ReadResponse(
            model=name,
            results=[
                Reading(name=n, text=p.text, confidence=p.confidence, char_probs=p.char_probs)
                for n, p in zip(names, preds)
            ],
        )

    @app.post(
        "/v1/explain",
        response_model=ExplainResponse,
        responses={**_ERRORS, 200: {"content": {"image/png": {}}, "description": "JSON, or a PNG figure"}},
        openapi_extra=_IMAGE_BODY,
    )
    async def explain(
        request: Request,
        decode: Literal["ar", "nar"] | None = decode_q,
        refine_iters: int | None = refine_q,
        visual_only: bool | None = visual_q,
        charset_test: str | None = charset_q,
        format: Literal["json", "png"] = Query("json", description="json, or png: the figure of one image"),
        figure: bool = Query(False, description="with format=json: add each figure as base64 PNG"),
    ) -> Any:
        """Read images and say where the model looked: per read character, the final decoder's
        cross-attention over the image patches (averaged over heads), as arrays and/or a figure."""
        if not hasattr(reader, "explain"):  # ONNX Runtime (serve --runtime onnx) records no attention
            raise ApiError(
                501, "not_supported", "explain needs the PyTorch runtime; this service reads with ONNX"
            )
        options = options_of(
            request, decode, refine_iters, visual_only, charset_test, extra=("format", "figure")
        )
        names, explained, images = await run(request, options, explain=True, keep=format == "png" or figure)
        loop = asyncio.get_running_loop()
        if format == "png":
            if len(explained) != 1:
                raise ApiError(422, "bad_option", f"format=png draws one image; got {len(explained)}")
            fig = await loop.run_in_executor(pool, lambda: _png(attention_figure(images[0], explained[0])))
            return Response(fig, media_type="image/png")
        figures: list[str | None] = [None] * len(explained)
        if figure:
            pngs = await asyncio.gather(
                *(
                    loop.run_in_executor(pool, lambda i=i, e=e: _png(attention_figure(i, e)))
                    for i, e in zip(images, explained)
                )
            )
            figures = [base64.b64encode(b).decode("ascii") for b in pngs]
        return ExplainResponse(
            model=name,
            results=[_explained(n, e, f) for n, e, f in zip(names, explained, figures)],
        )

    @app.get("/v1/models", response_model=ModelsResponse)
    async def models() -> ModelsResponse:
        """The model this service runs and its default decoding options."""
        return ModelsResponse(
            models=[
                ModelInfo(
                    name=name,
                    device=str(reader.device),
                    precision=reader.options.precision,
                    charset=cfg.charset_train,
                    charset_test=reader.test_charset,
                    max_label_length=cfg.max_label_length,
                    image_hw=list(cfg.preprocess.image_size),
                    grid_hw=list(cfg.clip.vision.grid_hw),
                    decode=reader.options.mode,
                    refine_iters=reader.options.refine_iters,
                    visual_only=reader.options.visual_only,
                )
            ]
        )

    @app.get("/health", response_model=Health)
    async def health() -> Any:
        """200 while serving; 503 once shutting down."""
        body = Health(
            status="shutting_down" if batcher.closing else "ok",
            model=name,
            queued=batcher.queued,
            batches=batcher.stats.batches,
            images=batcher.stats.items,
        )
        return JSONResponse(body.model_dump(), status_code=503 if batcher.closing else 200)

    page = (STATIC / "index.html").read_text(encoding="utf-8").replace("{{MODEL}}", html.escape(name))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app


def _gone() -> ApiError:
    """The client went away (or was timed out, --body-timeout) before its body was complete."""
    return ApiError(408, "incomplete_body", "the request body did not arrive in full (--body-timeout)")


def _explained(name: str, ex: Explanation, figure: str | None) -> Explained:
    d = ex.to_dict()
    return Explained(name=name, figure_png=figure, **d)


def _run_batch(reader: Recognizer, key: Hashable, payloads: list[torch.Tensor]) -> list[Any]:
    """The model thread's work: one forward pass over a batch sharing (options, explain)."""
    options, explain = key  # type: ignore[misc]
    pixels = torch.stack(payloads)
    if explain:
        return explain_pixels(reader, pixels, options)
    return reader.predictions_from_logits(reader.logits(pixels, options))


def _version() -> str:
    from clip4str import __version__

    return __version__
