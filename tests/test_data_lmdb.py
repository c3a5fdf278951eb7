"""LMDB reading (real fixture, recursion, workers, corrupt images, errors) and atomic writing."""

from __future__ import annotations

import io

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from clip4str.charset import CHARSET_36, CHARSET_94
from clip4str.data.lmdb_dataset import LabelFileDataset, LmdbDataset, build_dataset, find_lmdbs
from clip4str.data.lmdb_tools import create_lmdb, lmdb_info
from clip4str.data.lmdb_writer import LmdbWriter, write_lmdb
from clip4str.data.transforms import Preprocess
from clip4str.errors import DatasetError, ImageReadError

TOY_LABELS = [
    "GRAND",
    "HOTEL",
    "HOTEL",
    "PACIFIC",
    "03/09/2009",
    "ANING",
    "Virgin",
    "america",
    "ATTACK",
    "DAVIDSON",
]


def _png(value: int, size=(12, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buf, format="PNG")
    return buf.getvalue()


def _label_of_pixel(img) -> str:
    """The tiny test images encode their label index in their grey level."""
    return f"w{int(img[0, 0, 0])}"


def _make(path, n, corrupt=(), start=0):
    samples = []
    for i in range(n):
        data = b"\x89PNG broken" if i in corrupt else _png(start + i)
        samples.append((data, f"w{start + i}"))
    write_lmdb(path, samples)
    return path


def _array(img):
    return np.asarray(img)


def test_real_lmdb_fixture_reads_with_right_labels(realdata_dir):
    path = realdata_dir / "mmocr_rec_toy_dataset" / "imgs.lmdb"
    ds = LmdbDataset(path, CHARSET_94)
    assert len(ds) == 10 and ds.num_raw == 10
    assert [ds[i][1] for i in range(10)] == TOY_LABELS
    img, _ = ds[0]
    assert img.mode == "RGB" and min(img.size) > 5
    # The LMDB holds the same images as the folder next to it.
    folder = LabelFileDataset(realdata_dir / "mmocr_rec_toy_dataset" / "labels.tsv")
    assert folder.labels == TOY_LABELS
    assert [folder[i][0].size for i in range(10)] == [ds[i][0].size for i in range(10)]
    assert ds.sample_key(3).endswith("imgs.lmdb:image-000000004")


def test_real_lmdb_with_36_charset_and_transform(realdata_dir):
    root = realdata_dir / "mmocr_rec_toy_dataset"
    ds = build_dataset(root, CHARSET_36, max_label_length=7, transform=Preprocess(image_size=(32, 128)))
    assert ds.counts == {"imgs.lmdb": 8}  # '03/09/2009' and 'DAVIDSON' are longer than 7
    assert ds.filter_counts["too_long"] == 2
    x, label = ds[0]
    assert x.shape == (3, 32, 128) and label == "grand"


def test_recursive_build_counts_and_concat(tmp_path):
    _make(tmp_path / "train" / "real" / "a", 3, start=0)
    _make(tmp_path / "train" / "real" / "nested" / "b", 2, start=10)
    _make(tmp_path / "train" / "synth" / "c", 4, start=20)
    ds = build_dataset(tmp_path / "train", "w0123456789")
    assert ds.counts == {"real/a": 3, "real/nested/b": 2, "synth/c": 4}
    assert len(ds) == 9
    labels = [ds[i][1] for i in range(len(ds))]
    assert labels == ["w0", "w1", "w2", "w10", "w11", "w20", "w21", "w22", "w23"]
    assert all(_label_of_pixel(_array(ds[i][0])) == labels[i] for i in range(len(ds)))
    assert ds.sample_key(4).endswith("b:image-000000002")
    both = build_dataset([tmp_path / "train" / "real", tmp_path / "train" / "synth"], "w0123456789")
    assert list(both.counts) == ["real/a", "real/nested/b", "synth/c"]


def test_unfinished_write_is_skipped_and_refused(tmp_path):
    _make(tmp_path / "ok", 2)
    half = tmp_path / "half.tmp-1234"  # what a killed writer leaves: data, but no num-samples
    env = lmdb.open(str(half), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"image-000000001", _png(1))
        txn.put(b"label-000000001", b"w1")
    env.close()
    assert find_lmdbs(tmp_path) == [tmp_path / "ok"]
    with pytest.raises(DatasetError, match="num-samples"):
        LmdbDataset(half, CHARSET_36)


def test_missing_and_empty_datasets_name_the_path(tmp_path):
    with pytest.raises(DatasetError, match="does not exist: .*nowhere"):
        build_dataset(tmp_path / "nowhere", CHARSET_36)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no LMDB.*empty"):
        build_dataset(tmp_path / "empty", CHARSET_36)
    _make(tmp_path / "digits", 2)
    with pytest.raises(DatasetError, match="no usable samples.*digits"):
        build_dataset(tmp_path / "digits", "xyz")  # every label is dropped by the charset
    assert len(build_dataset(tmp_path / "digits", "xyz", allow_empty=True)) == 0


def test_corrupt_image_is_skipped_and_counted(tmp_path, caplog):
    path = _make(tmp_path / "c", 5, corrupt={2})
    ds = LmdbDataset(path, "w0123456789")
    assert len(ds) == 5  # known without decoding
    img, label = ds[2]  # the next valid sample takes its place
    assert label == "w3" and _label_of_pixel(_array(img)) == "w3"
    assert ds.corrupt_count == 1
    assert "image-000000003" in caplog.text
    ds[2]
    assert ds.corrupt_count == 1  # counted once
    img, label = ds[4]
    assert label == "w4"
    with pytest.raises(ImageReadError, match="image-000000003"):
        LmdbDataset(path, "w0123456789", skip_corrupt=False)[2]


def test_corrupt_images_never_stop_a_multiworker_loader(tmp_path):
    path = _make(tmp_path / "c", 12, corrupt={1, 7})
    ds = LmdbDataset(path, "w0123456789", transform=lambda img: torch.from_numpy(np.asarray(img).copy()))
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    labels = [lbl for _, batch in loader for lbl in batch]
    assert len(labels) == 12 and "w1" not in labels and "w7" not in labels
    assert ds.corrupt_count == 2  # summed over the worker processes


def test_all_corrupt_raises_clear_error(tmp_path):
    path = _make(tmp_path / "bad", 2, corrupt={0, 1})
    with pytest.raises(DatasetError, match="no decodable image"):
        LmdbDataset(path, "w0123456789")[0]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_open_their_own_environment(realdata_dir, context):
    path = realdata_dir / "mmocr_rec_toy_dataset" / "imgs.lmdb"
    ds = LmdbDataset(path, CHARSET_94, transform=Preprocess(image_size=(32, 128)))
    ds[0]  # the parent has an open environment before the workers start
    other = LmdbDataset(path, CHARSET_36)  # the same file twice in one process
    assert other[0][1] == "grand"
    loader = DataLoader(
        ds, batch_size=4, num_workers=2 if context == "fork" else 1, multiprocessing_context=context
    )
    batches = list(loader)
    assert [lbl for _, b in batches for lbl in b] == TOY_LABELS
    assert batches[0][0].shape == (4, 3, 32, 128)


def test_min_image_dim_and_missing_label_key(tmp_path):
    path = tmp_path / "m"
    with LmdbWriter(path) as w:
        w.add(_png(1, size=(40, 20)), "w1")
        w.add(_png(2, size=(4, 4)), "w2")
        w.add(_png(3, size=(40, 20)), "w3")
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.delete(b"label-000000003")
    env.close()
    ds = LmdbDataset(path, "w0123456789", min_image_dim=8)
    assert ds.labels == ["w1"]
    assert ds.filter_counts["too_small"] == 1 and ds.filter_counts["missing_label"] == 1


# ------------------------------------------------------------------------------------------------
# Writing


def test_writer_is_atomic_on_error(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with LmdbWriter(out) as w:
            w.add(_png(1), "a")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_writer_refuses_existing_then_overwrites(tmp_path):
    out = _make(tmp_path / "out", 2)
    with pytest.raises(DatasetError, match="exists"):
        LmdbWriter(out)
    _make_over = write_lmdb(out, [(_png(9), "w9")], overwrite=True)
    assert _make_over == 1
    assert LmdbDataset(out, "w0123456789").labels == ["w9"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_writer_grows_the_map(tmp_path):
    big = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")
    with LmdbWriter(tmp_path / "g", map_size=64 * 1024, commit_every=3) as w:
        for _ in range(10):
            w.add(buf.getvalue(), "x")
    assert len(LmdbDataset(tmp_path / "g", "x")) == 10


def test_create_round_trips_iiit5k_bytes_and_labels(realdata_dir, tmp_path):
    labels_file = realdata_dir / "iiit5k_test" / "labels.tsv"
    report = create_lmdb(labels_file, tmp_path / "iiit", progress=False)
    assert report.written == 3000 and report.skipped == []
    lines = labels_file.read_text(encoding="utf-8").splitlines()[1:]
    env = lmdb.open(str(tmp_path / "iiit"), readonly=True, lock=False)
    with env.begin() as txn:
        assert txn.get(b"num-samples") == b"3000"
        for i in (1, 2, 1500, 3000):
            rel, label = lines[i - 1].split("\t")[:2]
            assert txn.get(f"label-{i:09d}".encode()).decode() == label
            assert txn.get(f"image-{i:09d}".encode()) == (labels_file.parent / rel).read_bytes()
    env.close()
    ds = LmdbDataset(tmp_path / "iiit", CHARSET_94)
    assert len(ds) == 3000 and ds.labels[0] == lines[0].split("\t")[1]


def test_create_skips_and_reports_bad_images(tmp_path):
    (tmp_path / "good.png").write_bytes(_png(5))
    (tmp_path / "bad.png").write_bytes(b"definitely not a png")
    labels = tmp_path / "labels.txt"
    labels.write_text("good.png\tok\nbad.png\tx\nmissing.png\ty\n", encoding="utf-8")
    report = create_lmdb(labels, tmp_path / "out", progress=False)
    assert report.written == 1
    assert {p.name: reason.split(":")[0] for p, reason in report.skipped} == {
        "bad.png": "not a decodable image",
        "missing.png": "cannot read",
    }
    only_bad = tmp_path / "only_bad.txt"
    only_bad.write_text("bad.png\tx\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="none of the 1 images"):
        create_lmdb(only_bad, tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2").exists()


def test_interrupted_create_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    for i in range(5):
        (tmp_path / f"{i}.png").write_bytes(_png(i))
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{i}.png\tw{i}\n" for i in range(5)), encoding="utf-8")
    import clip4str.data.lmdb_tools as tools

    calls = {"n": 0}
    real = tools.decode_image_bytes

    def interrupt_on_third(data, name):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(data, name)

    monkeypatch.setattr(tools, "decode_image_bytes", interrupt_on_third)
    with pytest.raises(KeyboardInterrupt):
        create_lmdb(labels, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_info_counts_lengths_chars_and_corrupt(tmp_path):
    path = tmp_path / "i"
    write_lmdb(path, [(_png(1), "ab"), (b"junk", "Abc"), (_png(2), "a-é中")])
    (info,) = lmdb_info(path, charset=CHARSET_36, verify=True)
    assert info.num_samples == 3
    assert info.length_histogram == {2: 1, 3: 1, 4: 1}
    assert info.chars["a"] == 2 and info.chars["A"] == 1
    assert set(info.outside_charset) == {"-", "中"}  # 'A' folds to 'a', 'é' normalises to 'e'
    assert info.corrupt_images == [2]
    assert info.filter_counts["kept"] == 3 and info.filter_counts["chars_removed"] == 1


def test_packed_labels_behave_like_a_list():
    from clip4str.data.lmdb_dataset import PackedStrings

    items = ["", "a", "Tiếng", "中文", "xyz"]
    packed = PackedStrings.from_strings(items)
    assert len(packed) == 5 and list(packed) == items and packed == items and packed == tuple(items)
    assert packed[-1] == "xyz" and packed[1:3] == ["a", "Tiếng"] and packed != items[:4]
    assert "中文" in packed and packed.index("xyz") == 4
    with pytest.raises(IndexError):
        packed[5]
