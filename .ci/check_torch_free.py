"""Run by .ci/torch_free_reader.sh inside the torch-free environment: read the SVT test crops through the
library and the CLI, and hold the shipped model's recorded SVT accuracy (minus 3 points, as
tests/test_shipped_model.py does)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

try:
    import torch  # noqa: F401
except ImportError:
    pass
else:
    sys.exit("torch is importable here: not a torch-free environment")

import clip4str
from clip4str import hub
from clip4str.deploy import load_onnx

folder, svt = Path(sys.argv[1]), Path(sys.argv[2])
assert "site-packages" in clip4str.__file__, f"clip4str imported from the checkout ({clip4str.__file__})"
rows = [line.split("\t")[:2] for line in (svt / "labels.tsv").read_text(encoding="utf-8").splitlines()[1:]]
paths = [svt / name for name, _ in rows]
labels = ["".join(c for c in label.lower() if c.isascii() and c.isalnum()) for _, label in rows]
reader = load_onnx(folder)
preds = reader.read(paths, batch_size=64)
accuracy = 100.0 * sum(p.text == t for p, t in zip(preds, labels)) / len(labels)
floor = hub.SMALL_MODEL.measured["SVT"] - 3.0
print(f"torch-free ONNX reader: SVT {accuracy:.2f} % on {len(labels)} crops (floor {floor:.2f})")
assert accuracy >= floor, f"SVT accuracy {accuracy:.2f} below {floor:.2f}"
cli = subprocess.run(
    [str(Path(sys.executable).with_name("clip4str")), "read", "--model", str(folder), *map(str, paths[:8])],
    capture_output=True,
    text=True,
    check=True,
)
lines = cli.stdout.strip().splitlines()
assert [line.split("\t")[1] for line in lines] == [p.text for p in preds[:8]], cli.stdout
print("torch-free CLI: `clip4str read` (runtime auto → onnx) prints the same texts")
