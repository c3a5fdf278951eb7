"""``clip4str serve``: the HTTP service and web page (needs the ``serve`` extra)."""

from __future__ import annotations

import argparse
import signal
import sys


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from clip4str.serve import Limits, ServeSettings, create_app, model_name
    except ImportError as err:
        print(
            f"clip4str serve: {err.name or err} is missing; install the serve extra: pip install 'clip4str[serve]'",
            file=sys.stderr,
        )
        return 1
    from clip4str.cli.read import load_recognizer

    # Values are checked here, before the model loads (ValueError: one line naming the option).
    limits = Limits(
        max_request_bytes=args.max_bytes,
        max_images=args.max_images,
        max_pixels=args.max_pixels,
        max_request_pixels=args.max_request_pixels,
        max_refine_iters=args.max_refine_iters,
    )
    settings = ServeSettings(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        preprocess_workers=args.workers,
        limits=limits,
    )
    args.batch_size = args.max_batch
    from clip4str.serve.server import timed_protocol

    protocol = timed_protocol(args.header_timeout, args.body_timeout)
    _check_address(args.host, args.port)  # a bad or busy port fails before the model loads
    reader = load_recognizer(args)
    app = create_app(reader, model_name(args.model, reader), settings)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        root_path=args.root_path,
        proxy_headers=bool(args.forwarded_allow_ips),
        forwarded_allow_ips=args.forwarded_allow_ips,
        limit_concurrency=args.max_connections,
        timeout_graceful_shutdown=args.drain_timeout,
        http=protocol,
    )
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handler it found: make that a
    # no-op so a drained shutdown exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.Server(config).run()
    return 0


def _check_address(host: str, port: int) -> None:
    """``--host``/``--port`` must name an address this machine can listen on (ValueError/OSError otherwise)."""
    import socket

    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port}: a port is 0 to 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ValueError(f"--host {host}: not an address of this machine ({err.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as err:
            raise OSError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="HTTP service and web page: read images, show attention maps",
        description="Serve a model over HTTP: POST /v1/read, POST /v1/explain, GET /v1/models, GET /health, "
        "GET /openapi.json, and a web page at /. Requests are batched together (--max-batch, --max-wait-ms); "
        "a full queue answers 503 with Retry-After. SIGTERM drains and exits 0. See docs/serving.md.",
    )
    from clip4str.cli.read import add_decoding_arguments, add_runtime_argument

    add_decoding_arguments(parser, batch_size=False)
    add_runtime_argument(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument(
        "--charset-test", default=None, help="default charset_test: a preset, file or characters"
    )
    batching = parser.add_argument_group("batching")
    batching.add_argument(
        "--max-batch", type=int, default=32, help="images per forward pass (default: 32; 1 = off)"
    )
    batching.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill (default: 5)"
    )
    batching.add_argument(
        "--max-queue", type=int, default=256, help="images waiting at most; beyond: 503 (default: 256)"
    )
    batching.add_argument("--workers", type=int, default=2, help="image decoding threads (default: 2)")
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-bytes", type=int, default=8 * 2**20, help="request body bytes (default: 8 MiB)"
    )
    limits.add_argument("--max-images", type=int, default=64, help="images per request (default: 64)")
    limits.add_argument(
        "--max-pixels", type=int, default=4096 * 4096, help="pixels per image (default: 4096x4096)"
    )
    limits.add_argument(
        "--max-request-pixels",
        type=int,
        default=64 * 2**20,
        help="pixels of all images of one request together (default: 64 Mpx)",
    )
    limits.add_argument(
        "--max-refine-iters", type=int, default=8, help="refine_iters a request may ask (default: 8)"
    )
    limits.add_argument(
        "--max-connections", type=int, default=128, help="concurrent connections; beyond: 503 (default: 128)"
    )
    server = parser.add_argument_group("server")
    server.add_argument("--root-path", default="", help="URL prefix when behind a proxy that strips it")
    server.add_argument(
        "--forwarded-allow-ips",
        default=None,
        help="proxy addresses whose X-Forwarded-* headers are trusted (e.g. 127.0.0.1)",
    )
    server.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds to finish requests on SIGTERM (default: 30)",
    )
    server.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a connection may take to send a request's headers; then it is closed (default: 10)",
    )
    server.add_argument(
        "--body-timeout",
        type=float,
        default=60.0,
        help="seconds a request may take to send its body after its headers (default: 60)",
    )
    server.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    parser.set_defaults(handler=run)
