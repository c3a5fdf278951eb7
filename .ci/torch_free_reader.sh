#!/usr/bin/env bash
# Issue 20: the ONNX reader works where PyTorch is not installed. Builds a virtual environment with the
# clip4str-onnx distribution (packages/clip4str-onnx) only, checks that `import torch` fails there, and reads
# the SVT test crops from an export made here (where torch is). Wheels come from a local wheelhouse; PyPI is
# asked only when it lacks one (first run, or a changed requirement), so later runs work offline.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d "${TMPDIR:-/tmp}/clip4str-torch-free.XXXXXX")"
trap 'rm -rf "$work"' EXIT
wheels="${CLIP4STR_CI_WHEELS:-$HOME/.cache/clip4str-ci/wheels}"
mkdir -p "$wheels"
# the distribution's own requirements, plus what building it from source needs
mapfile -t reqs < <(python -c "import tomllib; print('\n'.join(tomllib.load(open('packages/clip4str-onnx/pyproject.toml', 'rb'))['project']['dependencies']))")
reqs+=("setuptools>=68" "wheel")
python -m venv "$work/venv"
pip=("$work/venv/bin/pip" --isolated install -q --disable-pip-version-check --no-index --find-links "$wheels")
if ! "${pip[@]}" "${reqs[@]}" 2>/dev/null; then
  echo "+ pip download (wheelhouse $wheels)"
  "$work/venv/bin/pip" download -q --disable-pip-version-check -d "$wheels" "${reqs[@]}"
  "${pip[@]}" "${reqs[@]}"
fi
"${pip[@]}" --no-build-isolation ./packages/clip4str-onnx
if "$work/venv/bin/python" -c "import torch" 2>/dev/null; then
  echo ".ci/torch_free_reader.sh: torch is importable in the torch-free environment" >&2
  exit 1
fi
clip4str export clip4str-small "$work/onnx" --format onnx      # here, with torch
(cd "$work" && "$work/venv/bin/python" "$OLDPWD/.ci/check_torch_free.py" "$work/onnx" "$OLDPWD/../shared/realdata/svt_test")
