"""Evaluation: metrics against hand-computed cases, the official protocol, benchmark discovery, the runner
on LMDB and label-file test sets (golden tiny model), and ``clip4str eval`` agreeing with ``clip4str read``."""

from __future__ import annotations

import csv
import json
import random
import shutil
import string
from pathlib import Path

import pytest

import clip4str
from clip4str.charset import CHARSET_36, CHARSET_62, CHARSET_94, CharsetAdapter
from clip4str.cli import main
from clip4str.data.labels import LabelFilter
from clip4str.data.lmdb_writer import write_lmdb
from clip4str.errors import DatasetError
from clip4str.evaluate import (
    BENCHMARK,
    BENCHMARK_SUB,
    DatasetResult,
    edit_distance,
    evaluate_benchmarks,
    evaluate_label_file,
    find_benchmarks,
    label_file_source,
    normalized_edit_distance,
    one_minus_ned,
    score,
    test_charset,
    word_accuracy,
)

# ------------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("kitten", "sitting", 3),
        ("flaw", "lawn", 2),
        ("ab", "ba", 2),  # no transpositions (nltk's default, as PARSeq uses it)
        ("", "abc", 3),
        ("abc", "", 3),
        ("", "", 0),
        ("same", "same", 0),
        ("intention", "execution", 5),
    ],
)
def test_edit_distance_hand_computed(a, b, expected):
    assert edit_distance(a, b) == expected
    assert edit_distance(b, a) == expected


def test_edit_distance_matches_rapidfuzz_on_random_strings():
    levenshtein = pytest.importorskip("rapidfuzz.distance").Levenshtein
    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choices("abc1", k=rng.randint(0, 9)))
        b = "".join(rng.choices("abc1", k=rng.randint(0, 9)))
        assert edit_distance(a, b) == levenshtein.distance(a, b), (a, b)


def test_normalized_edit_distance_and_list_metrics():
    assert normalized_edit_distance("abc", "abd") == pytest.approx(1 / 3)
    assert normalized_edit_distance("ab", "abcd") == pytest.approx(2 / 4)  # max of both lengths
    assert normalized_edit_distance("", "abc") == 1.0  # empty prediction
    assert normalized_edit_distance("abc", "") == 1.0  # empty label
    assert normalized_edit_distance("", "") == 0.0
    preds, labels = ["abc", "ab", "", "x"], ["abc", "abcd", "abc", "x"]
    assert word_accuracy(preds, labels) == 0.5
    assert one_minus_ned(preds, labels) == pytest.approx(1 - (0 + 0.5 + 1 + 0) / 4)
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        word_accuracy(["a", "b", "c"], ["a", "b"])
    with pytest.raises(ValueError, match="no samples"):
        one_minus_ned([], [])


def test_dataset_result_sums_and_sample_weighted_combination():
    a = score(["abc", "ab"], ["abc", "abcd"], [0.9, 0.5], name="A")
    b = score(["", "xyz", "x"], ["q", "xyz", "y"], [0.0, 1.0, 0.2], name="B")
    assert (a.num_samples, a.correct, b.num_samples, b.correct) == (2, 1, 3, 1)
    assert a.accuracy == 50.0 and b.accuracy == pytest.approx(100 / 3)
    assert a.one_minus_ned == pytest.approx(100 * (1 - 0.5 / 2))
    assert a.confidence == pytest.approx(70.0)
    assert a.label_length == 3.5 and a.pred_length == 2.5
    both = DatasetResult.combine("AB", [a, b])
    assert both.num_samples == 5 and both.correct == 2
    assert both.accuracy == pytest.approx((2 * a.accuracy + 3 * b.accuracy) / 5)
    assert both.one_minus_ned == pytest.approx((2 * a.one_minus_ned + 3 * b.one_minus_ned) / 5)
    assert both.confidence == pytest.approx((2 * a.confidence + 3 * b.confidence) / 5)
    empty = DatasetResult("none")
    assert empty.accuracy != empty.accuracy  # NaN, not a division error
    failed = DatasetResult("f")
    failed.add("", "", 0.0, failed=True)  # an unreadable sample is never correct, even for an empty label
    assert failed.correct == 0 and failed.failed == 1


