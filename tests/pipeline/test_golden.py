from __future__ import annotations

import numpy as np

from edge_runtime.features import FeatureSpec, StreamWindow, batch_features
from pipeline.detectors import make_detector
from pipeline.golden import golden_vectors, pick_readings, score_from_empty_history
from pipeline.onnx_export import export_onnx
from pipeline.parity import device_session


def test_pick_readings_puts_the_top_score_late_in_the_window() -> None:
    raw = np.arange(200, dtype=float)[:, None]
    scores = np.zeros(200)
    scores[150] = 9.0
    picked = pick_readings(raw, scores, count=64)
    assert picked.shape == (64, 1)
    assert picked[:, 0].tolist().index(150.0) == 48
    assert pick_readings(raw[:10], scores[:10], count=64).shape == (10, 1)


def test_golden_scores_replay_like_a_device() -> None:
    spec = FeatureSpec(sensors=("a", "b"), window=8)
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(600, 2)).cumsum(axis=0)
    pipeline = make_detector("pca").fit(batch_features(spec, raw).astype(np.float32).astype(np.float64))
    exported = export_onnx(pipeline, spec.n_features)
    golden = golden_vectors(exported.onnx_bytes, spec, raw[100:140], scale=2.0)
    assert len(golden.readings) == len(golden.scores) == 40
    assert golden.tolerance == 2e-4
    assert golden_vectors(exported.onnx_bytes, spec, raw[:5], scale=2.0, quantization="int8-dynamic").tolerance == 2e-3
    # A device: fresh window, all readings at once, one session run.
    window = StreamWindow(spec)
    session = device_session(exported.onnx_bytes)
    replay = session.run(None, {"features": window.push(np.array(golden.readings)).astype(np.float32)})[0]
    assert np.abs(replay - np.array(golden.scores)).max() <= golden.tolerance
    # From an empty history, not the middle of the series.
    in_series = score_from_empty_history(exported.onnx_bytes, spec, raw[:140])[100:]
    assert not np.allclose(in_series[:5], golden.scores[:5])
