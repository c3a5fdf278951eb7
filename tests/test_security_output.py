"""Output that always parses (issue 11, item 9): TSV and JSON lines whatever the file names hold."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys

import pytest

from clip4str.cli import main
from clip4str.cli.output import json_line, parse_tsv_field, tsv_field, tsv_line

ODD = [
    "sep\u2028x\x1c.png",
    "tab\there.png",
    "line\nbreak.png",
    "cr\rx.png",
    "back\\slash.png",
    "plain.png",
    "é中😀.png",
]
NOT_UTF8 = os.fsdecode(b"latin\xe9\xff.png")  # a file name that is not UTF-8 (surrogate escapes)


@pytest.mark.parametrize("name", [*ODD, NOT_UTF8])
def test_tsv_fields_hold_no_separator_and_round_trip(name):
    field = tsv_field(name)
    assert "\t" not in field and "\n" not in field and "\r" not in field
    field.encode("utf-8")  # strict: no lone surrogate left
    assert parse_tsv_field(field) == name
    line = tsv_line(name, "te\tx\nt", "0.5000")
    assert [parse_tsv_field(f) for f in line.split("\t")] == [name, "te\tx\nt", "0.5000"]


def test_tsv_on_an_ascii_stream_escapes_what_it_cannot_encode():
    stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    field = tsv_field("é中😀", stream)
    field.encode("ascii")
    assert parse_tsv_field(field) == "é中😀"


@pytest.mark.parametrize("name", [*ODD, NOT_UTF8])
def test_json_lines_are_valid_utf8_and_lossless(name):
    line = json_line({"path": name, "text": "a\tb"})
    assert "\n" not in line
    assert json.loads(line.encode("utf-8").decode("utf-8")) == {"path": name, "text": "a\tb"}
    if name == NOT_UTF8:
        assert os.fsencode(json.loads(line)["path"]) == b"latin\xe9\xff.png"
    ascii_stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    json_line({"path": name}, ascii_stream).encode("ascii")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names")
@pytest.mark.parametrize("as_json", [False, True])
def test_cli_read_output_parses_for_hostile_names(
    golden_dir, bpe_path, tmp_path, capsys, monkeypatch, as_json
):
    monkeypatch.setenv("CLIP4STR_BPE_PATH", str(bpe_path))
    source = sorted((golden_dir / "inputs").glob("*.png"))[0]
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = [*ODD, NOT_UTF8]
    for name in names:
        shutil.copy(source, os.path.join(os.fsencode(folder), os.fsencode(name)))
    argv = ["read", "--model", str(golden_dir / "clip4str_tiny.ckpt"), str(folder)]
    assert main([*argv, "--json"] if as_json else argv) == 0
    out = capsys.readouterr().out
    out.encode("utf-8")  # a strict UTF-8 stdout would take every line
    lines = out.splitlines()
    assert len(lines) == len(names)
    got = set()
    for line in lines:
        if as_json:
            record = json.loads(line)
            got.add(os.path.basename(record["path"]))
        else:
            fields = line.split("\t")
            assert len(fields) == 3 and float(fields[2]) >= 0
            got.add(os.path.basename(parse_tsv_field(fields[0])))
    assert got == set(names)
