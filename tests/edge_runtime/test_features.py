from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.features import STATS, FeatureSpec, FeatureSpecError, StreamWindow, batch_features


def _readings(n: int, s: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, s)).cumsum(axis=0)


def test_feature_names_follow_sensor_order_then_stats() -> None:
    spec = FeatureSpec(("a", "b"), window=4, stats=("mean", "delta"))
    assert spec.feature_names() == ["a", "a__mean", "a__delta", "b", "b__mean", "b__delta"]
    assert spec.n_features == 6


def test_batch_statistics_match_a_naive_rolling_window() -> None:
    spec = FeatureSpec(("a", "b"), window=5)
    x = _readings(40, 2)
    feats = batch_features(spec, x).reshape(40, 2, 1 + len(spec.stats))
    for t in (0, 3, 4, 20, 39):
        window = np.array([x[max(i, 0)] for i in range(t - 4, t + 1)])  # padded with the first reading
        window[: max(0, 4 - t)] = x[0]
        expected = {
            "mean": window.mean(axis=0),
            "std": window.std(axis=0),
            "min": window.min(axis=0),
            "max": window.max(axis=0),
            "delta": x[t] - x[max(t - 1, 0)],
            "dev": x[t] - window.mean(axis=0),
        }
        np.testing.assert_allclose(feats[t, :, 0], x[t])
        for k, stat in enumerate(spec.stats, start=1):
            np.testing.assert_allclose(feats[t, :, k], expected[stat], rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60),
    window=st.integers(1, 12),
    sensors=st.integers(1, 4),
    cuts=st.lists(st.integers(0, 60), max_size=6),
    seed=st.integers(0, 2**16),
    lag_share=st.floats(0.0, 1.0),
    normalize=st.sampled_from(["none", "window"]),
    every_stat=st.booleans(),
)
def test_streaming_in_any_chunks_equals_batch_exactly(
    n: int, window: int, sensors: int, cuts: list[int], seed: int, lag_share: float, normalize: str, every_stat: bool
) -> None:
    lags = int(lag_share * (window - 1))
    normalize = normalize if window > 1 else "none"
    stats = STATS if every_stat else FeatureSpec.__dataclass_fields__["stats"].default
    spec = FeatureSpec(
        tuple(f"s{i}" for i in range(sensors)), window=window, stats=stats, lags=lags, normalize=normalize
    )
    # Rounded readings repeat now and then, so `flat` is exercised, not always 0.
    x = np.round(_readings(n, sensors, seed), 0 if every_stat else 12)
    stream = StreamWindow(spec)
    bounds = sorted({0, n, *[c for c in cuts if c <= n]})
    parts = [stream.push(x[a:b]) for a, b in itertools.pairwise(bounds)]
    np.testing.assert_array_equal(np.concatenate(parts), batch_features(spec, x))
    assert stream.count == n


@pytest.mark.parametrize(
    "spec",
    [
        FeatureSpec(("a", "b", "c"), window=16),
        FeatureSpec(("a", "b"), window=16, stats=("dev", "max", "std", "delta", "min", "mean")),
        FeatureSpec(("a", "b"), window=8, lags=7, normalize="window"),
        FeatureSpec(("a", "b", "c", "d"), window=16, lags=4, normalize="window"),
        FeatureSpec(("a",), window=5, stats=("std",), lags=2),
        FeatureSpec(("a", "b"), window=1),
        FeatureSpec(("a", "b", "c"), window=16, stats=("mean", "dev", "delta", "mad", "min", "max", "flat")),
        FeatureSpec(("a", "b"), window=7, stats=("flat", "mad", "std"), lags=3, normalize="window"),
    ],
    ids=["defaults", "stats reordered", "lags normalised", "all groups", "std and lags", "window 1", "robust", "odd"],
)
def test_one_reading_at_a_time_equals_batch_exactly(spec: FeatureSpec) -> None:
    """Single readings take their own path (features written in place into a per-spec scratch): same bits."""
    x = _readings(60, spec.n_sensors, seed=3) * 1e3
    x[10:18] = x[9]  # a held reading, so that ``flat`` counts up
    stream = StreamWindow(spec)
    rows = [stream.push(x[i : i + 1]) for i in range(len(x))]
    np.testing.assert_array_equal(np.concatenate(rows), batch_features(spec, x))
    assert len({id(row) for row in rows}) == len(rows)  # each its own array, not the reused scratch
    assert not np.shares_memory(rows[-1], rows[-2])


