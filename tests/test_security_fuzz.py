"""Property-based fuzzing of hostile inputs (issue 24, "Also"): box files, label and ground-truth files,
checkpoint headers and multipart bodies. Each reader either returns a well-formed result or raises the
package's own one-line error, never another exception, never hangs. Derandomized, so CI runs the same
examples every time; about a minute in all."""

from __future__ import annotations

import asyncio
import io
import json
import pickle
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clip4str.errors import CheckpointError, DatasetError

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SCRATCH = Path(tempfile.mkdtemp(prefix="clip4str-fuzz-"))

numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.integers().map(lambda n: n * 10**400),  # beyond float64
    st.floats(allow_nan=True, allow_infinity=True),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8)),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=40,
)


def _scratch(name: str, data: bytes) -> Path:
    path = SCRATCH / name
    path.write_bytes(data)
    return path


def _json_dumps(value: object) -> str:
    return json.dumps(value, allow_nan=True)


# ------------------------------------------------------------------------------------ box files
def _check_boxes(result: list) -> None:
    from clip4str.detect.geometry import MAX_COORDINATE
    from clip4str.detect.pipeline import MAX_BOXES_PER_IMAGE

    for image, quads in result:
        assert isinstance(image, str)
        assert quads.ndim == 3 and quads.shape[1:] == (4, 2) and len(quads) <= MAX_BOXES_PER_IMAGE
        assert np.isfinite(quads).all() and (np.abs(quads) <= MAX_COORDINATE).all()


@FUZZ
@given(boxes=json_values, key=st.sampled_from(["boxes", "words"]), nest=st.sampled_from([0, 1, 2, 60, 5000]))
def test_fuzz_json_box_files(boxes, key, nest):
    from clip4str.detect.boxfile import load_box_file

    value = boxes if key == "boxes" else [{"box": boxes}]
    inner = "[" * nest + _json_dumps(value) + "]" * nest
    record = f'{{"path": "a.png", "{key}": {inner}}}'
    path = _scratch("boxes.jsonl", record.encode())
    try:
        _check_boxes(load_box_file(path))
    except DatasetError as err:
        assert "\n" not in str(err) and "boxes.jsonl" in str(err)


@FUZZ
@given(lines=st.lists(st.lists(numbers, max_size=10), max_size=20), junk=st.binary(max_size=40))
def test_fuzz_text_box_files(lines, junk):
    from clip4str.detect.boxfile import load_box_file

    text = "\n".join(",".join(repr(v) for v in line) for line in lines).encode() + junk
    path = _scratch("boxes.txt", text)
    try:
        _check_boxes(load_box_file(path, ["a.png"]))
    except DatasetError as err:
        assert "boxes.txt" in str(err)


# ------------------------------------------------------------------------------------ labels, ground truth
@FUZZ
@given(data=st.binary(max_size=300) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_fuzz_label_files(data):
    from clip4str.data.labels import read_label_file

    path = _scratch("labels.tsv", data)
    try:
        records = read_label_file(path)
    except DatasetError as err:
        assert "labels.tsv" in str(err)
        return
    assert records and all(isinstance(p, Path) and isinstance(label, str) for p, label in records)


gt_line = st.builds(
    lambda nums, text: ",".join(str(n) for n in nums) + "," + text,
    st.lists(
        st.one_of(st.integers(-(10**6), 10**6), st.floats(allow_nan=False, width=32)), min_size=0, max_size=9
    ),
    st.text(max_size=10),
)


@FUZZ
@given(lines=st.lists(gt_line, max_size=8), junk=st.binary(max_size=20))
def test_fuzz_ground_truth_files(lines, junk):
    from clip4str.eval_scenes import load_gt

    path = _scratch("gt_img_1.txt", "\n".join(lines).encode("utf-8", "surrogatepass") + junk)
    try:
        words = load_gt(path)
    except DatasetError as err:
        assert "gt_img_1.txt" in str(err)
        return
    for word in words:
        assert word.box.shape == (4, 2) and isinstance(word.text, str)


# ------------------------------------------------------------------------------------ checkpoint headers
def _legacy(numels: list[int], tail: bytes) -> bytes:
    """A legacy torch.save stream whose storages claim ``numels`` elements, followed by ``tail``."""
    import torch
    from test_security_weights import _Pickler, _Storage, _Tensor

    out = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, out, protocol=2)
    tensors = {f"w{i}": _Tensor(_Storage(str(i), n), (n,), (1,)) for i, n in enumerate(numels)}
    _Pickler(out, protocol=2).dump(tensors)
    pickle.dump([str(i) for i in range(len(numels))], out, protocol=2)
    assert torch  # the rebuild function is pickled by reference
    return out.getvalue() + tail


