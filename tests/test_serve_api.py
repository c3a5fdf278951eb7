"""The HTTP service on the golden tiny model, over real HTTP: reading, options, explain, schema, bad
requests (each a 4xx naming the problem, the service serving on), batching across clients, 503 when the
queue is full, and SIGTERM draining (``clip4str serve`` in a subprocess)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import clip4str  # noqa: E402
from clip4str.serve import Limits, ServeSettings, create_app  # noqa: E402
from clip4str.serve.server import BackgroundServer  # noqa: E402

EXPECTED = ["Chicken", "STOP", "x7-Zq!", "a", "2024", "SceneText", "", "a"]
LIMITS = Limits(max_request_bytes=300_000, max_images=10, max_pixels=1_000_000)


@pytest.fixture(scope="module")
def ckpt(golden_dir):
    return golden_dir / "clip4str_tiny.ckpt"


@pytest.fixture(scope="module")
def reader(ckpt):
    return clip4str.load(ckpt)


@pytest.fixture(scope="module")
def image_paths(golden_dir):
    return sorted((golden_dir / "inputs").glob("*.png"))


@pytest.fixture(scope="module")
def server(reader):
    settings = ServeSettings(max_batch=8, max_wait_ms=20, max_queue=64, limits=LIMITS)
    with BackgroundServer(create_app(reader, "golden-tiny", settings)) as srv:
        yield srv


def multipart(files: list[tuple[str, bytes]], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for key, value in (fields or {}).items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    for name, data in files:
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def call(url: str, body: bytes | None = None, content_type: str | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def post_files(
    url: str, files: list[tuple[str, bytes]], fields: dict | None = None
) -> tuple[int, dict, dict]:
    body, ctype = multipart(files, fields)
    status, headers, data = call(url, body, ctype)
    return status, headers, json.loads(data)


def files_of(paths) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in paths]


def assert_same_readings(results: list[dict], preds) -> None:
    assert [r["text"] for r in results] == [p.text for p in preds]
    for r, p in zip(results, preds):
        assert r["confidence"] == pytest.approx(p.confidence, rel=1e-5)
        assert r["char_probs"] == pytest.approx(p.char_probs, rel=1e-5)


def test_read_many_images_as_multipart_equals_the_library(server, reader, image_paths):
    status, _, body = post_files(server.url + "/v1/read", files_of(image_paths))
    assert status == 200 and body["model"] == "golden-tiny"
    assert [r["name"] for r in body["results"]] == [p.name for p in image_paths]
    assert [r["text"] for r in body["results"]] == EXPECTED
    assert_same_readings(body["results"], reader.read(image_paths))


def test_read_raw_bytes_and_a_real_crop(server, reader, realdata_dir):
    crop = realdata_dir / "clip4str_test_image" / "image_1576.jpeg"
    for ctype in ("image/jpeg", "application/octet-stream"):
        status, _, data = call(server.url + "/v1/read", crop.read_bytes(), ctype)
        assert status == 200, data
        assert_same_readings(json.loads(data)["results"], reader.read(crop))


def test_decoding_options_are_those_of_read(server, ckpt, image_paths):
    files = files_of(image_paths[:6])
    for query, kwargs in [
        ("decode=nar&refine_iters=2", {"mode": "nar", "refine_iters": 2}),
        ("visual_only=true", {"visual_only": True}),
        ("refine_iters=0", {"refine_iters": 0}),
        ("charset_test=36", {"charset_test": "0123456789abcdefghijklmnopqrstuvwxyz"}),
    ]:
        status, _, body = post_files(f"{server.url}/v1/read?{query}", files)
        assert status == 200, body
        assert_same_readings(body["results"], clip4str.load(ckpt, **kwargs).read(image_paths[:6]))


def test_explain_json_png_and_figure(server, reader, image_paths):
    status, _, body = post_files(server.url + "/v1/explain?figure=true", files_of(image_paths[:3]))
    assert status == 200
    assert_same_readings(body["results"], reader.read(image_paths[:3]))
    for r in body["results"]:
        maps = np.array(r["attention"])
        assert r["grid_hw"] == [14, 14] and maps.shape == (len(r["text"]), 14, 14)
        assert np.allclose(maps.sum(axis=(1, 2)), 1.0, atol=2e-3)
        assert all(0 < s <= 1 for s in r["image_share"])
        assert Image.open(io.BytesIO(base64.b64decode(r["figure_png"]))).format == "PNG"
    body_png, ctype = multipart(files_of(image_paths[:1]))
    status, headers, data = call(server.url + "/v1/explain?format=png", body_png, ctype)
    assert status == 200 and headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(data)).size[0] > 100
    status, _, err = post_files(server.url + "/v1/explain?format=png", files_of(image_paths[:2]))
    assert status == 422 and err["error"] == "bad_option" and "one image" in err["detail"]


def test_models_health_and_openapi(server, reader):
    status, _, data = call(server.url + "/v1/models")
    info = json.loads(data)["models"][0]
    assert status == 200 and info["name"] == "golden-tiny"
    assert info["grid_hw"] == [14, 14] and info["decode"] == "ar" and info["refine_iters"] == 1
    status, _, data = call(server.url + "/health")
    assert status == 200 and json.loads(data)["status"] == "ok"
    status, _, data = call(server.url + "/openapi.json")
    schema = json.loads(data)
    assert {"/v1/read", "/v1/explain", "/v1/models", "/health"} <= set(schema["paths"])
    read = schema["paths"]["/v1/read"]["post"]
    assert "multipart/form-data" in read["requestBody"]["content"]
    assert {p["name"] for p in read["parameters"]} == {
        "decode",
        "refine_iters",
        "visual_only",
        "charset_test",
    }


def png_header_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels, with a few bytes of (deflated zero) data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def png_bytes(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_requests_get_a_4xx_naming_the_problem_and_the_service_goes_on(server, image_paths):
    url = server.url + "/v1/read"
    good = image_paths[0].read_bytes()
    cases = [
        (
            files_of(image_paths[:1]) + [("notes.txt", b"hello, not an image")],
            None,
            422,
            "not_an_image",
            "notes.txt",
        ),
        ([("empty.png", b"")], None, 422, "not_an_image", "empty"),
        ([("half.png", good[: len(good) // 2])], None, 422, "truncated_image", "half.png"),
        ([("bomb.png", png_header_bomb(100_000, 100_000))], None, 413, "too_many_pixels", "bomb.png"),
        ([("big.png", png_bytes(2000, 1000))], None, 413, "too_many_pixels", "1000000"),
        ([(f"{i}.png", good) for i in range(11)], None, 413, "too_many_images", "10"),
        (files_of(image_paths[:1]), {"decode": "nar"}, 422, "bad_option", "query string"),
    ]
    for files, fields, status, code, mention in cases:
        got, _, body = post_files(url, files, fields)
        assert (got, body["error"]) == (status, code), body
        assert mention in body["detail"], body
    for query, mention in [
        ("decode=beam", "decode"),
        ("refine_iters=-1", "refine_iters"),
        ("refine_iters=99", "refine_iters"),
        ("visual_only=maybe", "visual_only"),
        ("charset_test=aab", "repeats"),
        ("refine=1", "unknown option(s) refine"),
    ]:
        got, _, body = post_files(f"{url}?{query}", files_of(image_paths[:1]))
        assert (got, body["error"]) == (422, "bad_option") and mention in body["detail"], (query, body)
    got, _, data = call(url, b"plain text", "text/plain")
    assert got == 415 and json.loads(data)["error"] == "unsupported_media_type"
    got, _, data = call(url, b"", "multipart/form-data; boundary=xyz")
    assert got == 400 and json.loads(data)["error"] in ("no_images", "bad_multipart")
    # Too many bytes: by Content-Length, and while reading a chunked body (no length given).
    big = os.urandom(LIMITS.max_request_bytes + 10)
    got, _, data = call(url, big, "application/octet-stream")
    assert got == 413 and json.loads(data)["error"] == "too_many_bytes"
    conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))
    conn.request("POST", "/v1/read", body=chunks, headers={"Content-Type": "image/png"}, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"] == "too_many_bytes"
    conn.close()
    got, _, data = call(server.url + "/v2/nothing")
    assert got == 404 and json.loads(data)["error"] == "not_found"
    # ... and everyone else is still served.
    status, _, body = post_files(url, files_of(image_paths[:2]))
    assert status == 200 and [r["text"] for r in body["results"]] == EXPECTED[:2]


def concurrent_posts(url: str, files: list[tuple[str, bytes]]) -> list[tuple[int, dict, dict]]:
    """One request per file, all released at once from their own threads."""
    barrier = threading.Barrier(len(files))
    out: list = [None] * len(files)

    def client(i: int) -> None:
        barrier.wait()
        out[i] = post_files(url, [files[i]])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(files))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


@pytest.mark.parametrize("max_batch", [8, 1])
def test_requests_of_many_clients_share_forward_passes(reader, image_paths, max_batch):
    settings = ServeSettings(max_batch=max_batch, max_wait_ms=400, max_queue=64, limits=LIMITS)
    app = create_app(reader, "golden-tiny", settings)
    with BackgroundServer(app) as srv:
        out = concurrent_posts(srv.url + "/v1/read", files_of(image_paths))
        stats = app.state.batcher.stats
    assert [o[0] for o in out] == [200] * 8
    assert_same_readings([o[2]["results"][0] for o in out], reader.read(image_paths))
    assert stats.items == 8
    if max_batch == 1:
        assert stats.batches == 8
    else:
        assert stats.batches <= 3  # one pass when all arrive within the wait; a late thread may miss it


def test_full_queue_answers_503_with_retry_after(reader, image_paths, monkeypatch):
    import clip4str.serve.app as app_module

    gate, started = threading.Event(), threading.Event()
    run_batch = app_module._run_batch

    def gated(*args):
        started.set()
        gate.wait(30)
        return run_batch(*args)

    monkeypatch.setattr(app_module, "_run_batch", gated)
    settings = ServeSettings(max_batch=1, max_wait_ms=0, max_queue=2, limits=replace(LIMITS, max_images=2))
    app = create_app(reader, "golden-tiny", settings)
    url_files = files_of(image_paths)
    results: dict[str, tuple] = {}
    with BackgroundServer(app) as srv:
        url = srv.url + "/v1/read"
        first = threading.Thread(target=lambda: results.update(a=post_files(url, url_files[:1])))
        first.start()
        assert started.wait(30)  # image 0 is in the model, blocked
        second = threading.Thread(target=lambda: results.update(b=post_files(url, url_files[1:3])))
        second.start()
        deadline = time.monotonic() + 30
        while app.state.batcher.queued < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        status, headers, body = post_files(url, url_files[3:4])
        assert status == 503 and body["error"] == "queue_full" and "--max-queue" in body["detail"]
        assert int(headers["retry-after"]) >= 1
        gate.set()
        first.join(30)
        second.join(30)
    assert results["a"][0] == results["b"][0] == 200
    assert [r["text"] for r in results["a"][2]["results"] + results["b"][2]["results"]] == EXPECTED[:3]


def test_sigterm_finishes_in_flight_requests_and_exits_0(ckpt, image_paths, bpe_path, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", CLIP4STR_BPE_PATH=str(bpe_path))
    cmd = [sys.executable, "-m", "clip4str", "serve", "--model", str(ckpt), "--port", port]
    cmd += ["--max-wait-ms", "1500", "--log-level", "warning"]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if call(url + "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        result: dict = {}
        worker = threading.Thread(
            target=lambda: result.update(r=post_files(url + "/v1/read", files_of(image_paths[:2])))
        )
        worker.start()
        while json.loads(call(url + "/health")[2])["queued"] < 2:  # in the queue, waiting for its batch
            assert time.monotonic() < deadline and worker.is_alive()
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        refused = False
        while not refused and time.monotonic() < deadline:  # stops accepting at once ...
            try:
                call(url + "/health")
                time.sleep(0.05)
            except OSError:
                refused = True
        assert refused
        worker.join(30)  # ... and still answers the request it holds
        assert proc.wait(30) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    status, _, body = result["r"]
    assert status == 200 and [r["text"] for r in body["results"]] == EXPECTED[:2]
