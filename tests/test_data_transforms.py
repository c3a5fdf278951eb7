"""Image loading and the official inference preprocessing (bit-exact against the golden inputs)."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

from clip4str.config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PreprocessConfig
from clip4str.data.transforms import Preprocess, load_image, preprocess, preprocess_one, resize
from clip4str.errors import ImageReadError


@pytest.fixture(scope="module")
def golden_inputs(golden_dir):
    data = torch.load(golden_dir / "inputs" / "inputs.pt", weights_only=True)
    images = [load_image(golden_dir / "inputs" / name) for name in data["names"]]
    return data, images


def test_resize_matches_official_uint8_pixels(golden_inputs):
    data, images = golden_inputs
    pixels = np.stack([np.asarray(resize(img, (224, 224))) for img in images])
    assert torch.equal(torch.from_numpy(pixels), data["images_uint8_resized"])


def test_preprocess_is_bit_exact_with_official_half_normalisation(golden_inputs):
    data, images = golden_inputs
    batch = preprocess(images, PreprocessConfig())
    assert batch.dtype == torch.float32 and batch.shape == (8, 3, 224, 224)
    assert torch.equal(batch, data["images_norm05"])
    for i, img in enumerate(images):  # the per-sample path used by dataset workers is the same computation
        assert torch.equal(preprocess_one(img, PreprocessConfig()), batch[i])


def test_preprocess_openai_statistics_match_training_golden_hash(golden_dir, golden_inputs):
    _, images = golden_inputs
    train = torch.load(golden_dir / "golden_train.pt", weights_only=True)
    batch_a = train["batches"]["A"]
    cfg = PreprocessConfig(mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    x = preprocess([images[i] for i in batch_a["indices"]], cfg)
    assert hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest() == batch_a["images_sha256_f32_bytes"]


def test_preprocess_non_square_size_and_empty_batch():
    cfg = PreprocessConfig(image_size=(32, 128))
    img = Image.new("RGB", (50, 20), (255, 0, 0))
    out = Preprocess(cfg)(img)
    assert out.shape == (3, 32, 128)
    assert torch.allclose(out[0], torch.ones(32, 128)) and torch.allclose(out[1], -torch.ones(32, 128))
    assert preprocess([], cfg).shape == (0, 3, 32, 128)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_load_image_sources_agree(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    path = tmp_path / "x.png"
    img.save(path)
    for src in (path, str(path), _png_bytes(img), img, rgb, rgb.astype(np.float64) / 255.0):
        out = load_image(src)
        assert out.mode == "RGB" and out.size == (9, 7)
        assert np.array_equal(np.asarray(out), rgb), type(src)


def test_load_image_grey_and_alpha_arrays():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = np.asarray(load_image(grey))
    assert out.shape == (3, 4, 3) and np.array_equal(out[..., 1], grey)
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    assert np.asarray(load_image(rgba))[0, 0].tolist() == [200, 0, 0]  # alpha dropped like convert('RGB')
    assert load_image(Image.new("L", (3, 3), 7)).mode == "RGB"


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((2, 2, 2), dtype=np.uint8), "shape"),
        (np.full((2, 2, 3), 2.0), "[0, 1]"),
        (np.zeros((2, 2, 3), dtype=np.int32), "dtype"),
    ],
)
def test_load_image_rejects_bad_arrays(array, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_image(array)


def test_load_image_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageReadError, match="nope.png"):
        load_image(missing)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(
        ImageReadError, match=r"notes.png: not an image \(no format Pillow reads in 12 bytes\)"
    ):
        load_image(text)
    with pytest.raises(ImageReadError, match="directory"):
        load_image(tmp_path)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(_png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))[:60])
    with pytest.raises(ImageReadError, match="cut.png"):
        load_image(truncated)
    with pytest.raises(TypeError):
        load_image(3.5)  # type: ignore[arg-type]


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    from clip4str.data.transforms import load_image

    img = Image.new("RGB", (40, 10), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 10))  # blue at the stored left end
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show rotated 90 degrees clockwise
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif, quality=95)
    upright = load_image(path)
    assert upright.size == (10, 40)
    r, g, b = upright.getpixel((5, 2))  # the blue end is now on top
    assert b > 200 and r < 60
    assert load_image(path.read_bytes()).size == (10, 40)