def _zip(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, blob in entries.items():
            archive.writestr(name, blob)
    return out.getvalue()


checkpoint_bytes = st.one_of(
    st.binary(max_size=200).map(lambda b: b"\x80\x02" + b),  # a pickle stream
    st.builds(_legacy, st.lists(st.integers(0, 2**40), max_size=4), st.binary(max_size=64)),
    st.builds(
        lambda pkl, data: _zip({"archive/data.pkl": pkl, "archive/data/0": data}),
        st.binary(max_size=120).map(lambda b: b"\x80\x02" + b),
        st.binary(max_size=64),
    ),
    st.builds(  # safetensors: an 8-byte header length, then a JSON header
        lambda n, header, body: struct.pack("<Q", n) + header.encode() + body,
        st.integers(0, 2**64 - 1),
        json_values.map(_json_dumps),
        st.binary(max_size=64),
    ),
    st.binary(max_size=200),
)


@FUZZ
@given(data=checkpoint_bytes)
def test_fuzz_checkpoint_headers(data):
    from clip4str.weights import read_checkpoint

    path = _scratch("model.ckpt", data)
    try:
        read_checkpoint(path)
    except CheckpointError as err:
        assert "model.ckpt" in str(err)


# ------------------------------------------------------------------------------------ multipart bodies
class _Asgi:
    """The service's ASGI app driven in-process on one event loop (no sockets)."""

    def __init__(self, app) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.lifespan = app.router.lifespan_context(app)
        self.loop.run_until_complete(self.lifespan.__aenter__())

    def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        return self.loop.run_until_complete(self._post(path, body, content_type))

    async def _post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"content-type", content_type.encode("latin-1")),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        chunks = [body[i : i + 997] for i in range(0, len(body), 997)] or [b""]
        messages = [
            {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
            for i, c in enumerate(chunks)
        ]
        sent: list[dict] = []

        async def receive() -> dict:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        status = next(m["status"] for m in sent if m["type"] == "http.response.start")
        return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")

    def close(self) -> None:
        self.loop.run_until_complete(self.lifespan.__aexit__(None, None, None))
        self.loop.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    pytest.importorskip("fastapi")
    import torch

    import clip4str
    from clip4str.model.clip4str import CLIP4STR
    from clip4str.presets import model_preset
    from clip4str.serve import Limits, ServeSettings, create_app
    from clip4str.weights import save_model

    torch.manual_seed(0)
    folder = save_model(CLIP4STR(model_preset("tiny")), tmp_path_factory.mktemp("m") / "model")
    settings = ServeSettings(limits=Limits(max_request_bytes=64_000, max_images=4, max_pixels=256 * 256))
    driver = _Asgi(create_app(clip4str.load(folder), "tiny", settings))
    yield driver
    driver.close()


def _png(size: tuple[int, int], mode: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


part = st.tuples(
    st.text(max_size=12),  # field name
    st.one_of(st.none(), st.text(max_size=12)),  # filename (None: a text field)
    st.one_of(
        st.binary(max_size=80),
        st.builds(
            _png,
            st.tuples(st.integers(1, 300), st.integers(1, 40)),
            st.sampled_from(["RGB", "L", "I;16", "1"]),
        ),
        st.builds(lambda b, n: _png((20, 10), "RGB")[:n] + b, st.binary(max_size=20), st.integers(0, 60)),
    ),
)


@settings(FUZZ, max_examples=50)
@given(
    parts=st.lists(part, max_size=6),
    boundary=st.text(alphabet="abcXYZ019-_'()+", min_size=1, max_size=20),
    mangle=st.sampled_from(["none", "no-end", "bad-boundary", "crlf"]),
)
def test_fuzz_multipart_bodies(service, parts, boundary, mangle):
    out = io.BytesIO()
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        out.write(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode("utf-8", "surrogatepass")
        )
        out.write(data + b"\r\n")
    if mangle != "no-end":
        out.write(f"--{boundary}--\r\n".encode())
    body = out.getvalue()
    if mangle == "crlf":
        body = body.replace(b"\r\n", b"\n")
    ctype = f"multipart/form-data; boundary={boundary if mangle != 'bad-boundary' else boundary + 'x'}"
    status, raw = service.post("/v1/read", body, ctype)
    assert status in (200, 400, 408, 413, 415, 422), (status, raw[:300])
    answer = json.loads(raw)
    if status == 200:
        assert len(answer["results"]) == sum(1 for _, f, _ in parts if f is not None)
    else:
        assert set(answer) == {"error", "detail"} and answer["detail"]
