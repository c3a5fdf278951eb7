"""The manifest written next to exported ONNX files: what the files are (charset, preprocessing, lengths,
decoding defaults, graph inputs and outputs) and their checksums, so a folder describes and checks itself.

Torch-free. Reading a folder (:func:`load_folder`) reads each file once, through the regular-file reader,
and checks its SHA-256 against the manifest before anything parses it: a damaged, swapped or tampered
file is one :class:`~clip4str.errors.CheckpointError` line, and the bytes checked are the bytes loaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from clip4str.errors import CheckpointError
from clip4str.files import read_regular_file, read_text_file

MANIFEST_NAME = "manifest.json"
FORMAT = "clip4str-onnx"
FORMAT_VERSION = 1
GRAPHS = (
    "image",
    "text",
    "visual_decoder",
    "cross_decoder",
)  # files <graph>.onnx; "text" absent if visual-only
MAX_GRAPH_BYTES = 4 << 30  # one ONNX file (protobuf's own limit is 2 GiB; larger models use external data)
MAX_MANIFEST_BYTES = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_fingerprint(path: str | Path) -> str:
    """SHA-256 of a model's weights file, or of the files of a model folder (names and bytes, sorted)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            digest.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def graph_file(graph: str) -> str:
    return f"{graph}.onnx"


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The checked manifest of an exported folder (CheckpointError naming the problem)."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder}: not a folder of exported ONNX files (`clip4str export MODEL DIR --format onnx`)"
        )
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {MANIFEST_NAME}; not an ONNX export of clip4str (re-export it)")
    text = read_text_file(path, "ONNX manifest", CheckpointError, max_bytes=MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{path}: not valid JSON ({err.msg}, line {err.lineno}); re-export the model"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f'{path}: not a clip4str ONNX manifest (no "format": "{FORMAT}")')
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: manifest format version {version!r}; this clip4str reads version {FORMAT_VERSION} (re-export)"
        )
    files = manifest.get("files")
    needed = [g for g in GRAPHS if not (g == "text" and manifest.get("visual_only_export"))]
    if not isinstance(files, dict) or any(graph_file(g) not in files for g in needed):
        raise CheckpointError(f"{path}: the manifest must list {', '.join(graph_file(g) for g in needed)}")
    for name, entry in files.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or Path(name).name != name:
            raise CheckpointError(
                f"{path}: bad entry for {name!r} (a plain file name with a sha256 is expected)"
            )
    for key in ("config", "inputs", "outputs"):
        if not isinstance(manifest.get(key), dict):
            raise CheckpointError(f"{path}: the manifest has no {key!r} section; re-export the model")
    return manifest


def load_folder(folder: str | Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(manifest, {graph: checked ONNX bytes}) of an exported folder; CheckpointError for a missing,
    damaged or tampered file (its checksum differs from the manifest's)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    graphs: dict[str, bytes] = {}
    for graph in GRAPHS:
        name = graph_file(graph)
        entry = manifest["files"].get(name)
        if entry is None:
            continue
        data = read_regular_file(folder / name, MAX_GRAPH_BYTES, "ONNX file", CheckpointError)
        if sha256_bytes(data) != entry["sha256"]:
            raise CheckpointError(
                f"{folder / name}: its SHA-256 differs from {MANIFEST_NAME}'s: the file is damaged or was changed "
                "after export; re-export the model or fetch the folder again"
            )
        graphs[graph] = data
    return manifest, graphs


def write_manifest_text(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=1, ensure_ascii=False, sort_keys=False) + "\n"


# ------------------------------------------------------------------------------------------ external data
# ONNX tensors may keep their bytes in another file ("external data", located by a path in the graph). ONNX
# Runtime resolves such a path against the model's folder, or against the current folder for a graph given
# as bytes. An export never uses it, so a graph that asks for it is refused before ONNX Runtime sees it: a
# walk over the protobuf wire format (no onnx package needed) through every place a tensor can sit.
_TENSOR_FIELDS = {"model": {7: "graph", 25: "function"}, "graph": {1: "node", 5: "tensor", 15: "sparse"}}
_TENSOR_FIELDS |= {
    "function": {7: "node"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}
_EXTERNAL_LOCATION_FIELD = 14  # TensorProto.data_location; 1 = EXTERNAL
_MAX_DEPTH = 64


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def uses_external_data(data: bytes | memoryview, kind: str = "model", depth: int = 0) -> bool:
    """True when any tensor of an ONNX graph (serialized ``kind`` message) points at external data.
    ValueError for bytes that are not a well-formed protobuf message."""
    if depth > _MAX_DEPTH:
        raise ValueError("graph nested too deeply")
    data = memoryview(data)
    children = _TENSOR_FIELDS.get(kind, {})
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            if kind == "tensor" and field == _EXTERNAL_LOCATION_FIELD and value == 1:
                return True
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise ValueError("truncated field")
            if field in children and uses_external_data(data[pos : pos + size], children[field], depth + 1):
                return True
            pos += size
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if pos != len(data):
        raise ValueError("truncated message")
    return False
