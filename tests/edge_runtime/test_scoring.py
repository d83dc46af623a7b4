from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bundle import Bundle
from edge_runtime.features import FeatureSpec, batch_features
from edge_runtime.scoring import Scorer, StreamTable
from tests.fixtures.bundles import EXPORTERS, SENSORS, build_bundle, fit_iforest, onnx_scores, synthetic_readings


def test_stream_scores_equal_batch_scores(model_bundle: Bundle) -> None:
    scorer = Scorer.load(model_bundle)
    readings = synthetic_readings(40, seed=9)
    streamed = np.concatenate([scorer.score("s", readings[i : i + 3]) for i in range(0, 40, 3)])
    batch = onnx_scores(model_bundle.onnx_path.read_bytes(), batch_features(model_bundle.card.features, readings))
    np.testing.assert_allclose(streamed, batch, atol=1e-6)


def test_session_is_tuned_for_the_edge(model_bundle: Bundle) -> None:
    scorer = Scorer.load(model_bundle)
    options = scorer._session.get_session_options()  # type: ignore[attr-defined]
    assert options.enable_cpu_mem_arena is False
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert "SEQUENTIAL" in str(options.execution_mode)


def test_stream_table_is_bounded_lru(model_bundle: Bundle) -> None:
    table = StreamTable(model_bundle, max_streams=3)
    for name in ("a", "b", "c", "a", "d", "e"):
        table.get(name)
    assert len(table) == 3
    assert [s for s in "abcde" if s in table] == ["a", "d", "e"]
    assert table.evicted == 2
    table.peek("a")  # peeking does not refresh recency
    table.get("f")
    assert "a" not in table


def test_stream_table_rejects_zero_streams(model_bundle: Bundle) -> None:
    with pytest.raises(ValueError, match="max_streams"):
        StreamTable(model_bundle, max_streams=0)


def test_self_test_reports_the_worst_vector(model_bundle: Bundle) -> None:
    card = model_bundle.card
    scores = list(card.golden.scores)
    scores[7] += 0.5
    bad = dataclasses.replace(
        model_bundle, card=dataclasses.replace(card, golden=dataclasses.replace(card.golden, scores=scores))
    )
    result = Scorer.load(bad).self_test()
    assert not result.ok
    assert result.worst_index == 7
    assert "golden vector 7" in result.message
    assert Scorer.load(model_bundle).self_test().ok


def test_both_fixture_exports_agree_with_sklearn(tmp_path: Path) -> None:
    """The fixture's two ONNX exports score like ``-score_samples``; the runtime serves either."""
    spec = FeatureSpec(SENSORS, window=8)
    model = fit_iforest(batch_features(spec, synthetic_readings(300, spikes=False)))
    features = batch_features(spec, synthetic_readings(50, seed=4))
    expected = -model.score_samples(features.astype(np.float32))
    for name, export in EXPORTERS.items():
        np.testing.assert_allclose(
            onnx_scores(export(model, spec.n_features), features), expected, atol=1e-5, err_msg=name
        )
    bundle = build_bundle(tmp_path / "compact", model=model, exporter="compact")
    assert Scorer.load(bundle).self_test().ok
