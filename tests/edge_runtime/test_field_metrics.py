from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from edge_runtime.bundle import FieldReference, ReferenceHistogram
from edge_runtime.field_metrics import (
    PSI_ALERT,
    FieldMetrics,
    histogram_quantile,
    population_stability,
    summary,
    to_json,
)
from edge_runtime.scoring import Scorer
from tests.fixtures.field_bundles import TrainedField


def uniform_reference(names: list[str], buckets: int = 10) -> FieldReference:
    """Sensors uniform on [0, 1) in ``buckets`` equal buckets; scores likewise."""
    edges = tuple(float(e) for e in np.arange(1, buckets) / buckets)
    hist = ReferenceHistogram(edges, tuple([1.0 / buckets] * buckets))
    return FieldReference(sensors=tuple((n, hist) for n in names), score=hist, rows=1000)


def test_histogram_quantile_interpolates_inside_a_bucket_and_clamps_open_ones() -> None:
    edges = [1.0, 2.0, 3.0]
    assert histogram_quantile(0.5, edges, [0, 10, 10, 0]) == pytest.approx(2.0)
    assert histogram_quantile(0.25, edges, [0, 10, 10, 0]) == pytest.approx(1.5)
    assert histogram_quantile(0.5, edges, [10, 0, 0, 0]) == 1.0  # lowest bucket is open: its edge
    assert histogram_quantile(0.99, edges, [0, 0, 0, 10]) == 3.0  # highest likewise
    assert histogram_quantile(0.5, edges, [0, 0, 0, 0]) is None


def test_population_stability_matches_the_formula() -> None:
    window = np.array([[50, 30, 20]])
    reference = np.array([[0.2, 0.3, 0.5]])
    q, p = np.array([0.5, 0.3, 0.2]), reference[0]
    assert population_stability(window, reference)[0] == pytest.approx(float(((q - p) * np.log(q / p)).sum()))
    # An empty bucket stays finite thanks to the epsilon floor.
    assert np.isfinite(population_stability(np.array([[100, 0, 0]]), reference)).all()


def test_buckets_follow_le_semantics_and_the_window_slides() -> None:
    field = FieldMetrics("m", "1", 0.9, uniform_reference(["a"], buckets=2), window=8, sub_windows=4)
    # Edge 0.5: 0.5 itself belongs to the first bucket (le="0.5").
    field.observe(np.array([[0.5], [0.7]]), np.array([0.5, 0.95]))
    assert field.score_counts.tolist() == [1, 1]
    assert field.anomaly_ratio == 0.5
    # 20 more readings, all normal: the window forgets the first two and holds 6..8 readings.
    for _ in range(20):
        field.observe(np.array([[0.1]]), np.array([0.1]))
    assert 6 <= field.window_readings <= 8
    assert field.anomaly_ratio == 0.0
    assert field.readings == 22
    assert field.anomalies == 1
    assert field.score_counts.tolist() == [21, 1]


def test_anomaly_ratio_equals_a_hand_count_of_the_window(trained_field: TrainedField) -> None:
    bundle = trained_field.bundle
    scorer = Scorer.load(bundle)
    field = FieldMetrics("m", "1", bundle.card.threshold, bundle.card.field_reference, window=512, sub_windows=8)
    flags: list[bool] = []
    rng = np.random.default_rng(0)
    for stream, readings in trained_field.train_readings.items():
        pos = 0
        while pos < 1500:
            size = int(rng.integers(1, 40))  # batches that straddle sub-window boundaries
            batch = readings[pos : pos + size].copy()
            batch[rng.random(len(batch)) < 0.05] *= 3.0  # some readings the model must flag
            scores = scorer.score(stream, batch)
            field.observe(batch, scores)
            flags.extend((scores >= bundle.card.threshold).tolist())
            pos += size
            n = field.window_readings
            assert field.anomaly_ratio == pytest.approx(sum(flags[-n:]) / n)
    assert 448 <= field.window_readings <= 512
    assert 0 < sum(flags) < len(flags)
    assert field.anomalies == sum(flags)


def test_state_is_bounded_whatever_the_number_of_readings() -> None:
    field = FieldMetrics("m", "1", 0.9, uniform_reference([f"s{i}" for i in range(20)]), window=1024)
    rng = np.random.default_rng(1)
    batch, scores = rng.random((100, 20)), rng.random(100)
    size = field.state_bytes()
    for _ in range(20):
        field.observe(batch, scores)
    tracemalloc.start()
    try:
        field.observe(batch, scores)
        first = tracemalloc.take_snapshot()
        for _ in range(2000):  # 200,000 more readings
            field.observe(batch, scores)
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(first, "filename") if s.size_diff > 0)
    finally:
        tracemalloc.stop()
    assert field.readings == 202_100
    assert field.state_bytes() == size
    assert grown < 4096  # interpreter noise only: nothing kept per reading


