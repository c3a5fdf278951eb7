"""The Python API (`clip4str.load`, `Recognizer`) and `clip4str read` on the golden tiny model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import clip4str
from clip4str.cli import main
from clip4str.errors import ImageReadError, ModelNotFoundError

EXPECTED = ["Chicken", "STOP", "x7-Zq!", "a", "2024", "SceneText", "", "a"]


@pytest.fixture(autouse=True)
def _bpe(bpe_path, monkeypatch):
    monkeypatch.setenv("CLIP4STR_BPE_PATH", str(bpe_path))


@pytest.fixture(scope="module")
def ckpt(golden_dir):
    return golden_dir / "clip4str_tiny.ckpt"


@pytest.fixture
def reader(ckpt):
    return clip4str.load(ckpt)


@pytest.fixture(scope="module")
def image_paths(golden_dir):
    return sorted((golden_dir / "inputs").glob("*.png"))


def test_read_paths_pil_and_arrays(reader, image_paths, golden_dir):
    preds = reader.read(image_paths)
    assert [p.text for p in preds] == EXPECTED
    golden = torch.load(golden_dir / "golden_infer.pt", weights_only=True)["settings"]["ar_refine1"]
    assert [p.confidence for p in preds] == pytest.approx(golden["confidence"], rel=1e-4)
    for p in preds:
        assert len(p.char_probs) == len(p.text) + 1
        assert p.confidence == pytest.approx(float(np.prod(p.char_probs)), rel=1e-6)
    pil = Image.open(image_paths[0])
    array = np.asarray(pil.convert("RGB"))
    assert reader.read(pil)[0].text == "Chicken"
    assert reader.read(array)[0].text == "Chicken"
    assert reader.read(str(image_paths[1]))[0].text == "STOP"


def test_preprocess_and_logits_are_the_official_quantities(reader, golden_dir, image_paths):
    inputs = torch.load(golden_dir / "inputs" / "inputs.pt", weights_only=True)
    pixels = reader.preprocess(image_paths)
    assert pixels.shape == (8, 3, 224, 224) and pixels.dtype == torch.float32
    assert torch.equal(pixels, inputs["images_norm05"])
    logits = reader.logits(pixels)
    golden = torch.load(golden_dir / "golden_infer.pt", weights_only=True)["settings"]["ar_refine1"]
    assert logits.shape == golden["final_logits"].shape
    torch.testing.assert_close(logits[:, :8], golden["final_logits"][:, :8], rtol=1e-4, atol=2e-4)


def test_batch_size_does_not_change_results(ckpt, image_paths):
    one = clip4str.load(ckpt, batch_size=1).read(image_paths)
    three = clip4str.load(ckpt, batch_size=3).read(image_paths)
    assert [p.text for p in one] == [p.text for p in three] == EXPECTED
    assert [p.confidence for p in one] == pytest.approx([p.confidence for p in three], rel=1e-5)


def test_decoding_options(ckpt, image_paths):
    visual = clip4str.load(ckpt, visual_only=True).read(image_paths)
    assert [p.text for p in visual] == EXPECTED[:7] + [""]
    nar = clip4str.load(ckpt, mode="nar", refine_iters=2).read(image_paths[:6])
    assert [p.text for p in nar] == EXPECTED[:6]
    with pytest.raises(ValueError, match="mode"):
        clip4str.load(ckpt, mode="beam")
    with pytest.raises(ValueError, match="refine_iters"):
        clip4str.load(ckpt, refine_iters=-1)


def test_bf16_autocast_runs_on_cpu(ckpt, image_paths):
    preds = clip4str.load(ckpt, precision="bf16").read(image_paths[:6])
    assert [p.text for p in preds] == EXPECTED[:6]


def test_bad_images(reader, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageReadError, match="broken.png"):
        reader.read(broken)
    with pytest.raises(ImageReadError, match="missing.png"):
        reader.read(tmp_path / "missing.png")


def test_read_files_reports_bad_files_and_keeps_order(reader, image_paths, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"garbage")
    paths = [image_paths[0], broken, image_paths[1]]
    results = list(reader.read_files(paths, batch_size=2))
    assert [p for p, _ in results] == [str(p) for p in paths]
    assert results[0][1].text == "Chicken" and results[2][1].text == "STOP"
    assert isinstance(results[1][1], ImageReadError)


def test_unknown_model_name(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError):
        clip4str.load("clip4str-bsae")
    with pytest.raises(ModelNotFoundError, match="clip4str_base"):
        clip4str.load("clip4str-base")


# ------------------------------------------------------------------------------------------ CLI
def test_cli_read_folder_with_a_corrupt_file(ckpt, image_paths, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in image_paths[:3]:
        shutil.copy(p, folder / p.name)
    (folder / "00b_corrupt.png").write_bytes(b"\x89PNG broken")
    (folder / "notes.txt").write_text("not an image, not picked from a folder")
    code = main(["read", "--model", str(ckpt), str(folder)])
    out, err = capsys.readouterr()
    assert code == 1
    lines = [line.split("\t") for line in out.strip().splitlines()]
    assert [(p.split("/")[-1], t) for p, t, _ in lines] == [
        ("00_chicken.png", "Chicken"),
        ("01_stop.png", "STOP"),
        ("02_x7zq.png", "x7-Zq!"),
    ]
    assert all(0.0 <= float(c) <= 1.0 for _, _, c in lines)
    assert "00b_corrupt.png" in err


def test_cli_read_json_and_glob(ckpt, image_paths, capsys):
    pattern = str(image_paths[0].parent / "0[34]_*.png")
    assert main(["read", "--model", str(ckpt), "--json", "--refine-iters", "2", pattern]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["text"] for r in rows] == ["a", "2024"]
    assert set(rows[0]) == {"path", "text", "confidence"}


def test_cli_read_missing_path_and_bad_model(ckpt, tmp_path, capsys):
    assert main(["read", "--model", str(ckpt), str(tmp_path / "nothing-here.png")]) == 1
    assert "nothing-here.png" in capsys.readouterr().err
    img = tmp_path / "x.png"
    Image.new("RGB", (20, 10)).save(img)
    assert main(["read", "--model", str(tmp_path / "nope.ckpt"), str(img)]) == 1
    assert "nope.ckpt" in capsys.readouterr().err


def test_compile_option_reaches_the_model(ckpt, monkeypatch):
    from clip4str.model.clip4str import CLIP4STR

    calls = []
    monkeypatch.setattr(CLIP4STR, "enable_compile", lambda self, *a, **k: calls.append(self))
    reader = clip4str.load(ckpt, compile=True)
    assert calls == [reader.model]
    assert clip4str.load(ckpt).model is not None and len(calls) == 1


def test_unusable_devices_give_one_clear_error(ckpt, image_paths, capsys):
    with pytest.raises(ValueError, match="unknown device 'foo'"):
        clip4str.load(ckpt, device="foo")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cpu"):
            clip4str.load(ckpt, device="cuda")
        assert main(["read", "--model", str(ckpt), "--device", "cuda:1", str(image_paths[0])]) == 1
        assert "no CUDA GPU" in capsys.readouterr().err


def test_read_resolves_charset_test_presets_and_refuses_empty_ones(ckpt, image_paths, capsys):
    assert main(["read", "--model", str(ckpt), "--charset-test", "36", "--json", str(image_paths[0])]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "Chicken"  # the 94-char head still reads case
    reader = clip4str.load(ckpt, charset_test="0123456789abcdefghijklmnopqrstuvwxyz")
    assert reader.model.charset_adapter_for(reader.options.charset_test)("Ab-1") == "ab1"
    assert reader.model.charset_adapter("Ab-1") == "Ab-1"  # a decoding option: the model's own is kept
    with pytest.raises(ValueError, match="charset_test must not be empty"):
        clip4str.load(ckpt, charset_test="")
    with pytest.raises(ValueError, match="batch_size"):
        reader.read(image_paths[:2], batch_size=0)


def test_missing_vocabulary_is_reported_at_load_not_at_read(ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP4STR_BPE_PATH", str(tmp_path / "moved-away.txt.gz"))
    with pytest.raises(FileNotFoundError, match="CLIP4STR_BPE_PATH"):
        clip4str.load(ckpt)
    # The visual branch alone needs no vocabulary.
    assert len(clip4str.load(ckpt, visual_only=True).read(Image.new("RGB", (60, 20)))) == 1
