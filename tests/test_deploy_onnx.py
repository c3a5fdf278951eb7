"""ONNX export and the torch-free reader (issue 20): parity with PyTorch, int8, bad input, no torch import.

* the golden tiny model (../shared/golden): every decoding setting's final logits within 1e-4 of torch's;
* the shipped model, whatever it is, exported here: identical strings on all 5,724 real test crops
  (IIIT5K, SVT, IC15) with confidences within 1e-3, in one torch pass and one ONNX pass;
* int8: accuracy on SVT within a point of fp32;
* damaged, tampered or swapped files are one clear error; export never replaces what it did not write.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from clip4str.checkpoints import load_model
from clip4str.cli import main
from clip4str.data.transforms import load_image, preprocess_one_array
from clip4str.deploy.manifest import MANIFEST_NAME, load_folder
from clip4str.deploy.onnx_export import export_onnx
from clip4str.deploy.onnx_reader import OnnxRecognizer
from clip4str.errors import CheckpointError

CHARSET_36 = "0123456789abcdefghijklmnopqrstuvwxyz"
REAL_TEST_SETS = ("iiit5k_test", "svt_test", "ic15_word_test")
SETTINGS = {
    "ar_refine1": {},
    "ar_refine0": {"refine_iters": 0},
    "ar_refine2": {"refine_iters": 2},
    "nar_refine1": {"mode": "nar"},
    "visual_only": {"visual_only": True},
    "charset36": {"charset_test": CHARSET_36},
}


@pytest.fixture(scope="module", autouse=True)
def _bpe(bpe_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIP4STR_BPE_PATH", str(bpe_path))
        yield


@pytest.fixture(scope="module")
def tiny(golden_dir, tmp_path_factory):
    model = load_model(golden_dir / "clip4str_tiny.ckpt").eval()
    folder = export_onnx(model, tmp_path_factory.mktemp("tiny_onnx"), source="clip4str_tiny.ckpt")
    images = torch.load(golden_dir / "inputs" / "inputs.pt", weights_only=True)["images_norm05"]
    return model, OnnxRecognizer(folder, threads=1), images


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_golden_tiny_onnx_logits_match_torch(tiny, golden_dir, setting) -> None:
    model, reader, images = tiny
    with torch.no_grad():
        want = model.decode(images, **SETTINGS[setting]).numpy()
    got = reader.logits(images.numpy(), reader.options.replace(**SETTINGS[setting]))
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4
    if setting == "ar_refine1":  # and the official strings
        golden = torch.load(golden_dir / "golden_infer.pt", weights_only=True)["settings"]["ar_refine1"]
        assert [p.text for p in reader.predictions_from_logits(got)] == golden["decoded"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    import clip4str

    torch_reader = clip4str.load("clip4str-small", precision="fp32")
    folder = export_onnx(torch_reader.model, tmp_path_factory.mktemp("small_onnx"), source="clip4str-small")
    return torch_reader, folder


def _real_crops(realdata_dir: Path) -> tuple[list[Path], list[str]]:
    paths, labels = [], []
    for name in REAL_TEST_SETS:
        table = realdata_dir / name / "labels.tsv"
        for line in table.read_text(encoding="utf-8").splitlines()[1:]:
            file, label = line.split("\t")[:2]
            paths.append(table.parent / file)
            labels.append(label)
    return paths, labels


@pytest.mark.slow
def test_shipped_model_onnx_reads_every_real_test_crop_like_torch(small, realdata_dir) -> None:
    torch.set_num_threads(1)  # on 2 cores beside other work, one thread each reads 3-5x faster than two
    torch_reader, folder = small
    onnx_reader = OnnxRecognizer(folder, threads=1)
    paths, _ = _real_crops(realdata_dir)
    assert len(paths) == 5724
    cfg = torch_reader.config.preprocess
    differ, worst = [], 0.0
    with ThreadPoolExecutor(1) as pool:
        for start in range(0, len(paths), 256):
            chunk = paths[start : start + 256]
            pixels = np.stack(list(pool.map(lambda p: preprocess_one_array(load_image(p), cfg), chunk)))
            ours = torch_reader.predictions_from_logits(torch_reader.logits(torch.from_numpy(pixels)))
            theirs = onnx_reader.predictions_from_logits(onnx_reader.logits(pixels))
            for path, a, b in zip(chunk, ours, theirs):
                if a.text != b.text:
                    differ.append(f"{path.name}: torch {a.text!r} ({a.confidence:.4f}), onnx {b.text!r}")
                worst = max(worst, abs(a.confidence - b.confidence))
    assert not differ, f"{len(differ)} of {len(paths)} strings differ: " + "; ".join(differ[:20])
    assert worst <= 1e-3


def _accuracy(preds: list[str], labels: list[str]) -> float:
    norm = [("".join(c for c in t.lower() if c.isascii() and c.isalnum())) for t in labels]
    return 100.0 * sum(p == t for p, t in zip(preds, norm)) / len(labels)


@pytest.mark.slow
def test_int8_export_reads_svt_within_a_point_of_fp32(small, realdata_dir, tmp_path) -> None:
    torch_reader, folder = small
    out = tmp_path / "int8"
    assert main(["export", "clip4str-small", str(out), "--format", "onnx", "--int8"]) == 0
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["precision"] == "int8"
    size_int8 = sum(f.stat().st_size for f in out.glob("*.onnx"))
    size_fp32 = sum(f.stat().st_size for f in folder.glob("*.onnx"))
    assert size_int8 < 0.45 * size_fp32
    table = realdata_dir / "svt_test" / "labels.tsv"
    rows = [line.split("\t")[:2] for line in table.read_text(encoding="utf-8").splitlines()[1:]]
    paths, labels = [table.parent / f for f, _ in rows], [label for _, label in rows]
    fp32 = [p.text for p in OnnxRecognizer(folder, threads=1).read(paths, batch_size=128)]
    int8 = [p.text for p in OnnxRecognizer(out, threads=1).read(paths, batch_size=128)]
    assert _accuracy(int8, labels) >= _accuracy(fp32, labels) - 1.0


# ------------------------------------------------------------------------------------------ bad input
def _copy(folder: Path, to: Path) -> Path:
    to.mkdir()
    for f in folder.iterdir():
        (to / f.name).write_bytes(f.read_bytes())
    return to


def test_a_tampered_graph_is_one_clear_error(small, tmp_path) -> None:
    folder = _copy(small[1], tmp_path / "copy")
    data = bytearray((folder / "visual_decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "visual_decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"visual_decoder\.onnx: its SHA-256 differs"):
        OnnxRecognizer(folder)


@pytest.mark.parametrize(
    "junk, message",
    [
        (b"not an onnx graph" * 10, r"text\.onnx: not an ONNX graph"),  # not even a protobuf message
        (b"\x08\x07", r"text\.onnx: ONNX Runtime cannot load it: .*No graph"),  # a model with no graph
    ],
)
def test_a_damaged_graph_whose_manifest_was_updated_is_one_clear_error(
    small, tmp_path, junk, message
) -> None:
    import hashlib

    folder = _copy(small[1], tmp_path / "copy")
    (folder / "text.onnx").write_bytes(junk)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["files"]["text.onnx"]["sha256"] = hashlib.sha256(junk).hexdigest()
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=message):
        OnnxRecognizer(folder)


def test_a_swapped_graph_is_refused(small, tmp_path) -> None:
    import hashlib

    folder = _copy(small[1], tmp_path / "copy")
    swapped = (folder / "text.onnx").read_bytes()
    (folder / "visual_decoder.onnx").write_bytes(swapped)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["files"]["visual_decoder.onnx"]["sha256"] = hashlib.sha256(swapped).hexdigest()
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="not the manifest's"):
        OnnxRecognizer(folder)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / MANIFEST_NAME).unlink(), "no manifest.json"),
        (lambda f: (f / MANIFEST_NAME).write_text("{"), "not valid JSON"),
        (lambda f: (f / "image.onnx").unlink(), r"ONNX file not found: .*image\.onnx"),
    ],
)
def test_a_broken_folder_is_one_clear_error(small, tmp_path, damage, message) -> None:
    folder = _copy(small[1], tmp_path / "copy")
    damage(folder)
    with pytest.raises(CheckpointError, match=message):
        load_folder(folder)


def test_export_refuses_a_folder_in_use_and_overwrites_only_its_own_files(small, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", "clip4str-small", str(out), "--format", "onnx"]) == 1
    assert "give --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(["export", "clip4str-small", str(out), "--format", "onnx", "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert {p.name for p in out.iterdir()} == {
        "notes.txt",
        MANIFEST_NAME,
        *(f"{g}.onnx" for g in ("image", "text", "visual_decoder", "cross_decoder")),
    }
    assert load_folder(out)[0]["source"]["sha256"]


# ------------------------------------------------------------------------------------------ no torch
def test_the_onnx_reader_never_imports_torch(small, realdata_dir, tmp_path) -> None:
    """The read path (library and CLI) runs with torch made unimportable; .ci/run repeats this in a
    virtual environment where torch is not installed at all."""
    crops = (
        sorted((realdata_dir / "svt_test").rglob("*.png"))[:4]
        or sorted((realdata_dir / "svt_test").rglob("*.jpg"))[:4]
    )
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from clip4str.cli import main\n"
        f"sys.exit(main(['read', '--runtime', 'onnx', '--model', {str(small[1])!r}, *{[str(c) for c in crops]!r}]))\n"
    )
    env = {**os.environ, "CLIP4STR_ONNX_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == len(crops) and all(len(line.split("\t")) == 3 for line in lines)
    torch_lines = (
        subprocess.run(
            [sys.executable, "-m", "clip4str", "read", "--precision", "fp32", *map(str, crops)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        .stdout.strip()
        .splitlines()
    )
    assert [line.split("\t")[:2] for line in lines] == [line.split("\t")[:2] for line in torch_lines]


def test_a_graph_reading_external_data_is_refused_before_onnxruntime_loads_it(small, tmp_path) -> None:
    """ONNX Runtime would resolve an external-data path against the current folder for a graph given as
    bytes: such a graph is refused, whatever its checksum."""
    import hashlib

    import onnx

    folder = _copy(small[1], tmp_path / "copy")
    graph = onnx.load_from_string((folder / "text.onnx").read_bytes())
    tensor = max(graph.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "secret.bin"
    tensor.ClearField("raw_data")
    data = graph.SerializeToString()
    (folder / "text.onnx").write_bytes(data)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["files"]["text.onnx"]["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="external data"):
        OnnxRecognizer(folder)


def test_read_detect_with_onnx_prints_the_torch_lines(small, realdata_dir, capsys) -> None:
    photo = realdata_dir / "ic15_scenes_test" / "Imgs" / "img_5.jpg"
    assert main(["read", "--detect", "--precision", "fp32", str(photo)]) == 0
    torch_lines = capsys.readouterr().out.splitlines()
    assert main(["read", "--detect", "--runtime", "onnx", "--model", str(small[1]), str(photo)]) == 0
    onnx_lines = capsys.readouterr().out.splitlines()
    assert len(torch_lines) >= 3
    assert [line.split("\t")[1] for line in onnx_lines] == [line.split("\t")[1] for line in torch_lines]
    assert [line.split("\t")[3] for line in onnx_lines] == [line.split("\t")[3] for line in torch_lines]


def test_serve_with_the_onnx_runtime_reads_like_the_library(small, realdata_dir) -> None:
    pytest.importorskip("fastapi")
    import urllib.error
    import urllib.request
    import uuid

    from clip4str.serve import ServeSettings, create_app
    from clip4str.serve.server import BackgroundServer

    reader = OnnxRecognizer(small[1], threads=1)
    crops = sorted((realdata_dir / "svt_test" / "crops").iterdir())[:3]
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{p.name}"\r\n\r\n'.encode()
            + p.read_bytes()
            + b"\r\n"
            for p in crops
        )
        + f"--{boundary}--\r\n".encode()
    )
    with BackgroundServer(create_app(reader, "small-onnx", ServeSettings(max_batch=4))) as server:
        for path, status in (("/v1/read", 200), ("/v1/explain", 501)):
            request = urllib.request.Request(server.url + path, data=body, method="POST")
            request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    got, data = response.status, json.loads(response.read())
            except urllib.error.HTTPError as err:
                got, data = err.code, json.loads(err.read())
            assert got == status, data
            if status == 200:
                assert [r["text"] for r in data["results"]] == [p.text for p in reader.read(crops)]
            else:
                assert "PyTorch runtime" in data["detail"]


@pytest.mark.parametrize("variant", ["clip-adapter", "ladder", "vietnamese"])
def test_adapters_and_other_charsets_export_with_the_same_logits(variant, tmp_path) -> None:
    from clip4str.factory import create_model

    torch.manual_seed(0)
    model = create_model("tiny", pretrained=False, variants=(variant,)).eval()
    reader = OnnxRecognizer(export_onnx(model, tmp_path / "onnx"))
    h, w = model.config.preprocess.image_size
    pixels = torch.randn(3, 3, h, w, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    with torch.no_grad():
        want = model.decode(pixels).numpy()
    got = reader.logits(pixels.numpy())
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4


def test_runtime_onnx_exports_a_model_once_and_again_when_its_weights_change(tmp_path, capsys) -> None:
    """The shipped model as ONNX without a download: exported on first use into a cache keyed by the
    weights' SHA-256, reused after, and re-exported when the weights are replaced (a retrained model)."""
    import shutil

    from clip4str import hub
    from clip4str.deploy.cache import onnx_folder

    model = tmp_path / "model"
    shutil.copytree(hub.shipped_model_dir("clip4str-small"), model)
    first = onnx_folder(model, cache_dir=tmp_path / "cache")
    assert "exporting" in capsys.readouterr().err
    assert onnx_folder(model, cache_dir=tmp_path / "cache") == first
    assert "exporting" not in capsys.readouterr().err
    config = json.loads((model / "config.json").read_text())
    config["decoding"]["refine_iters"] = 2  # any change of the model's files
    (model / "config.json").write_text(json.dumps(config))
    second = onnx_folder(model, cache_dir=tmp_path / "cache")
    assert second != first and "exporting" in capsys.readouterr().err
    assert OnnxRecognizer(second).options.refine_iters == 2
