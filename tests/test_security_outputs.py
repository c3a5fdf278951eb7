"""The one output guard (issue 24, items 1-3): no command writes over an input, a model or a ground-truth
file, or replaces a file it did not write without --overwrite."""

from __future__ import annotations

import json
import os
import sys

import pytest

from clip4str.errors import OutputError, WriteError
from clip4str.files import OutputGuard, atomic_write


# ------------------------------------------------------------------------------------ the guard itself
def test_guard_refuses_a_protected_input_even_with_overwrite(tmp_path):
    src = tmp_path / "in.png"
    src.write_bytes(b"photo")
    for overwrite in (False, True):
        guard = OutputGuard(overwrite=overwrite)
        guard.protect(src, "an input image")
        with pytest.raises(OutputError, match=r"--out .*in\.png: is an input image; it would be overwritten"):
            guard.claim(src, "--out")
    assert src.read_bytes() == b"photo"


def test_guard_sees_links_and_files_inside_protected_folders(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    link = tmp_path / "link.safetensors"
    link.symlink_to(model / "model.safetensors")
    hard = tmp_path / "hard.bin"
    os.link(model / "model.safetensors", hard)
    guard = OutputGuard(overwrite=True)
    guard.protect_model(str(model))
    for target in (model / "model.safetensors", link, hard):
        with pytest.raises(OutputError, match="a file of the model"):
            guard.write_bytes(target, b"report", "--out")
    assert (model / "model.safetensors").read_bytes() == b"weights"
    guard.write_bytes(model / "report.txt", b"new file", "--out")  # a new file beside it is fine


def test_guard_replaces_only_its_own_files_without_overwrite(tmp_path):
    theirs = tmp_path / "x.png"
    theirs.write_bytes(b"user file")
    with pytest.raises(OutputError, match="already exists and this run did not write it; give --overwrite"):
        OutputGuard().write_bytes(theirs, b"ours", "--draw")
    assert theirs.read_bytes() == b"user file"
    guard = OutputGuard()
    ours = tmp_path / "ours.txt"
    guard.write_text(ours, "one", "--out")
    guard.write_text(ours, "two", "--out")  # written by this run: may be rewritten
    assert ours.read_text() == "two"
    OutputGuard(overwrite=True).write_bytes(theirs, b"replaced", "--draw")
    assert theirs.read_bytes() == b"replaced"


def test_guard_two_options_one_file_and_folders(tmp_path):
    guard = OutputGuard()
    guard.claim(tmp_path / "r.txt", "--out")
    with pytest.raises(OutputError, match="--out names the same file"):
        guard.claim(tmp_path / "r.txt", "--errors")
    with pytest.raises(OutputError, match="is a folder"):
        guard.claim(tmp_path, "--out")
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="--draw .*: is not a folder"):
        guard.claim_folder(tmp_path / "f", "--draw")
    with pytest.raises(OutputError, match="not a folder"):
        guard.claim(tmp_path / "f" / "a.txt", "--out")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_guard_checks_an_unwritable_folder_at_once():
    with pytest.raises(OutputError, match="--draw /proc/forbidden"):
        OutputGuard().claim_folder("/proc/forbidden", "--draw")


def test_atomic_write_without_replace_leaves_a_file_that_appeared(tmp_path):
    target = tmp_path / "t.txt"

    def racer(tmp):
        tmp.write_text("ours")
        target.write_text("appeared")

    with pytest.raises(FileExistsError):
        atomic_write(target, racer, replace=False)
    assert target.read_text() == "appeared"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]
    guard = OutputGuard()
    target.unlink()
    with pytest.raises(OutputError, match="appeared while it was being written"):
        guard.write(target, racer, "--out")


