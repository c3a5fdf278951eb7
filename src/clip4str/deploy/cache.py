"""ONNX exports made on first use: ``--runtime onnx`` with a release name or checkpoint (default: the
shipped ``clip4str-small``) exports it once into a cache folder keyed by the weights' SHA-256, so replacing
the shipped weights makes a new export instead of reusing a stale one. No download is involved.

Where, first match wins: ``cache_dir``, ``$CLIP4STR_ONNX_CACHE``, ``$XDG_CACHE_HOME/clip4str/onnx``,
``~/.cache/clip4str/onnx``. Torch-free until an export is actually needed.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from clip4str.deploy.manifest import MANIFEST_NAME, read_manifest, source_fingerprint


def onnx_cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("CLIP4STR_ONNX_CACHE"):
        return Path(os.environ["CLIP4STR_ONNX_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "clip4str" / "onnx"


def is_export(path: str | Path) -> bool:
    """True when ``path`` is a folder holding an ONNX export's manifest."""
    return (Path(path) / MANIFEST_NAME).is_file()


def shipped_onnx_dir(name: str) -> Path | None:
    """An export installed with the package (``clip4str/weights/<name>-onnx``, put there by
    ``packages/clip4str-onnx/build_wheel.sh``), if present and made from the weights installed beside it
    (when those are installed too: the PyTorch distribution re-exports after its weights change)."""
    from clip4str.hub import shipped_model_dir

    folder = shipped_model_dir(f"{name}-onnx")
    if not is_export(folder):
        return None
    weights = shipped_model_dir(name)
    if weights.is_dir():
        made_from = read_manifest(folder).get("source", {}).get("sha256")
        if made_from != source_fingerprint(weights):
            return None
    return folder


def onnx_folder(
    model: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    quiet: bool = False,
) -> Path:
    """The ONNX export folder for ``model``: the folder itself if it is an export, else the model (release
    name or checkpoint; default ``clip4str-small``) exported once into the cache (needs PyTorch)."""
    from clip4str.hub import DEFAULT_MODEL, resolve_model

    spec = str(model) if model is not None else DEFAULT_MODEL
    if is_export(spec):
        return Path(spec)
    shipped = shipped_onnx_dir(spec) if Path(spec).name == spec and not Path(spec).exists() else None
    if shipped is not None:
        return shipped
    source = resolve_model(spec, offline=offline)
    fingerprint = source_fingerprint(source)
    folder = onnx_cache_root(cache_dir) / f"{Path(spec).name}-{fingerprint[:16]}"
    if is_export(folder):
        manifest = read_manifest(folder)
        if manifest.get("source", {}).get("sha256") == fingerprint:
            return folder
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ModuleNotFoundError(
            f"no ONNX export of {spec} here, and PyTorch is not installed to make one: run `clip4str export "
            f"{spec} DIR --format onnx` where PyTorch is, then read with --model DIR"
        ) from None
    from clip4str.deploy.onnx_export import export_onnx
    from clip4str.factory import create_model

    if not quiet:
        print(f"clip4str: exporting {spec} to ONNX once, into {folder}", file=sys.stderr)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        export_onnx(create_model(source), tmp, source=spec, source_sha256=fingerprint)
        try:
            os.replace(tmp, folder)
        except OSError:
            pass  # another process finished the same export first: use its folder
        if not is_export(folder):
            raise OSError(f"could not place the ONNX export in {folder}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # our own temporary folder only
    return folder
