from __future__ import annotations

import numpy as np
import pytest

from pipeline.detectors import anomaly_scores, make_detector
from pipeline.onnx_export import export_onnx
from pipeline.parity import check_parity, compare, onnx_scores
from pipeline.quantization import quantize_int8


def test_compare_counts_flipped_decisions_and_flags_below_target() -> None:
    reference = np.array([0.1, 0.2, 0.6, 0.9] * 25)
    candidate = reference.copy()
    candidate[2] = 0.4  # one decision flips at threshold 0.5
    result = compare("fp32", reference, candidate, threshold=0.5, scale=1.0)
    assert result.disagreements == 1
    assert result.agreement == pytest.approx(0.99)
    assert result.max_abs_diff == pytest.approx(0.2)
    assert not result.passed  # 99 % < 99.9 %
    assert compare("int8", reference, candidate, threshold=0.5, scale=1.0).passed  # 99 % >= 99 %


def test_real_parity_report_pca() -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3000, 8)) @ rng.normal(size=(8, 8))).astype(np.float32).astype(np.float64)
    pipeline = make_detector("pca").fit(x[:2000])
    exported = export_onnx(pipeline, 8)
    int8 = quantize_int8(exported.onnx_bytes)
    scores = anomaly_scores(pipeline, x[2000:])
    threshold = float(np.quantile(scores, 0.95))
    report = check_parity(scores, x[2000:], threshold, exported.onnx_bytes, int8.onnx_bytes, max_rows=400)
    assert report.rows == 400
    assert report.fp32.agreement >= 0.999
    assert report.fp32.max_abs_diff < 1e-4 * report.score_scale
    assert report.int8 is not None
    assert report.int8.max_abs_diff > report.fp32.max_abs_diff
    data = report.to_dict()
    assert data["status"] == report.status
    assert data["fp32"]["passed"] is True
    assert data["targets"] == {"fp32": 0.999, "int8": 0.99}


def test_status_names_the_failing_variant() -> None:
    from pipeline.parity import ParityReport

    ok = compare("fp32", np.ones(10), np.ones(10), 0.5, 1.0)
    bad = compare("int8", np.ones(10), np.zeros(10), 0.5, 1.0)
    assert ParityReport(10, 0.5, 1.0, ok, None).status == "pass"
    assert ParityReport(10, 0.5, 1.0, ok, bad).status == "int8-below-target"


def test_per_row_and_batch_scoring_agree_for_fp32() -> None:
    x = np.random.default_rng(1).normal(size=(200, 5))
    exported = export_onnx(make_detector("autoencoder").fit(x), 5)
    np.testing.assert_allclose(
        onnx_scores(exported.onnx_bytes, x[:20], batch=1), onnx_scores(exported.onnx_bytes, x[:20]), rtol=1e-5
    )


def test_int8_scores_depend_on_the_batch_and_parity_takes_the_worse() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 6)).astype(np.float32).astype(np.float64)
    pipeline = make_detector("autoencoder").fit(x[:400])
    exported = export_onnx(pipeline, 6)
    int8 = quantize_int8(exported.onnx_bytes).onnx_bytes
    assert int8 is not None
    held_out = x[400:].copy()
    held_out[10] *= 50  # one wild reading coarsens the quantization of its whole call
    alone = onnx_scores(int8, held_out, batch=1)
    together = onnx_scores(int8, held_out)
    assert np.abs(alone[:10] - together[:10]).max() > 0
    scores = anomaly_scores(pipeline, held_out)
    report = check_parity(scores, held_out, float(np.quantile(scores, 0.9)), exported.onnx_bytes, int8)
    assert report.int8 is not None
    assert report.int8.mode.startswith("worst of 1 reading per call")
