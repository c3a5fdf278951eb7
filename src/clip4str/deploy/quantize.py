"""int8 export: ONNX Runtime's dynamic quantization of the exported graphs (weights int8, activations
quantized per batch at run time; no calibration data, so no test image is ever seen).

Needs ``onnx`` and ``onnxruntime`` (``pip install 'clip4str[onnx]'``); no torch.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

QUANTIZED_OPS = ("MatMul", "Gemm", "Gather")  # Gather: the text tower's 49,408-row token embedding


def quantize_graph(data: bytes, op_types: tuple[str, ...] = QUANTIZED_OPS) -> bytes:
    """One fp32 ONNX graph (bytes) → its dynamically quantized int8 twin (bytes)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the tool's "consider pre-processing" notice, once per graph
    try:
        with tempfile.TemporaryDirectory(prefix="clip4str-int8-") as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(data)
            quantize_dynamic(
                src, dst, op_types_to_quantize=list(op_types), per_channel=False, weight_type=QuantType.QInt8
            )
            return onnx.load(str(dst)).SerializeToString()  # a single file: no external data
    finally:
        logging.disable(previous)


def quantize_int8(
    graphs: dict[str, tuple[bytes, list[str], list[str]]],
) -> dict[str, tuple[bytes, list[str], list[str]]]:
    """``{graph: (fp32 bytes, inputs, outputs)}`` → the same with int8 graphs."""
    return {g: (quantize_graph(data), ins, outs) for g, (data, ins, outs) in graphs.items()}
