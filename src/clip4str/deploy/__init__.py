"""Deploying without PyTorch: ONNX export (:mod:`~clip4str.deploy.onnx_export`, needs torch), the manifest
that describes and checks the files (:mod:`~clip4str.deploy.manifest`), the torch-free reader driving ONNX
Runtime (:mod:`~clip4str.deploy.onnx_reader`) and int8 quantization (:mod:`~clip4str.deploy.quantize`).

>>> from clip4str.deploy import load_onnx
>>> reader = load_onnx("clip4str-small-onnx/")       # numpy, Pillow and onnxruntime only
>>> reader.read("word.png")[0].text

See docs/deploy.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["OnnxRecognizer", "export_onnx", "load_onnx", "quantize_int8"]

if TYPE_CHECKING:
    from clip4str.deploy.onnx_export import export_onnx
    from clip4str.deploy.onnx_reader import OnnxRecognizer, load_onnx
    from clip4str.deploy.quantize import quantize_int8


def __getattr__(name: str) -> Any:
    # Lazy: the reader must import without torch, the exporter needs it.
    if name == "export_onnx":
        from clip4str.deploy.onnx_export import export_onnx

        return export_onnx
    if name in ("OnnxRecognizer", "load_onnx"):
        from clip4str.deploy import onnx_reader

        return getattr(onnx_reader, name)
    if name == "quantize_int8":
        from clip4str.deploy.quantize import quantize_int8

        return quantize_int8
    raise AttributeError(f"module 'clip4str.deploy' has no attribute {name!r}")
