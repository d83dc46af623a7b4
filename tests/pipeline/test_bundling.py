from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bundle import load_bundle
from edge_runtime.features import FeatureSpec, batch_features
from pipeline import bundling
from pipeline.detectors import anomaly_scores, make_detector
from pipeline.onnx_export import export_onnx
from pipeline.parity import check_parity
from pipeline.quantization import QuantizedModel, quantize_int8
from pipeline.thresholds import Threshold


@pytest.fixture(scope="module")
def trained() -> tuple[FeatureSpec, np.ndarray, object, object, object, Threshold]:
    spec = FeatureSpec(sensors=("a", "b", "c"), window=4)
    raw = np.random.default_rng(0).normal(size=(1500, 3)).cumsum(axis=0)
    x = batch_features(spec, raw).astype(np.float32).astype(np.float64)
    pipeline = make_detector("autoencoder").fit(x[:1000])
    fp32 = export_onnx(pipeline, spec.n_features)
    int8 = quantize_int8(fp32.onnx_bytes)
    scores = anomaly_scores(pipeline, x[1000:])
    threshold = Threshold(float(np.quantile(scores, 0.95)), "quantile-0.95-of-train")
    parity = check_parity(scores, x[1000:], threshold.value, fp32.onnx_bytes, int8.onnx_bytes)
    return spec, raw, fp32, int8, parity, threshold


def test_fp32_and_int8_bundles_carry_provenance(trained: tuple, tmp_path: Path) -> None:
    spec, raw, fp32, int8, parity, threshold = trained
    paths = bundling.write_bundles(
        tmp_path / "b",
        bundling.variants(fp32, int8, parity),
        provenance=bundling.Provenance("m", "7", "run123", "sqlite:///x.db"),
        detector="autoencoder",
        spec=spec,
        threshold=threshold,
        metrics={"f1": 0.5, "roc_auc": float("nan")},
        golden_readings=raw[1200:1232],
        score_scale=1.0,
    )
    assert set(paths) == {"fp32", "int8"}
    fp32_card, int8_card = (load_bundle(paths[v]).card for v in ("fp32", "int8"))
    assert fp32_card.mlflow == {"run_id": "run123", "model_uri": "models:/m/7", "tracking_uri": "sqlite:///x.db"}
    assert fp32_card.onnx.quantization == "none"
    assert int8_card.onnx.quantization == "int8-dynamic"
    assert fp32_card.metrics == {"f1": 0.5}  # NaN left out
    assert fp32_card.golden.scores != int8_card.golden.scores  # each scored with its own file
    assert int8_card.golden.tolerance == 10 * fp32_card.golden.tolerance


def test_shipped_variant_rules(trained: tuple) -> None:
    _, _, fp32, int8, parity, _ = trained
    failing = replace(parity, int8=replace(parity.int8, passed=False, agreement=0.5))
    assert bundling.shipped_variant(fp32, int8, failing) == "fp32"
    assert "not shipped" in bundling.variants(fp32, int8, failing)[1].note
    bigger = QuantizedModel(int8.onnx_bytes + b"\0" * fp32.size, int8.mode, int8.note)
    assert bundling.shipped_variant(fp32, bigger, parity) == "fp32"
    if parity.int8.passed:
        assert bundling.shipped_variant(fp32, int8, parity) == "int8"
    trees = QuantizedModel(None, "none", "quantization changes nothing")
    (only,) = bundling.variants(fp32, trees, replace(parity, int8=None))
    assert only.name == "fp32"
    assert only.note == "quantization changes nothing"


def test_bundles_carry_a_field_reference_from_the_fitted_rows(trained: tuple, tmp_path: Path) -> None:
    spec, raw, fp32, int8, parity, threshold = trained
    features = batch_features(spec, raw[:1000])
    paths = bundling.write_bundles(
        tmp_path / "b",
        bundling.variants(fp32, int8, parity),
        provenance=bundling.Provenance("m", "7", "run123", "sqlite:///x.db"),
        detector="autoencoder",
        spec=spec,
        threshold=threshold,
        metrics={},
        golden_readings=raw[1200:1232],
        score_scale=1.0,
        reference_readings=raw[:1000],
        reference_features=features,
    )
    fp32_ref, int8_ref = (load_bundle(paths[v]).card.field_reference for v in ("fp32", "int8"))
    assert fp32_ref is not None
    assert int8_ref is not None
    assert fp32_ref.rows == 1000
    assert [name for name, _ in fp32_ref.sensors] == list(spec.sensors)
    for j, (_, hist) in enumerate(fp32_ref.sensors):
        assert len(hist.edges) == bundling.SENSOR_BUCKETS - 1
        assert np.allclose(hist.fractions, 0.1, atol=0.002)  # quantile edges: equal shares
        assert np.allclose(hist.edges, np.quantile(raw[:1000, j], np.arange(1, 10) / 10))
    # Score buckets: training-score quantiles and the threshold, each variant from its own ONNX scores.
    assert threshold.value in fp32_ref.score.edges
    assert threshold.value in int8_ref.score.edges
    assert fp32_ref.score.edges != int8_ref.score.edges
    assert sum(fp32_ref.score.fractions) == pytest.approx(1.0)


def test_reference_histogram_dedupes_edges_of_a_stuck_sensor() -> None:
    values = np.r_[np.zeros(900), np.arange(1, 101)]
    hist = bundling.reference_histogram(values, np.quantile(values, np.arange(1, 10) / 10))
    assert list(hist.edges) == sorted(set(hist.edges))
    assert hist.fractions[0] == pytest.approx(0.9)
    assert sum(hist.fractions) == pytest.approx(1.0)