def test_guard_write_failure_is_one_write_error(tmp_path):
    def full(tmp):
        raise OSError(28, "No space left on device")

    with pytest.raises(WriteError, match="--out .*the disk is full"):
        OutputGuard().write(tmp_path / "r.txt", full, "--out")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ commands
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    import torch

    from clip4str.model.clip4str import CLIP4STR
    from clip4str.presets import model_preset
    from clip4str.weights import save_model

    torch.manual_seed(0)
    return save_model(CLIP4STR(model_preset("tiny")), tmp_path_factory.mktemp("m") / "model")


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_export_onto_its_own_source_is_refused(tiny_model_dir, capsys):
    """Issue 24 item 3: `export SRC SRC --dtype bf16` replaced the fp32 weights, silently, exit 0."""
    from clip4str.cli import main

    before = _snapshot(tiny_model_dir)
    for extra in ([], ["--overwrite"]):
        assert main(["export", str(tiny_model_dir), str(tiny_model_dir), "--dtype", "bf16", *extra]) == 1
        assert "OUT" in capsys.readouterr().err
    assert _snapshot(tiny_model_dir) == before


def test_export_replaces_an_earlier_export_only_with_overwrite(tiny_model_dir, tmp_path, capsys):
    from clip4str.cli import main

    out = tmp_path / "out"
    assert main(["export", str(tiny_model_dir), str(out)]) == 0
    first = _snapshot(out)
    assert main(["export", str(tiny_model_dir), str(out), "--dtype", "bf16"]) == 1
    assert "give --overwrite" in capsys.readouterr().err
    assert _snapshot(out) == first
    assert main(["export", str(tiny_model_dir), str(out), "--dtype", "bf16", "--overwrite"]) == 0
    assert _snapshot(out)["model.safetensors"] != first["model.safetensors"]


def _photo(path, value=200):
    from PIL import Image

    Image.new("RGB", (64, 32), (value, value, value)).save(path)
    return path


def test_read_draw_never_writes_over_the_input_photos(tiny_model_dir, tmp_path, capsys):
    """Issue 24 item 1: `read --detect photos/words.png photos/words.jpg --draw photos` replaced the photos
    themselves, silently, exit 0. Refused before the model loads, even with --overwrite."""
    from clip4str.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    png, jpg = _photo(photos / "words.png"), _photo(photos / "words.jpg", 90)
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text("".join(f'{{"path": "{p}", "boxes": [[0, 0, 30, 20]]}}\n' for p in (png, jpg)))
    before = _snapshot(photos)
    for extra in ([], ["--overwrite"]):
        code = main(
            ["read", "--model", str(tiny_model_dir), "--boxes", str(boxes), "--draw", str(photos), *extra]
        )
        assert code == 1
        err = capsys.readouterr().err
        assert "--draw" in err and "is an input photo" in err and "clip4str: model" not in err
    assert _snapshot(photos) == before


def test_read_draw_keeps_an_unrelated_file_unless_overwrite(tiny_model_dir, tmp_path, capsys):
    """Issue 24 item 1: an input x.bmp drew over an unrelated x.png in DIR."""
    from clip4str.cli import main

    bmp = _photo(tmp_path / "x.bmp")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.png").write_bytes(b"the user's own x.png")
    boxes = tmp_path / "b.txt"
    boxes.write_text("0,0,30,20\n")
    args = ["read", "--model", str(tiny_model_dir), "--boxes", str(boxes), str(bmp), "--draw", str(out)]
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err
    assert (out / "x.png").read_bytes() == b"the user's own x.png"
    assert main([*args, "--overwrite"]) == 0
    from PIL import Image

    with Image.open(out / "x.png") as im:
        assert im.size == (64, 32)
    assert sorted(p.name for p in out.iterdir()) == ["x.png"]  # no temporary file left