@pytest.mark.parametrize("window", [16, 7, 2])
def test_order_statistics_of_one_reading_equal_batch_bit_for_bit_with_ties_and_signed_zeros(window: int) -> None:
    """``mad`` and ``flat`` of a single reading are computed on Python floats: the same bits as the array path."""
    spec = FeatureSpec(("a", "b", "c"), window=window, stats=("mad", "flat", "mean"))
    rng = np.random.default_rng(11)
    x = rng.choice(np.array([-1.5, -0.0, 0.0, 0.0, 1.0, 2.5, 1e15]), size=(300, 3))
    x[100:130, 1] = -0.0  # a stuck sensor at a signed zero
    stream = StreamWindow(spec)
    single = np.concatenate([stream.push(x[i : i + 1]) for i in range(len(x))])
    batch = batch_features(spec, x)
    assert single.tobytes() == batch.tobytes()  # bitwise: -0.0 and 0.0 differ here, unlike assert_array_equal
    # Columns per sensor: raw, mad, flat, mean. Both statistics move: a's spread, b's stuck run at its cap.
    assert batch[:, 1].max() > 0
    assert batch[:, 6].max() == window - 2


def test_a_single_reading_from_another_thread_gets_the_same_features() -> None:
    spec = FeatureSpec(("a", "b"), window=6, lags=2, normalize="window")
    x = _readings(20, 2, seed=8)
    here, there = StreamWindow(spec), StreamWindow(spec)
    expected = [here.push(x[i : i + 1]) for i in range(len(x))]
    got: list[np.ndarray] = []
    worker = threading.Thread(target=lambda: got.extend(there.push(x[i : i + 1]) for i in range(len(x))))
    worker.start()
    worker.join()
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(expected))


