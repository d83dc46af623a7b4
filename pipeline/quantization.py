"""int8 dynamic quantization with onnxruntime, only where it changes something.

``quantize_dynamic`` rewrites MatMul/Gemm-style ops (weights to int8, activations quantized per batch at
run time). A graph without them (IsolationForest is one TreeEnsemble op) is left alone and reported as
quantization ``"none"`` with a note, instead of shipping an "int8" file that is the fp32 model.
Whether an int8 model may ship is decided by parity (see :mod:`pipeline.parity`), not here.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from edge_runtime.errors import OtamlError

QUANTIZABLE_OPS = frozenset({"MatMul", "Gemm", "Conv", "Attention", "LSTM", "GRU"})


class QuantizationError(OtamlError):
    """onnxruntime's quantizer failed on a graph it should handle."""


@dataclass(frozen=True)
class QuantizedModel:
    """The int8 model, or ``onnx_bytes=None`` with the reason when quantization changes nothing."""

    onnx_bytes: bytes | None
    mode: str  # "int8-dynamic" or "none"
    note: str

    @property
    def size(self) -> int | None:
        return None if self.onnx_bytes is None else len(self.onnx_bytes)


def quantizable_ops(onnx_bytes: bytes) -> list[str]:
    model = onnx.load_from_string(onnx_bytes)
    return sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx") and n.op_type in QUANTIZABLE_OPS})


def quantize_int8(onnx_bytes: bytes) -> QuantizedModel:
    """Dynamic int8 (signed weights) of the fp32 graph, or a ``"none"`` result naming why not."""
    ops = quantizable_ops(onnx_bytes)
    if not ops:
        kinds = sorted({n.op_type for n in onnx.load_from_string(onnx_bytes).graph.node})
        return QuantizedModel(
            None,
            "none",
            "quantization changes nothing: the graph has no MatMul/Gemm ops for dynamic int8 "
            f"(its ops: {', '.join(kinds)})",
        )
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="otaml-quant-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_bytes)
        root = logging.getLogger()
        level = root.level
        # The quantizer warns on the root logger that pre-processing could help; it does not matter here.
        root.setLevel(logging.ERROR)
        try:
            # ai.onnx.ml ops (the Scaler) defeat shape inference; every tensor here is float.
            quantize_dynamic(
                src, dst, weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}
            )
        except Exception as exc:  # the quantizer raises assorted bare exceptions
            raise QuantizationError(f"int8 dynamic quantization of a graph with {ops} failed: {exc}") from exc
        finally:
            root.setLevel(level)
        out = dst.read_bytes()
    return QuantizedModel(out, "int8-dynamic", f"dynamic int8 (QInt8 weights) on {', '.join(ops)}")
