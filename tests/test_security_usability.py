"""Rough edges of a first run (issue 11, items 13-16): the same option names everywhere, progress that suits
logs, training that can stop and resume on a small CPU, small reporting fixes, Vietnamese rendering."""

from __future__ import annotations

import io
import json
import os
import signal
import unicodedata

import pytest
from PIL import ImageFont
from test_train_support import WORDS_64, make_word_lmdb, tiny_config_dict

from clip4str.cli import build_parser, main
from clip4str.data import synth
from clip4str.progress import ProgressBar
from clip4str.train import logs as train_logs
from clip4str.train.config import load_train_config
from clip4str.train.trainer import Trainer, TrainingStopped, cap_workers, is_better, load_run_config


def _options(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {s for a in sub._actions for s in a.option_strings}


# ------------------------------------------------------------------------------------ item 13
def test_options_mean_the_same_everywhere():
    assert "--charset-test" in _options("read") and "--charset-test" in _options("eval")
    for command in ("read", "eval", "train", "lmdb", "synth"):
        if command == "lmdb":
            continue
        assert "--quiet" in _options(command), command
    assert "--no-progress" in _options("train")  # the older spelling still works
    help_text = next(
        a.help
        for a in next(a for a in build_parser()._actions if a.dest == "command").choices["read"]._actions
        if "--charset-test" in a.option_strings
    )
    assert "text branch" in help_text and "may still hold other characters" in help_text


def test_progress_is_plain_lines_off_a_terminal():
    stream = io.StringIO()
    with ProgressBar(total=3, desc="lmdb create", unit="img", stream=stream, interval=0.0) as bar:
        for _ in range(3):
            bar.update(1)
    text = stream.getvalue()
    assert "\r" not in text and "lmdb create: 3/3 (100%)" in text
    quiet = io.StringIO()
    with ProgressBar(total=3, stream=quiet, enabled=False, interval=0.0) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


def test_synth_and_lmdb_create_write_no_carriage_returns_to_a_log(tmp_path, capsys, monkeypatch):
    import clip4str.progress as progress

    monkeypatch.setattr(progress, "DEFAULT_INTERVAL_S", 0.0)
    out = tmp_path / "s"
    assert main(["synth", "--out", str(out), "--count", "4", "--charset", "36", "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "synth: 4/4 (100%)" in err


# ------------------------------------------------------------------------------------ item 14
@pytest.fixture(scope="module")
def words_lmdb(tmp_path_factory):
    return make_word_lmdb(tmp_path_factory.mktemp("usability") / "train", WORDS_64[:16])


def stop_me_at_step_2(info) -> None:
    if info.step == 2:
        os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_saves_a_resume_point_and_says_how_to_resume(
    tmp_path, words_lmdb, bpe_path, monkeypatch, capsys
):
    monkeypatch.setenv("CLIP4STR_BPE_PATH", str(bpe_path))
    monkeypatch.setattr(train_logs, "PROGRESS_INTERVAL_S", 0.0)
    cfg = load_train_config(tiny_config_dict(tmp_path, words_lmdb, None, max_steps=5, batch_size=4))
    with pytest.raises(TrainingStopped) as info:
        Trainer(cfg, progress=False, on_step_end=[stop_me_at_step_2]).fit()
    message = str(info.value)
    assert "stopped by SIGTERM at step 3" in message and "--resume" in message and "last.ckpt" in message
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is removed again
    err = capsys.readouterr().err
    assert "train: 3/5" in err, err  # plain progress lines with --quiet, not silence
    resumed = Trainer(load_run_config(cfg.output_dir), resume=True, progress=False).fit()
    assert resumed.step == 5


def test_best_moves_on_ties_by_ned_then_loss():
    best = {"accuracy": 0.0, "ned": 10.0, "loss": 3.0, "step": 100}
    assert is_better(0.0, 12.0, 3.5, best)  # same accuracy, better 1-NED
    assert is_better(0.0, 10.0, 2.5, best)  # same accuracy and 1-NED, lower loss
    assert not is_better(0.0, 10.0, 3.5, best)
    assert not is_better(0.0, 9.0, 1.0, best)
    assert is_better(0.1, 0.0, 9.0, best)
    assert is_better(0.0, 0.0, 9.0, {"accuracy": 0.0, "step": 3})  # saved by an older version


def test_cpu_runs_use_no_more_loader_workers_than_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert cap_workers(8, "cpu") == 1
    assert cap_workers(0, "cpu") == 0
    assert cap_workers(8, "cuda") == 8


def test_tiny_preset_saves_resume_points_early():
    cfg = load_train_config("tiny")
    every = cfg.checkpoint_every_n_steps or cfg.val_every_n_steps
    assert 0 < every <= 50 and cfg.data.num_workers <= 1


def test_resume_of_a_missing_folder_says_so(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert "no such folder" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------------------------ item 15
def test_models_json_has_numbers_and_plain_names(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all("(default)" not in r["name"] for r in rows)
    assert sum(1 for r in rows if r.get("default")) == 1
    assert all(r["acc"] is None or isinstance(r["acc"], float) for r in rows)
    assert all(isinstance(r["cached"], bool) for r in rows)


def test_font_hint_names_the_cjk_package():
    assert synth.font_package_hint("中文") == "fonts-noto-cjk"
    assert synth.font_package_hint("한국어") == "fonts-noto-cjk"
    assert synth.font_package_hint("Tiếng") == "fonts-noto-core"


# ------------------------------------------------------------------------------------ item 16
VIETNAMESE = ["MẮM", "Tiếng", "Việt", "ĐỨC", "quốc", "người", "Nguyễn", "Ở", "ẩm", "Ặ"]


def _fonts() -> list[str]:
    fonts = [str(f) for f in synth._bundled_dejavu_fonts()] + [str(f) for f in synth.find_fonts()]
    if not fonts:
        pytest.skip("no fonts on this machine")
    return fonts


def test_vietnamese_letters_match_a_reference_rendering():
    """Every font chosen for a Vietnamese word draws each letter exactly as the font's own precomposed glyph
    (the reference: the basic layout, no shaping). Fonts lacking "Ắ" (DejaVu Sans Mono Oblique, bundled with
    matplotlib) were chosen before, and shaping drew "MĂ´M"."""
    checked = 0
    for path in _fonts():
        shaped = synth._font(path, 40)
        reference = ImageFont.truetype(path, 40, layout_engine=ImageFont.Layout.BASIC)
        for word in VIETNAMESE:
            if not synth.font_supports(path, word):
                continue
            for letter in synth.graphemes(word):
                got, want = shaped.getmask(letter), reference.getmask(letter)
                assert (bytes(got), got.size) == (bytes(want), want.size), (path, word, letter)
                assert shaped.getbbox(letter) == reference.getbbox(letter), (path, word, letter)
                checked += 1
    assert checked > 0


def _ink_runs(mask) -> int:
    import numpy as np

    cols = (np.asarray(mask) > 60).any(axis=0)
    return int(np.sum(cols[1:] & ~cols[:-1]) + cols[0])


def test_decomposed_words_are_rendered_and_labelled_in_nfc():
    fonts = [f for f in _fonts() if f.endswith("DejaVuSans.ttf")]
    if not fonts:
        pytest.skip("DejaVu Sans not found")
    font = synth._font(fonts[0], 40)
    for word in ("MẮM", "Tiếng"):
        nfd = unicodedata.normalize("NFD", word)
        assert nfd != word
        fill, _ = synth._render_line(nfd, font, 8.0, 0)  # letter by letter: marks stay on their letter
        assert _ink_runs(fill) == len(word)
    from clip4str.charset import resolve_charset

    cfg = synth.SynthConfig(
        charset=resolve_charset("vietnamese"),
        words=[unicodedata.normalize("NFD", "Tiếng")],
        random_ratio=0.0,
        fonts=fonts,
    )
    assert cfg.words == ["Tiếng"]
    _, label = synth.render_sample(0, cfg)
    assert unicodedata.is_normalized("NFC", label) and label.lower() == "tiếng"