def test_stream_memory_is_bounded_by_the_window() -> None:
    spec = FeatureSpec(("a",), window=8)
    stream = StreamWindow(spec)
    for chunk in np.array_split(_readings(10_000, 1), 100):
        stream.push(chunk)
    assert len(stream.state()) == 8 + 8 * 8 + 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sensors": ()}, "at least one sensor"),
        ({"sensors": ("a", "a")}, "unique"),
        ({"sensors": ("a",), "window": 0}, "window"),
        ({"sensors": ("a",), "stats": ("median",)}, "Unknown statistics"),
        ({"sensors": ("a",), "window": 4, "lags": 4}, "raise window to at least lags"),
        ({"sensors": ("a",), "lags": -1}, "lags"),
        ({"sensors": ("a",), "normalize": "zscore"}, "normalize 'zscore' is unknown"),
        ({"sensors": ("a",), "window": 1, "stats": (), "normalize": "window"}, "window >= 2"),
    ],
)
def test_invalid_specs_say_what_is_wrong(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(FeatureSpecError, match=message):
        FeatureSpec(**kwargs)  # type: ignore[arg-type]


def test_wrong_reading_width_is_refused() -> None:
    spec = FeatureSpec(("a", "b"))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        StreamWindow(spec).push([[1.0, 2.0, 3.0]])


def test_spec_round_trips_through_dict() -> None:
    spec = FeatureSpec(("a", "b"), window=7, stats=("std", "max"))
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    lagged = FeatureSpec(("a", "b"), window=7, stats=(), lags=6, normalize="window")
    assert FeatureSpec.from_dict(lagged.to_dict()) == lagged


def test_a_spec_without_lags_or_normalisation_writes_the_original_keys_only() -> None:
    # Bundles of specs that do not use the new groups read exactly as before on older runtimes.
    assert set(FeatureSpec(("a",)).to_dict()) == {"sensors", "window", "stats"}


def test_lagged_values_are_the_previous_readings_newest_first() -> None:
    spec = FeatureSpec(("a", "b"), window=4, stats=(), lags=3)
    assert spec.feature_names() == ["a", "a__lag1", "a__lag2", "a__lag3", "b", "b__lag1", "b__lag2", "b__lag3"]
    x = _readings(30, 2, seed=5)
    feats = batch_features(spec, x).reshape(30, 2, 4)
    for t in (0, 1, 2, 3, 17, 29):
        for k in range(4):
            np.testing.assert_array_equal(feats[t, :, k], x[max(t - k, 0)])  # padded with the first reading


def test_window_normalisation_removes_each_streams_own_level() -> None:
    spec = FeatureSpec(("a",), window=5, stats=("mean", "std", "max", "delta"), lags=2, normalize="window")
    x = _readings(40, 1, seed=9)
    plain = batch_features(FeatureSpec(("a",), window=5, stats=("mean", "std", "max", "delta"), lags=2), x)
    shifted = batch_features(spec, x + 1000.0)  # the same signal on a device with another baseline
    np.testing.assert_allclose(shifted, batch_features(spec, x), atol=1e-9)
    mean = plain[:, 1]
    np.testing.assert_allclose(batch_features(spec, x)[:, [0, 1, 3, 5, 6]], plain[:, [0, 1, 3, 5, 6]] - mean[:, None])
    np.testing.assert_allclose(batch_features(spec, x)[:, [2, 4]], plain[:, [2, 4]])  # std, delta: no level


def test_single_readings_mixed_with_chunks_equal_batch_exactly() -> None:
    spec = FeatureSpec(("a", "b", "c"), window=6)
    x = _readings(50, 3, seed=7)
    stream = StreamWindow(spec)
    sizes = [1, 1, 3, 1, 10, 1, 1, 1, 2, 20, 1, 8]
    bounds = np.cumsum([0, *sizes])
    parts = [stream.push(x[a:b]) for a, b in itertools.pairwise(bounds)]
    np.testing.assert_array_equal(np.concatenate(parts), batch_features(spec, x))


def test_copy_is_independent_and_scores_identically() -> None:
    spec = FeatureSpec(("a", "b"), window=4)
    rng = np.random.default_rng(3)
    first, more = rng.normal(size=(6, 2)), rng.normal(size=(3, 2))
    window = StreamWindow(spec)
    window.push(first)
    before = window.state()
    copy = window.copy()
    assert copy.state() == before
    assert copy.spec == spec
    copied_single = copy.push(more[:1])
    copied_batch = copy.push(more[1:])
    assert window.state() == before  # pushing onto the copy leaves the original untouched
    np.testing.assert_array_equal(copied_single, window.push(more[:1]))
    np.testing.assert_array_equal(copied_batch, window.push(more[1:]))
    assert window.state() == copy.state()


def test_mad_and_flat_match_a_naive_rolling_window() -> None:
    spec = FeatureSpec(("a", "b"), window=6, stats=("mad", "flat"))
    x = np.round(_readings(60, 2, seed=3), 0)  # integer readings: runs of equal values occur
    feats = batch_features(spec, x).reshape(60, 2, 3)
    for t in range(60):
        window = np.array([x[max(i, 0)] for i in range(t - 5, t + 1)])  # padded with the first reading
        for j in range(2):
            w = window[:, j]
            run = 0
            while run < 5 and w[-2 - run] == w[-1]:
                run += 1
            assert feats[t, j, 1] == np.median(np.abs(w - np.median(w)))
            assert feats[t, j, 2] == max(run - 1, 0)


def test_flat_counts_how_long_a_stuck_reading_is_held_and_forgets_it_at_once() -> None:
    spec = FeatureSpec(("a",), window=8, stats=("flat",))
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    x[10] = x[9]  # one repeat, as a gap filled forward gives: not a stuck sensor
    x[20:32] = x[20]  # stuck for 12 readings
    flat = batch_features(spec, x[:, None])[:, 1]
    assert flat[10] == 0
    np.testing.assert_array_equal(flat[20:32], [0, 0, 1, 2, 3, 4, 5, 6, 6, 6, 6, 6])  # capped at window - 2
    assert flat[32] == 0  # no echo: the first changed reading counts 0


def test_mad_barely_moves_for_a_spike_that_inflates_std_for_the_whole_window() -> None:
    spec = FeatureSpec(("a",), window=16, stats=("std", "mad"))
    x = np.random.default_rng(1).normal(size=(200, 1))
    spiked = x.copy()
    spiked[100] += 20.0
    clean, dirty = batch_features(spec, x), batch_features(spec, spiked)
    after = slice(101, 116)  # the readings whose window still holds the spike
    assert np.all(dirty[after, 1] > 3 * clean[after, 1])  # std
    assert np.all(np.abs(dirty[after, 2] - clean[after, 2]) < 0.5 * clean[after, 2])  # mad


def test_every_statistic_runs_without_numpy_ma_which_the_runtime_image_removes() -> None:
    # np.median imports numpy.ma on its first call; Dockerfile.runtime prunes numpy/ma, so the device's golden
    # self-test failed to run a model that reads `mad` ("No module named 'numpy.ma'").
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys; sys.modules['numpy.ma'] = None\n"
        "import numpy as np\n"
        "from edge_runtime.features import STATS, FeatureSpec, StreamWindow, batch_features\n"
        "spec = FeatureSpec(('a', 'b'), window=8, stats=STATS)\n"
        "x = np.arange(80.0).reshape(40, 2) % 5\n"
        "batch_features(spec, x)\n"
        "StreamWindow(spec).push(x[:1])\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
