"""The service under hostile clients (issue 24, items 8-10 and 13): bounded memory per request and in
flight, the package's one image decoder, slow clients timed out, clean errors at start and at shutdown.
Sockets are loopback only and every wait is bounded."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import clip4str  # noqa: E402
from clip4str.serve import Limits, ServeSettings, create_app  # noqa: E402
from clip4str.serve.server import BackgroundServer  # noqa: E402


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    import torch

    from clip4str.model.clip4str import CLIP4STR
    from clip4str.presets import model_preset
    from clip4str.weights import save_model

    torch.manual_seed(0)
    folder = save_model(CLIP4STR(model_preset("tiny")), tmp_path_factory.mktemp("m") / "model")
    return clip4str.load(folder)


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, data in files:
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def post(url: str, files: list[tuple[str, bytes]]) -> tuple[int, dict]:
    body, ctype = multipart(files)
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


class PeakRss:
    """The largest RSS of this process (sampled every 10 ms) while the block runs."""

    def __enter__(self) -> PeakRss:
        self.start = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# ------------------------------------------------------------------------------------ item 8: memory
@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="reads /proc/self/statm")
def test_explain_memory_is_bounded_per_request_and_in_flight(reader):
    """Issue 24 item 8: 64 white 4096² PNGs (3.6 MiB) took the server from 0.3 to 4.7 GB: every decoded
    image was kept until the answer. Now the headers are summed first (413 beyond --max-request-pixels),
    and a request that is let through keeps only tensors and small figure copies."""
    white = png(Image.new("RGB", (4096, 4096), "white"))
    settings = ServeSettings(limits=Limits(max_images=64))
    with BackgroundServer(create_app(reader, "tiny", settings)) as srv:
        with PeakRss() as mem:
            status, body = post(
                srv.url + "/v1/explain?figure=true", [(f"w{i}.png", white) for i in range(64)]
            )
        assert (
            status == 413 and body["error"] == "too_many_pixels" and "--max-request-pixels" in body["detail"]
        )
        assert mem.peak - mem.start < 100, "refused from the headers: nothing decoded"
    side = 2048  # 24 of them: 300 MB of RGB if every decoded image were kept (it measured 500 MB then)
    settings = ServeSettings(limits=Limits(max_images=24, max_request_pixels=24 * side * side))
    with BackgroundServer(create_app(reader, "tiny", settings)) as srv:
        files = [(f"w{i}.png", png(Image.new("RGB", (side, side), "white"))) for i in range(24)]
        with PeakRss() as mem:
            status, body = post(srv.url + "/v1/explain", files)
        assert status == 200 and len(body["results"]) == 24
        # the decoding pool (2 threads) holds one image each at a time; only tensors are kept (135 MB)
        assert mem.peak - mem.start < 300, f"peak grew {mem.peak - mem.start:.0f} MB"


# ------------------------------------------------------------------------------------ item 9: decoder
def test_a_16_bit_grayscale_png_reads_as_clip4str_read_reads_it(reader, tmp_path):
    """Issue 24 item 9: the service decoded with img.convert("RGB"), so a 16-bit grayscale PNG read as
    white; it now uses the package's one decoder and answers what `clip4str read` answers."""
    from clip4str.data.transforms import load_image
    from clip4str.serve.inputs import open_image

    ramp = (np.linspace(0, 40000, 96 * 32).reshape(32, 96)).astype(np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I;16")
    served = np.asarray(open_image(path.read_bytes(), "image 1", 10**7))
    assert np.array_equal(served, np.asarray(load_image(path))) and served.max() < 200
    with BackgroundServer(create_app(reader, "tiny")) as srv:
        status, body = post(srv.url + "/v1/read", [("gray16.png", path.read_bytes())])
    expected = reader.read([str(path)])[0]
    assert status == 200 and body["results"][0]["text"] == expected.text
    assert body["results"][0]["confidence"] == pytest.approx(expected.confidence, rel=1e-5)


def test_queue_places_are_reserved_before_images_are_decoded():
    """Item 8: a request decodes its images only once its places in the queue are held, so decoded
    tensors never outnumber --max-queue (concurrent requests used to decode first, then find it full)."""
    import asyncio

    from clip4str.serve.batching import DynamicBatcher, QueueFull

    async def scenario() -> list[int]:
        batcher = DynamicBatcher(lambda key, items: items, max_batch=4, max_wait=0, max_queue=5)
        batcher.start()
        first = batcher.reserve(3)
        with pytest.raises(QueueFull, match="holds 3"):
            batcher.reserve(3)  # refused before anything is decoded
        second = batcher.reserve(2)
        out = await batcher.submit("k", [1, 2, 3], first)
        second.release()
        assert batcher.reserve(5).release() == 5 and second.release() == 0
        await batcher.close()
        return out

    assert asyncio.run(scenario()) == [1, 2, 3]


# ------------------------------------------------------------------------------------ item 10: slow clients
def _health(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/health", timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def _closed_by_server(sock, seconds: float = 5.0) -> bool:
    """True when the server closes ``sock`` within ``seconds`` (anything it sent first is skipped)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_slow_clients_are_timed_out_and_free_their_slots(reader):
    """Issue 24 item 10: --max-connections idle sockets made /health answer 503 indefinitely (no timeout on
    headers or body). Loopback only; every socket is closed by the test at the latest."""
    import socket

    from clip4str.serve.server import timed_protocol

    protocol = timed_protocol(header_timeout=0.6, body_timeout=0.6)
    with BackgroundServer(create_app(reader, "tiny"), limit_concurrency=4, http=protocol) as srv:
        address = srv.url.rsplit("/", 1)[1].split(":")
        address = (address[0], int(address[1]))
        socks = []
        try:
            for i in range(4):
                sock = socket.create_connection(address, timeout=5)
                if i % 2:  # half send part of their headers, then stall (slowloris)
                    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                socks.append(sock)
            assert _health(srv.url) == 503  # every slot is held
            started = time.monotonic()
            assert all(_closed_by_server(sock) for sock in socks)
            assert time.monotonic() - started < 5
            assert _health(srv.url) == 200
            body = socket.create_connection(address, timeout=5)  # a body that never completes
            socks.append(body)
            body.sendall(
                b"POST /v1/read HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n\x89PNG"
            )
            assert _closed_by_server(body)
            assert _health(srv.url) == 200
        finally:
            for sock in socks:
                sock.close()


# ------------------------------------------------------------------------------------ item 13: start, stop
def test_a_request_cut_by_the_drain_timeout_gets_503_shutting_down(reader, monkeypatch):
    """Issue 24 item 13: a request still running when --drain-timeout expired got a 500 and an ASGI
    traceback."""
    import clip4str.serve.app as app_module

    gate, started = threading.Event(), threading.Event()
    run_batch = app_module._run_batch

    def gated(*args):
        started.set()
        gate.wait(30)
        return run_batch(*args)

    monkeypatch.setattr(app_module, "_run_batch", gated)
    srv = BackgroundServer(create_app(reader, "tiny"), timeout_graceful_shutdown=0.5).start()
    result: dict = {}
    white = png(Image.new("RGB", (64, 32), "white"))
    client = threading.Thread(target=lambda: result.update(r=post(srv.url + "/v1/read", [("w.png", white)])))
    client.start()
    try:
        assert started.wait(30)  # the request is in the model
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        client.join(30)
        status, body = result["r"]
        assert status == 503 and body["error"] == "shutting_down" and "--drain-timeout" in body["detail"]
    finally:
        gate.set()
        client.join(30)
    stopper.join(30)


def test_serve_checks_its_port_before_loading_the_model(capsys):
    """Issue 24 item 13: `serve --port 99999` gave a traceback after the model loaded."""
    import socket

    from clip4str.cli import main

    assert main(["serve", "--port", "99999", "--model", "/nonexistent/never-loaded"]) == 1
    err = capsys.readouterr().err
    assert "--port 99999" in err and "never-loaded" not in err and err.count("\n") == 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--model", "/nonexistent/never-loaded"]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "never-loaded" not in err


def test_the_figure_from_the_kept_tile_equals_the_library_figure(reader):
    """Item 8: /v1/explain keeps only each image's figure tile, and draws the same figure as the library."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (300, 1000, 3), dtype=np.uint8))
    data = png(image)
    with BackgroundServer(create_app(reader, "tiny")) as srv:
        body, ctype = multipart([("big.png", data)])
        req = urllib.request.Request(
            srv.url + "/v1/explain?format=png", data=body, method="POST", headers={"Content-Type": ctype}
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            served = np.asarray(Image.open(io.BytesIO(resp.read())).convert("RGB"))
    expected = np.asarray(reader.explain([data])[0].figure.convert("RGB"))
    assert served.shape == expected.shape and np.array_equal(served, expected)
