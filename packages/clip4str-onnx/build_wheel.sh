#!/usr/bin/env bash
# Build the clip4str-onnx wheel with the shipped clip4str-small exported inside it (needs PyTorch here,
# not where the wheel is installed). Usage: packages/clip4str-onnx/build_wheel.sh [OUT_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/dist}"
onnx="$root/src/clip4str/weights/clip4str-small-onnx"   # git-ignored; regenerated from the shipped weights
clip4str export clip4str-small "$onnx" --format onnx --overwrite
pip wheel --no-deps --no-build-isolation -w "$out" "$here"
