from __future__ import annotations

import numpy as np
import onnx
import pytest

from pipeline.detectors import DETECTORS, anomaly_scores, make_detector
from pipeline.onnx_export import INPUT_NAME, OPSET, OUTPUT_NAME, _float32_at_most, export_onnx
from pipeline.parity import onnx_scores


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    rng = np.random.default_rng(0)
    # Features of very different scales, as windowed sensor features are; float32-rounded as in training.
    x = rng.normal(size=(3000, 12)) * rng.uniform(0.01, 500, size=12) + rng.uniform(-100, 100, size=12)
    x[::97] += rng.normal(0, 50, size=(len(x[::97]), 12))
    return x.astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("name", DETECTORS)
def test_onnx_score_equals_sklearn_score(name: str, features: np.ndarray) -> None:
    pipeline = make_detector(name).fit(features[:2000])
    exported = export_onnx(pipeline, features.shape[1])
    expected = anomaly_scores(pipeline, features[2000:])
    got = onnx_scores(exported.onnx_bytes, features[2000:])
    scale = max(float(np.abs(expected).max()), 1e-9)
    assert np.abs(got - expected).max() <= 1e-5 * scale
    assert exported.size == len(exported.onnx_bytes)


@pytest.mark.parametrize("name", DETECTORS)
def test_graph_contract_one_input_one_output(name: str, features: np.ndarray) -> None:
    exported = export_onnx(make_detector(name).fit(features[:500]), features.shape[1])
    model = onnx.load_from_string(exported.onnx_bytes)
    onnx.checker.check_model(model, full_check=True)
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == INPUT_NAME
    assert out.name == OUTPUT_NAME
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim][1] == features.shape[1]
    assert len(out.type.tensor_type.shape.dim) == 1
    assert {o.domain: o.version for o in model.opset_import}[""] == exported.opset <= OPSET


def test_iforest_graph_is_compact(features: np.ndarray) -> None:
    exported = export_onnx(make_detector("iforest").fit(features[:500]), features.shape[1])
    ops = [n.op_type for n in onnx.load_from_string(exported.onnx_bytes).graph.node]
    assert ops.count("TreeEnsembleRegressor") == 1
    assert len(ops) < 10


def test_float32_threshold_rounding_keeps_comparisons_exact() -> None:
    rng = np.random.default_rng(2)
    thresholds = rng.normal(size=2000) * 1e3
    down = _float32_at_most(thresholds)
    assert (down.astype(np.float64) <= thresholds).all()
    # The next float32 up is already above the float64 threshold: x32 <= t  <=>  x32 <= down.
    assert (np.nextafter(down, np.float32(np.inf)).astype(np.float64) > thresholds).all()


def test_whitened_pca_exports_through_the_same_graph(features: np.ndarray) -> None:
    pipeline = make_detector("pca")
    pipeline.named_steps["detect"].set_params(whiten=True)
    pipeline.fit(features[:2000])
    exported = export_onnx(pipeline, features.shape[1])
    expected = anomaly_scores(pipeline, features[2000:])
    got = onnx_scores(exported.onnx_bytes, features[2000:])
    assert np.abs(got - expected).max() <= 1e-5 * float(np.abs(expected).max())
