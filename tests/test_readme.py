"""The README's examples run as written on a fresh offline clone."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import PROJECT_ROOT, offline_env

README = PROJECT_ROOT / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_example_runs_offline(tmp_path):
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no python example"
    example = blocks[0]
    # print what the example computes, so the test checks the values, not only that it ran
    example += (
        "\nprint('SHAPE', tuple(pixels.shape), 'LOGITS', tuple(logits.shape), 'IDS', tuple(ids.shape))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", example],
        cwd=PROJECT_ROOT,
        env={**offline_env(tmp_path), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert [line.split()[0].lower() for line in lines[:2]] == ["hello", "exit"]
    shape = re.search(r"SHAPE \((\d+), (\d+), (\d+), (\d+)\)", run.stdout)
    comment = re.search(r"preprocess\(.*\)\s+# \((N), (\d+), (\d+), (\d+)\)", example)
    assert shape and comment and shape.groups()[1:] == comment.groups()[1:], "the shape comment is stale"