def test_read_draw_into_an_unwritable_folder_fails_first(tiny_model_dir, tmp_path, capsys):
    """Issue 24 item 13: --draw /proc/forbidden was checked only after the first photo, without naming --draw."""
    from clip4str.cli import main

    if not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc")
    bmp = _photo(tmp_path / "x.bmp")
    boxes = tmp_path / "b.txt"
    boxes.write_text("0,0,30,20\n")
    args = [
        "read",
        "--model",
        str(tiny_model_dir),
        "--boxes",
        str(boxes),
        str(bmp),
        "--draw",
        "/proc/forbidden",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "--draw /proc/forbidden" in err and "clip4str: model" not in err


def test_eval_outputs_never_overwrite_the_model(tiny_model_dir, tmp_path, capsys):
    """Issue 24 item 2: `eval --model DIR --labels l.tsv --out DIR/model.safetensors` overwrote the model."""
    from clip4str.cli import main

    _photo(tmp_path / "a.png")
    labels = tmp_path / "l.tsv"
    labels.write_text("a.png\tx\n")
    before = _snapshot(tiny_model_dir)
    base = ["eval", "--model", str(tiny_model_dir), "--labels", str(labels), "--quiet"]
    for name in ("model.safetensors", "config.json"):
        for option in ("--out", "--errors"):
            for extra in ([], ["--overwrite"]):
                assert main([*base, option, str(tiny_model_dir / name), *extra]) == 1
                err = capsys.readouterr().err
                assert f"{option} " in err and "a file of the model (--model)" in err
                assert "clip4str: model" not in err  # refused before the model loads
    assert _snapshot(tiny_model_dir) == before


def test_eval_scenes_out_never_overwrites_ground_truth(tiny_model_dir, tmp_path, capsys):
    """Issue 24 item 2: `eval --scenes DIR --out DIR/Gts/gt_img_1.txt` overwrote a ground-truth file."""
    from clip4str.cli import main

    scenes = tmp_path / "scenes"
    (scenes / "Imgs").mkdir(parents=True)
    (scenes / "Gts").mkdir()
    _photo(scenes / "Imgs" / "img_1.jpg")
    gt = scenes / "Gts" / "gt_img_1.txt"
    gt.write_text("0,0,30,0,30,20,0,20,word\n")
    for extra in ([], ["--overwrite"]):
        args = ["eval", "--model", str(tiny_model_dir), "--scenes", str(scenes), "--out", str(gt), *extra]
        assert main(args) == 1
        assert "ground-truth file of --scenes" in capsys.readouterr().err
    assert gt.read_text() == "0,0,30,0,30,20,0,20,word\n"


def test_eval_out_replaces_an_existing_report_only_with_overwrite(tiny_model_dir, tmp_path, capsys):
    from clip4str.cli import main

    _photo(tmp_path / "a.png")
    labels = tmp_path / "l.tsv"
    labels.write_text("a.png\tx\n")
    out, errors = tmp_path / "r.json", tmp_path / "e.tsv"
    out.write_text("an older report")
    base = ["eval", "--model", str(tiny_model_dir), "--labels", str(labels), "--quiet", "--format", "json"]
    assert main([*base, "--out", str(out), "--errors", str(errors)]) == 1
    assert "give --overwrite" in capsys.readouterr().err
    assert out.read_text() == "an older report" and not errors.exists()
    assert main([*base, "--out", str(out), "--errors", str(errors), "--overwrite"]) == 0
    assert '"results"' in out.read_text() or "{" in out.read_text()
    assert errors.read_text().startswith("dataset\tkey\tlabel")


def test_explain_out_onto_its_input_is_refused(tiny_model_dir, tmp_path, capsys):
    """Issue 24 item 3: `explain IMG --out IMG` replaced the input with the figure, silently, exit 0."""
    from clip4str.cli import main

    img = _photo(tmp_path / "word.png")
    before = img.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main(["explain", str(img), "--model", str(tiny_model_dir), "--out", str(img), *extra]) == 1
        err = capsys.readouterr().err
        assert "--out" in err and "the input image" in err and "clip4str: model" not in err
    assert img.read_bytes() == before


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names")
def test_explain_output_is_escaped_like_read(tiny_model_dir, tmp_path, capsys):
    """Issue 24 item 11: explain printed raw names (a newline split the line, --json held invalid UTF-8 and
    a surrogate aborted it); it now uses read's output writer."""
    from clip4str.cli import main
    from clip4str.cli.output import parse_tsv_field

    folder = os.fsencode(tmp_path)
    raw = folder + b"/two\nlines\t\xff.png"
    _photo(os.fsdecode(raw))
    name = os.fsdecode(raw)
    assert main(["explain", name, "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and parse_tsv_field(out.split("\t")[0]) == name
    assert main(["explain", name, "--model", str(tiny_model_dir), "--json"]) == 0
    data = capsys.readouterr().out.encode("utf-8")  # valid UTF-8 text ...
    record = json.loads(data)
    assert data.count(b"\n") == 1 and os.fsencode(record["path"]) == raw  # ... naming the same bytes


def test_plot_never_writes_over_a_file_of_the_run(tmp_path, capsys):
    """Every writer goes through the guard: `plot RUN -o RUN/last.ckpt` would have replaced a checkpoint."""
    from clip4str.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("step,train_loss,lr\n1,0.5,1e-4\n2,0.4,1e-4\n")
    (run / "last.ckpt").write_bytes(b"checkpoint")
    for target in ("last.ckpt", "metrics.csv"):
        assert main(["plot", str(run), "-o", str(run / target), "--overwrite"]) == 1
        assert "a file of the training run" in capsys.readouterr().err
    assert (run / "last.ckpt").read_bytes() == b"checkpoint"
    assert main(["plot", str(run)]) == 0 and main(["plot", str(run)]) == 0  # the default plot is replaced
    elsewhere = tmp_path / "mine.png"
    elsewhere.write_bytes(b"not a plot")
    assert main(["plot", str(run), "-o", str(elsewhere)]) == 1
    assert elsewhere.read_bytes() == b"not a plot"
    assert main(["plot", str(run), "-o", str(elsewhere), "--overwrite"]) == 0
    assert elsewhere.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in run.iterdir()) == ["curves.png", "last.ckpt", "metrics.csv"]


def test_commands_write_files_only_through_the_output_guard():
    """The way items 1-3 arose: new commands wrote with Path.write_text / Image.save / open(..., "w")
    beside the guard. No command module (cli/, detect/, serve/, explain, eval_scenes) may write a file
    except through ``clip4str.files`` (``guard.write*`` or a writer handed a temporary path ``tmp``)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "src" / "clip4str"
    modules = [*root.glob("cli/*.py"), *root.glob("detect/*.py"), *root.glob("serve/*.py")]
    modules += [root / "explain.py", root / "eval_scenes.py"]
    writers = {
        "write_text",
        "write_bytes",
        "savefig",
        "save",
        "write_errors",
        "replace",
        "rename",
        "symlink_to",
    }
    found = []
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            owner = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0] if node.args else None
            if (
                "guard" in owner.lower()
                or owner == "tmp"
                or (isinstance(first, ast.Name) and first.id in ("tmp", "buf"))
            ):
                continue  # through the guard, into its temporary file, or into memory
            mode = next((a for a in node.args[1:2] if name == "open" and not owner), None)
            mode = mode or next((a for a in node.args[:1] if name == "open" and owner), None)
            mode = mode or next((k.value for k in node.keywords if k.arg == "mode"), None)
            opens_to_write = (
                name == "open"
                and isinstance(mode, ast.Constant)
                and any(c in str(mode.value) for c in "wax+")
            )
            is_os = owner in ("os", "shutil")
            if opens_to_write or (name in writers and (is_os or name != "replace")):
                found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)[:70]}")
    assert not found, "writes beside the output guard (use clip4str.files.OutputGuard):\n" + "\n".join(found)


def test_docs_security_names_only_tests_that_exist():
    """docs/security.md ties each statement to a test: every test it names must exist (a renamed or deleted
    test fails here instead of leaving an unproven promise)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "security.md").read_text(encoding="utf-8")
    named, current = [], None
    for m in re.finditer(r"`(test_\w+\.py)?::(test_\w+)`", text):
        current = m.group(1) or current
        named.append((current, m.group(2)))
    assert len(named) > 60
    missing = [
        f"{file}::{name}"
        for file, name in named
        if not re.search(rf"^def {name}\(", (root / "tests" / file).read_text(encoding="utf-8"), re.M)
    ]
    assert not missing, missing
