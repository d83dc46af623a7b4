from __future__ import annotations

import numpy as np
import onnx
import pytest

from pipeline.detectors import make_detector
from pipeline.onnx_export import export_onnx
from pipeline.parity import onnx_scores
from pipeline.quantization import quantize_int8


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(800, 10)).astype(np.float32).astype(np.float64)


def test_tree_model_is_not_quantized_and_says_why(features: np.ndarray) -> None:
    exported = export_onnx(make_detector("iforest").fit(features), 10)
    result = quantize_int8(exported.onnx_bytes)
    assert result.onnx_bytes is None
    assert result.mode == "none"
    assert result.size is None
    assert "changes nothing" in result.note
    assert "TreeEnsembleRegressor" in result.note


@pytest.mark.parametrize("name", ["pca", "autoencoder"])
def test_matmul_models_get_int8_weights_and_still_score(name: str, features: np.ndarray) -> None:
    pipeline = make_detector(name).fit(features)
    exported = export_onnx(pipeline, 10)
    result = quantize_int8(exported.onnx_bytes)
    assert result.mode == "int8-dynamic"
    assert result.onnx_bytes is not None
    ops = {n.op_type for n in onnx.load_from_string(result.onnx_bytes).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    fp32 = onnx_scores(exported.onnx_bytes, features[:50])
    int8 = onnx_scores(result.onnx_bytes, features[:50])
    assert not np.array_equal(fp32, int8)  # it really changed something
    assert np.corrcoef(fp32, int8)[0, 1] > 0.9