def test_protocol_charsets_case_folding_and_punctuation():
    assert test_charset() == CHARSET_36
    assert test_charset(cased=True) == CHARSET_62
    assert set(test_charset(cased=True, punctuation=True)) == set(CHARSET_94)
    assert set(test_charset(punctuation=True)) == set(CHARSET_36 + string.punctuation)

    def protocol(pred: str, label: str, charset: str) -> tuple[str, str | None]:
        return CharsetAdapter(charset)(pred), LabelFilter(charset)(label)

    # Default 36: case and punctuation are ignored on both sides.
    pred, label = protocol("HelloWorld.", "Hello, World!", test_charset())
    assert (pred, label) == ("helloworld", "helloworld")
    assert score([pred], [label]).accuracy == 100.0
    # Cased + punctuation: 'Hello,World!' vs 'HelloWorld.' is wrong, 2 edits over 12 characters.
    pred, label = protocol("HelloWorld.", "Hello, World!", test_charset(True, True))
    assert (pred, label) == ("HelloWorld.", "Hello,World!")
    r = score([pred], [label])
    assert r.accuracy == 0.0 and r.one_minus_ned == pytest.approx(100 * (1 - 2 / 12))
    # Cased only: case matters, punctuation is dropped from both.
    pred, label = protocol("HELLO!", "Hello", test_charset(cased=True))
    assert (pred, label) == ("HELLO", "Hello") and score([pred], [label]).accuracy == 0.0
    # A label with nothing left in the test charset is dropped (not counted), as officially.
    assert LabelFilter(test_charset())("!!!") is None


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _bpe(bpe_path, monkeypatch):
    monkeypatch.setenv("CLIP4STR_BPE_PATH", str(bpe_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def ckpt(golden_dir):
    return golden_dir / "clip4str_tiny.ckpt"


@pytest.fixture(scope="module")
def reader(ckpt, bpe_path):
    mp = pytest.MonkeyPatch()
    mp.setenv("CLIP4STR_BPE_PATH", str(bpe_path))
    try:
        rec = clip4str.load(ckpt, batch_size=4)
        rec.model.caption_tokenizer  # noqa: B018 - load the BPE vocabulary while the variable is set
    finally:
        mp.undo()
    return rec


@pytest.fixture(scope="module")
def golden_images(golden_dir):
    return sorted((golden_dir / "inputs").glob("*.png"))


@pytest.fixture(scope="module")
def read36(reader, golden_images):
    """What ``read`` gives each golden image when decoding with the 36-char test charset."""
    preds = reader.with_options(charset_test=CHARSET_36).read(golden_images)
    return {p.name: pred for p, pred in zip(golden_images, preds)}


IIIT_LABELS = ["Chicken", "stop", "x7-Zq!", "b", "2024"]  # images 00..04
SVT_LABELS = ["Scene Text", "", "A"]  # images 05..07 (an empty label is dropped by the rules)


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory, golden_images):
    root = tmp_path_factory.mktemp("data")
    data = [p.read_bytes() for p in golden_images]
    write_lmdb(root / "test" / "IIIT5k", zip(data[:5], IIIT_LABELS))
    svt = list(zip(data[5:], SVT_LABELS))
    svt.append((b"not an image", "corrupt"))  # LMDB index 4, unreadable: stays in the denominator
    svt.append((data[0], "x" * 30))  # longer than max_label_length 25: dropped
    write_lmdb(root / "test" / "SVT", svt)
    write_lmdb(root / "test" / "mine", [(data[0], "chicken")])  # not a standard name
    return root


def _expected(read36, names, labels):
    adapter, rules = CharsetAdapter(CHARSET_36), LabelFilter(CHARSET_36)
    out = []
    for name, label in zip(names, labels):
        gt = rules(label)
        if gt is not None:
            pred = read36[name]
            out.append((adapter(pred.text), gt, pred.confidence))
    return out


# -------------------------------------------------------------------------------- benchmark runs


def test_find_benchmarks_names_and_errors(bench_root, tmp_path):
    layout = find_benchmarks(bench_root)
    assert list(layout.paths) == ["IIIT5k", "SVT"] and layout.ignored == ["mine"]
    assert find_benchmarks(bench_root / "test").paths == layout.paths  # the test folder itself works too
    assert list(find_benchmarks(bench_root, ["svt", "iiit5K"]).paths) == ["SVT", "IIIT5k"]
    assert list(find_benchmarks(bench_root, ["mine"]).paths) == ["mine"]
    with pytest.raises(DatasetError, match=r"not found under .*: IC13_857, CUTE80; present: IIIT5k, SVT"):
        find_benchmarks(bench_root, ["IC13_857", "IIIT5k", "CUTE80"])
    with pytest.raises(DatasetError, match="no test folder"):
        find_benchmarks(tmp_path)
    (tmp_path / "test" / "Union14M-Benchmarks" / "curve").mkdir(parents=True)
    (tmp_path / "test" / "COCOv1.4").mkdir()
    assert list(find_benchmarks(tmp_path).paths) == ["COCOv1.4", "Union14M/curve"]
    assert list(find_benchmarks(tmp_path, ["curve"]).paths) == ["Union14M/curve"]
    shutil.rmtree(tmp_path / "test")
    (tmp_path / "test" / "other").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no standard benchmark .* found other: name them with --datasets"):
        find_benchmarks(tmp_path)


def test_two_benchmarks_counts_and_weighted_averages(reader, bench_root, golden_images, read36):
    names = [p.name for p in golden_images]
    before = reader.model.config.charset_test
    report = evaluate_benchmarks(reader, bench_root, progress=False)
    assert reader.model.config.charset_test == before  # the test charset is applied only during the run

    iiit, svt = report.results["IIIT5k"], report.results["SVT"]
    assert (iiit.num_samples, svt.num_samples) == (5, 3)
    assert (iiit.failed, svt.failed) == (0, 1)
    assert svt.filtered == {"too_long": 1, "empty": 1}
    expected = {
        "IIIT5k": _expected(read36, names[:5], IIIT_LABELS),
        "SVT": _expected(read36, names[5:], SVT_LABELS) + [("", "corrupt", 0.0)],
    }
    for name, rows in expected.items():
        result = report.results[name]
        preds, gts, confs = zip(*rows)
        assert [r.label for r in report.records[name]] == list(gts)
        assert [r.text for r in report.records[name]] == list(preds)
        assert result.correct == sum(p == g for p, g in zip(preds, gts))
        assert result.accuracy == pytest.approx(100 * word_accuracy(preds, gts))
        assert result.one_minus_ned == pytest.approx(100 * one_minus_ned(preds, gts))
        assert result.confidence == pytest.approx(100 * sum(confs) / len(confs), rel=1e-5)
        assert result.label_length == pytest.approx(sum(map(len, gts)) / len(gts))
    assert report.results["IIIT5k"].correct >= 3  # the golden model reads chicken, stop, 2024
    bad = report.records["SVT"][-1]
    assert bad.error and "cannot decode image" in bad.error and bad.key.endswith("image-000000004")

    groups = {g.name: g for g in report.groups}
    assert list(groups) == ["Benchmark (Subset)", "Benchmark"]
    sub = groups["Benchmark (Subset)"]
    assert sub.present == ["IIIT5k", "SVT"]
    assert sub.missing == [n for n in BENCHMARK_SUB if n not in ("IIIT5k", "SVT")]
    assert groups["Benchmark"].missing == [n for n in BENCHMARK if n not in ("IIIT5k", "SVT")]
    assert sub.combined.num_samples == 8
    assert sub.combined.accuracy == pytest.approx((5 * iiit.accuracy + 3 * svt.accuracy) / 8)
    assert sub.combined.one_minus_ned == pytest.approx((5 * iiit.one_minus_ned + 3 * svt.one_minus_ned) / 8)
    assert report.total.num_samples == 8  # each dataset once, though it is in two groups
    assert report.total.accuracy == pytest.approx(sub.combined.accuracy)
    assert report.images_per_second > 0

    table = report.format("table")
    assert "Benchmark (Subset):" in table and "Combined" in table and "(missing: IC13_857" in table
    assert f"{sub.combined.accuracy:.2f}" in table
    md = report.format("markdown")
    assert "### Benchmark" in md and "| IIIT5k" in md
    rows = list(csv.DictReader(report.format("csv").splitlines()))
    combined_rows = [r for r in rows if r["dataset"] == "Combined"]
    assert float(combined_rows[0]["accuracy"]) == pytest.approx(sub.combined.accuracy, abs=1e-4)
    assert [r["dataset"] for r in rows if r["group"] == "Benchmark (Subset)"] == ["IIIT5k", "SVT", "Combined"]
    data = json.loads(report.format("json"))
    assert data["datasets"]["SVT"]["failed"] == 1 and data["total"]["num_samples"] == 8
    assert data["settings"]["charset_test"] == CHARSET_36
    assert data["groups"][0]["missing"] == sub.missing


def test_label_file_with_missing_and_corrupt_images(reader, tmp_path, golden_images, read36):
    shutil.copy(golden_images[1], tmp_path / "stop.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "labels.tsv").write_text(
        "filename\tlabel\tnote\nstop.png\tSTOP\tx\nbroken.png\tabc\ty\ngone.png\tdef\tz\n", encoding="utf-8"
    )
    report = evaluate_label_file(reader, tmp_path / "labels.tsv", progress=False)
    result = report.results[tmp_path.name]
    assert (result.num_samples, result.failed) == (3, 2)
    stop_ok = CharsetAdapter(CHARSET_36)(read36[golden_images[1].name].text) == "stop"
    assert result.correct == int(stop_ok)
    errors = {r.key.rsplit("/", 1)[-1]: r.error for r in report.failures}
    assert set(errors) == {"broken.png", "gone.png"} and "not found" in errors["gone.png"]
    out = tmp_path / "errors.tsv"
    assert report.write_errors(out) == 3 - result.correct
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t")[:4] == ["dataset", "key", "label", "prediction"]
    assert any("gone.png\tdef\t\t\t0.000000\t" in line for line in lines)


def test_test_charset_is_given_to_the_model_during_the_run(reader, tmp_path, golden_images, monkeypatch):
    from clip4str.api import Recognizer

    (tmp_path / "l.tsv").write_text(f"{golden_images[0]}\tChicken\n", encoding="utf-8")
    seen: list[str | None] = []
    logits = Recognizer.logits

    def recording(self, pixels, options=None):
        seen.append((options or self.options).charset_test)
        return logits(self, pixels, options)

    monkeypatch.setattr(Recognizer, "logits", recording)
    punct = test_charset(punctuation=True)
    report = evaluate_label_file(reader, tmp_path / "l.tsv", charset=punct, progress=False)
    evaluate_label_file(reader, tmp_path / "l.tsv", apply_charset_to_model=False, progress=False)
    assert seen == [punct, reader.options.charset_test]  # official: charset_test shapes the caption
    assert report.charset == punct and report.settings["charset_applied_to_model"]


def test_realdata_svt_label_file(realdata_dir, ckpt, tmp_path):
    svt = realdata_dir / "svt_test"
    source = label_file_source(svt / "labels.tsv", charset=CHARSET_36)
    assert source.name == "svt_test" and len(source) == 647  # header skipped, third column ignored
    raw = [line.split("\t")[1] for line in (svt / "labels.tsv").read_text().splitlines()[1:]]
    assert source.labels == ["".join(c for c in t.lower() if c in CHARSET_36) for t in raw]
    assert all(Path(k).is_file() for k in source.keys[:20])
    # The CLI on a slice of the file, with paths relative to --images.
    head = (svt / "labels.tsv").read_text(encoding="utf-8").splitlines()[:7]
    (tmp_path / "svt6.tsv").write_text("\n".join(head) + "\n", encoding="utf-8")
    out = tmp_path / "report.json"
    args = ["eval", "--model", str(ckpt), "--labels", str(tmp_path / "svt6.tsv")]
    args += ["--images", str(svt), "--format", "json", "--out", str(out), "--quiet"]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert data["total"]["num_samples"] == 6 and data["total"]["failed"] == 0
    assert data["total"]["label_length"] == pytest.approx(sum(map(len, source.labels[:6])) / 6)


# ------------------------------------------------------------------------------------------- CLI


def test_eval_and_read_agree_on_every_image(reader, ckpt, golden_images, tmp_path, capsys):
    lines = [
        f"{p}\t{lab}"
        for p, lab in zip(golden_images, ["chicken", "STOP", "x7zq", "a", "2024", "x", "y", "a"])
    ]
    (tmp_path / "labels.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = evaluate_label_file(reader, tmp_path / "labels.tsv", progress=False)
    from_eval = {r.key: r for r in report.records[tmp_path.name]}
    capsys.readouterr()
    assert (
        main(["read", *map(str, golden_images), "--model", str(ckpt), "--charset-test", CHARSET_36, "--json"])
        == 0
    )
    from_read = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(from_read) == len(golden_images) == len(from_eval)
    for item in from_read:
        rec = from_eval[item["path"]]
        assert rec.raw_text == item["text"]
        assert rec.confidence == pytest.approx(item["confidence"], abs=2e-6)


def test_eval_cli_reports_and_errors(bench_root, ckpt, tmp_path, capsys):
    errors = tmp_path / "errors.tsv"
    args = ["eval", "--model", str(ckpt), "--data", str(bench_root), "--quiet", "--batch-size", "3"]
    assert main([*args, "--format", "markdown", "--errors", str(errors), "--datasets", "IIIT5k,SVT"]) == 0
    cap = capsys.readouterr()
    assert "### Benchmark (Subset)" in cap.out and "| SVT" in cap.out
    assert "images/s" in cap.err and "1 sample(s) could not be read" in cap.err
    assert "SVT: label rules: too_long 1, empty 1" in cap.err
    rows = errors.read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("dataset\tkey\tlabel") and any("corrupt" in r for r in rows[1:])

    out = tmp_path / "r.csv"
    assert main([*args, "--datasets", "IIIT5k", "mine", "--format", "csv", "--out", str(out)]) == 0
    assert capsys.readouterr().out == ""  # the report went to --out
    rows = list(csv.DictReader(out.read_text(encoding="utf-8").splitlines()))
    assert [(r["group"], r["dataset"]) for r in rows if r["group"] in ("Other", "All")] == [
        ("Other", "mine"),
        ("Other", "Combined"),
        ("All", "All"),
    ]
    assert int(rows[-1]["num_samples"]) == 5 + 1  # IIIT5k once, although it is in two groups

    assert main([*args, "--datasets", "IIIT5k", "CUTE80"]) == 1
    assert "not found under" in capsys.readouterr().err
    assert main(["eval", "--model", str(ckpt), "--data", str(bench_root), "--labels", "x.tsv"]) == 2
    assert "exactly one of --data ROOT or --labels FILE" in capsys.readouterr().err
    assert main(["eval", "--model", str(ckpt), "--labels", str(tmp_path / "none.tsv")]) == 1
    assert "label file not found" in capsys.readouterr().err
    assert main(["eval", "--data", str(tmp_path)]) == 1
    assert "no test folder" in capsys.readouterr().err
    (tmp_path / "test" / "SVT").mkdir(parents=True)
    assert main(["eval", "--data", str(tmp_path)]) == 1  # checked before the model would load
    assert "no LMDB (a folder with data.mdb) found at or under" in capsys.readouterr().err


def test_eval_output_paths_are_checked_before_the_model_loads(bench_root, tmp_path, capsys):
    args = ["eval", "--model", str(tmp_path / "never-loaded.ckpt"), "--data", str(bench_root), "--quiet"]
    assert main([*args, "--out", str(tmp_path)]) == 1
    assert "--out" in capsys.readouterr().err
    assert main([*args, "--errors", str(tmp_path / "missing-folder" / "e.tsv")]) == 1
    err = capsys.readouterr().err
    assert "--errors" in err and "never-loaded" not in err