def test_summary_stays_under_1_kb_with_20_sensors_and_names_the_top_drifting() -> None:
    names = [f"sensor_with_a_long_name_{i:02d}" for i in range(20)]
    field = FieldMetrics("pump-anomaly-with-a-long-name", "123", 0.9, uniform_reference(names), window=256)
    rng = np.random.default_rng(2)
    for _ in range(10):
        readings = rng.random((64, 20))
        readings[:, 7] += 0.6  # one sensor drifts
        field.observe(readings, rng.random(64) * 1.2)
    for status in (422, 400, 401, 503):
        field.observe_error(status)
    data = summary(field)
    text = to_json(data)
    assert len(text.encode()) <= 1024, len(text)
    assert json.loads(text) == data
    assert next(iter(data["psi"])) == names[7]
    assert len(data["psi"]) == 5
    assert data["drifting"] == 1
    assert data["features"] == 20
    assert data["drift"] == "ok"
    assert data["input_error_ratio"] == pytest.approx(2 / 12, rel=1e-3)  # only bad-input statuses count
    assert data["readings"] == 640
    assert data["score"]["p50"] == pytest.approx(0.5, abs=0.1)
    assert sum(data["score"]["counts"]) == data["window"]


def test_without_a_reference_drift_is_skipped_and_said() -> None:
    field = FieldMetrics("m", "1", 0.5, None, window=64)
    field.observe(np.ones((10, 3)), np.linspace(0, 1, 10))
    data = summary(field)
    assert data["drift"] == "no_reference"
    assert data["psi"] == {}
    assert data["features"] == 0
    assert data["anomaly_ratio"] == 0.5
    assert data["score"]["p50"] is None
    assert data["score"]["counts"] == [10]


def test_warming_up_until_a_sub_window_is_seen() -> None:
    field = FieldMetrics("m", "1", 0.5, uniform_reference(["a"]), window=80, sub_windows=8)
    field.observe(np.full((5, 1), 0.5), np.zeros(5))
    assert field.drift_state() == "warming_up"
    assert field.psi() == {}
    field.observe(np.full((5, 1), 0.5), np.zeros(5))
    assert field.drift_state() == "ok"
    assert set(field.psi()) == {"a"}


# ----------------------------------------------------------------------- a bundle the pipeline trained


def _serve_interleaved(
    trained: TrainedField, field: FieldMetrics, shift: tuple[int, float] | None = None, batch: int = 8
) -> list[dict[str, float]]:
    """Score the training split stream by stream in time order (interleaved like a device's clients); PSI per batch."""
    scorer = Scorer.load(trained.bundle)
    streams = trained.train_readings
    n = min(len(x) for x in streams.values())
    seen = []
    for i in range(0, n, batch):
        for stream, readings in streams.items():
            rows = readings[i : i + batch].copy()
            if shift is not None:
                rows[:, shift[0]] += shift[1]
            field.observe(rows, scorer.score(stream, rows))
        if field.drift_state() == "ok" and field.window_readings >= field.window_size * 7 // 8:
            seen.append(field.psi())
    return seen


# Two days of both streams at one reading a minute: the window spans the synthetic data's daily cycle.
TWO_DAYS = 2 * 1440 * 2


def test_data_like_the_training_data_stays_below_the_alert_on_every_sensor(trained_field: TrainedField) -> None:
    card = trained_field.bundle.card
    assert card.field_reference is not None  # the pipeline wrote it
    field = FieldMetrics(card.name, card.version, card.threshold, card.field_reference, window=TWO_DAYS)
    seen = _serve_interleaved(trained_field, field)
    assert len(seen) > 100  # checked after every batch once the window is full, a day and more of data
    worst = {name: max(psi[name] for psi in seen) for name in trained_field.sensors}
    assert all(value < PSI_ALERT for value in worst.values()), worst


@pytest.mark.parametrize("sensor", range(4))
def test_a_3_sigma_shift_on_one_sensor_alerts_on_that_sensor_only(trained_field: TrainedField, sensor: int) -> None:
    card = trained_field.bundle.card
    train = np.concatenate(list(trained_field.train_readings.values()))
    sigma = float(np.std(train[:, sensor]))
    field = FieldMetrics(card.name, card.version, card.threshold, card.field_reference, window=TWO_DAYS)
    # Exactly one window of shifted data: the first check after it is full must already alert.
    half = {s: x[: TWO_DAYS // 2] for s, x in trained_field.train_readings.items()}
    seen = _serve_interleaved(TrainedField(trained_field.bundle, "", "", half, None), field, shift=(sensor, 3 * sigma))
    assert field.readings == TWO_DAYS
    assert seen
    psi = seen[-1]
    name = trained_field.sensors[sensor]
    assert psi[name] > PSI_ALERT, psi
    assert all(value < PSI_ALERT for other, value in psi.items() if other != name), psi
    assert summary(field)["psi"]
    assert next(iter(summary(field)["psi"])) == name


def test_one_reading_at_a_time_counts_exactly_like_batches() -> None:
    reference = uniform_reference(["a", "b", "c"])
    rng = np.random.default_rng(3)
    readings, scores = rng.random((300, 3)), rng.random(300)
    readings[::7] = 0.5  # values on an edge
    one, batched = (FieldMetrics("m", "1", 0.9, reference, window=256) for _ in range(2))
    for i in range(300):
        one.observe(readings[i : i + 1], scores[i : i + 1])
    for i in range(0, 300, 37):
        batched.observe(readings[i : i + 37], scores[i : i + 37])
    assert one.score_counts.tolist() == batched.score_counts.tolist()
    assert one.psi() == batched.psi()
    assert one.anomaly_ratio == batched.anomaly_ratio
    assert one.score_sum == pytest.approx(batched.score_sum)
