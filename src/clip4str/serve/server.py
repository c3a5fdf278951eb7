"""Run the service in a background thread of this process (notebooks, tests, benchmarks).

>>> with BackgroundServer(create_app(reader, "my-model")) as server:
...     urllib.request.urlopen(server.url + "/health")
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn


class BackgroundServer:
    """uvicorn serving ``app`` on ``host`` (a free port unless ``port``) in a daemon thread; ``url`` once
    started; :meth:`stop` drains like SIGTERM does."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        if port == 0:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
        self.url = f"http://{host}:{port}"
        config.setdefault("log_level", "warning")
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, **config))
        self.thread = threading.Thread(target=self.server.run, name="clip4str-serve", daemon=True)

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
