from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bundle import Bundle
from edge_runtime.features import FeatureSpec, batch_features
from edge_runtime.scoring import NonFiniteScores, Scorer, StreamTable, create_session
from tests.fixtures.bundles import EXPORTERS, SENSORS, build_bundle, fit_iforest, onnx_scores, synthetic_readings


def test_stream_scores_equal_batch_scores(model_bundle: Bundle) -> None:
    scorer = Scorer.load(model_bundle)
    readings = synthetic_readings(40, seed=9)
    streamed = np.concatenate([scorer.score("s", readings[i : i + 3]) for i in range(0, 40, 3)])
    batch = onnx_scores(model_bundle.onnx_path.read_bytes(), batch_features(model_bundle.card.features, readings))
    np.testing.assert_allclose(streamed, batch, atol=1e-6)


def test_one_reading_through_the_bound_buffers_scores_exactly_as_session_run(model_bundle: Bundle) -> None:
    scorer = Scorer.load(model_bundle)
    row = scorer._row
    assert row is not None
    assert row.native  # the pinned onnxruntime has the C++ entry point: an upgrade that drops it shows here
    card = model_bundle.card
    features = batch_features(card.features, synthetic_readings(30, seed=4))
    session = scorer._session
    returned = []
    for one in features:
        (expected,) = session.run([card.onnx.output_name], {card.onnx.input_name: one[None].astype(np.float32)})  # type: ignore[attr-defined]
        got = scorer.model_scores(one[None])
        np.testing.assert_array_equal(got, np.asarray(expected, dtype=np.float64).reshape(-1))
        assert got.dtype == np.float64
        returned.append((got, got.copy()))
    # Each answer is its own array, not a view of the reused output buffer: later rows leave it as it was.
    for got, copy in returned:
        np.testing.assert_array_equal(got, copy)
    assert len({float(copy[0]) for _, copy in returned}) > 1


def test_the_bound_buffers_serve_their_own_thread_only(model_bundle: Bundle) -> None:
    import threading

    scorer = Scorer.load(model_bundle)
    row = scorer._row
    assert row is not None
    first, second = batch_features(model_bundle.card.features, synthetic_readings(20, seed=5))[-2:]
    mine = scorer.model_scores(first[None])
    np.testing.assert_array_equal(row._row, first[None].astype(np.float32))  # this thread went through the buffers
    elsewhere: list[np.ndarray] = []
    worker = threading.Thread(target=lambda: elsewhere.append(scorer.model_scores(second[None])))
    worker.start()
    worker.join()
    np.testing.assert_array_equal(row._row, first[None].astype(np.float32))  # another thread left them alone
    np.testing.assert_array_equal(scorer.model_scores(first[None]), mine)
    assert elsewhere[0].shape == (1,)


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
    assert f"expected {float(scores[7])!r}" in result.message  # plain numbers, not numpy reprs
    assert "np.float" not in result.message
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


class FaultySession:
    """The real onnxruntime session, except that ``fault`` makes it return NaN or raise (the model seam)."""

    def __init__(self, bundle: Bundle) -> None:
        self._real = create_session(bundle)
        self.fault: str | None = None

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.fault == "raise":
            raise RuntimeError("onnxruntime failed")
        (out,) = self._real.run(outputs, feeds)  # type: ignore[attr-defined]
        if self.fault == "nan":
            out = np.full_like(out, np.nan)
        return [out]


@pytest.mark.parametrize("fault", ["nan", "raise"])
@pytest.mark.parametrize("size", [1, 5])  # the single-reading fast path and the batch path
def test_failed_scoring_leaves_the_stream_unchanged(model_bundle: Bundle, fault: str, size: int) -> None:
    session = FaultySession(model_bundle)
    scorer = Scorer(model_bundle, session, max_streams=1)
    readings = synthetic_readings(30, seed=11)
    scorer.score("s", readings[:20])
    window = scorer.streams.peek("s")
    assert window is not None
    before = window.state()
    session.fault = fault
    with pytest.raises(NonFiniteScores if fault == "nan" else RuntimeError):
        scorer.score("s", readings[20 : 20 + size])
    with pytest.raises(NonFiniteScores if fault == "nan" else RuntimeError):
        scorer.score("new", readings[20 : 20 + size])  # a failing new stream neither appears nor evicts "s"
    assert scorer.streams.peek("s") is window
    assert window.state() == before
    assert "new" not in scorer.streams
    assert scorer.streams.evicted == 0
    session.fault = None
    after = scorer.score("s", readings[20:])
    expected = Scorer.load(model_bundle).score("s", readings)[20:]  # as if the failed requests never happened
    np.testing.assert_array_equal(after, expected)


def test_non_finite_scores_name_the_model_and_the_stream(model_bundle: Bundle) -> None:
    session = FaultySession(model_bundle)
    session.fault = "nan"
    with pytest.raises(NonFiniteScores, match=r"non-finite score for stream 'pump-7'.*unchanged"):
        Scorer(model_bundle, session).score("pump-7", synthetic_readings(1))


def test_stream_table_put_replaces_and_refreshes_recency(model_bundle: Bundle) -> None:
    table = StreamTable(model_bundle, max_streams=2)
    a, b = table.get("a"), table.get("b")
    replacement = a.copy()
    table.put("a", replacement)  # "a" becomes most recently used
    table.put("c", table.new_window())
    assert table.peek("a") is replacement
    assert "b" not in table
    assert b is not replacement
    assert table.evicted == 1
