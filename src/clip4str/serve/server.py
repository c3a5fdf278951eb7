"""Run the service in a background thread of this process (notebooks, tests, benchmarks).

>>> with BackgroundServer(create_app(reader, "my-model")) as server:
...     urllib.request.urlopen(server.url + "/health")
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any

import uvicorn

log = logging.getLogger("clip4str.serve")

HEADER_TIMEOUT = 10.0  # seconds a connection may take to send a request's headers
BODY_TIMEOUT = 60.0  # seconds a request may take to send its body (8 MiB at about 1 Mbit/s)


def timed_protocol(header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_TIMEOUT) -> type:
    """uvicorn's h11 protocol with two deadlines, so that slow clients cannot hold every connection slot:
    a connection that has not sent a request's complete headers within ``header_timeout`` seconds (from
    its opening, or from the end of its previous answer) is closed, and so is one whose body is not
    complete ``body_timeout`` seconds after its headers. Data trickling in does not extend either."""
    if header_timeout <= 0 or body_timeout <= 0:
        raise ValueError(
            f"--header-timeout ({header_timeout}) and --body-timeout ({body_timeout}) must be > 0 seconds"
        )
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _phase = ""

        def _arm(self, phase: str, seconds: float) -> None:
            self._disarm()
            self._phase = phase
            self._deadline = self.loop.call_later(seconds, self._expired, phase, seconds)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            self._phase = ""

        def _expired(self, phase: str, seconds: float) -> None:
            self._deadline = None
            if self.transport is None or self.transport.is_closing():
                return
            option = "--header-timeout" if phase == "headers" else "--body-timeout"
            log.warning(
                "closed a connection from %s: its request %s took over %g s (%s)",
                self.client,
                phase,
                seconds,
                option,
            )
            self.transport.close()

        def _follow(self) -> None:
            """Arm, switch or drop the deadline from where the client is in its request."""
            state = self.conn.their_state
            if state is h11.IDLE:
                if self._phase != "headers":
                    self._arm("headers", header_timeout)
            elif state is h11.SEND_BODY:
                if self._phase != "body":
                    self._arm("body", body_timeout)
            else:
                self._disarm()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._follow()

        def handle_events(self) -> None:
            super().handle_events()
            if self.transport is not None and not self.transport.is_closing():
                self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._follow()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return TimedH11Protocol


class BackgroundServer:
    """uvicorn serving ``app`` on ``host`` (a free port unless ``port``) in a daemon thread; ``url`` once
    started; :meth:`stop` drains like SIGTERM does. Slow clients are timed out (:func:`timed_protocol`;
    pass ``http=timed_protocol(...)`` for other deadlines)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        if port == 0:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
        self.url = f"http://{host}:{port}"
        config.setdefault("log_level", "warning")
        config.setdefault("http", timed_protocol())
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
