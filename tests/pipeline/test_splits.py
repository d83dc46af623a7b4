from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from edge_runtime.errors import InputError
from edge_runtime.features import FeatureSpec, batch_features
from pipeline.splits import time_splits
from pipeline.telemetry import Telemetry, telemetry_from_frame


def _telemetry(n: tuple[int, ...] = (100, 60), labels: bool = True) -> Telemetry:
    rng = np.random.default_rng(0)
    frames = []
    for i, rows in enumerate(n):
        frame = pd.DataFrame(
            {
                "timestamp": pd.date_range("2026-01-01", periods=rows, freq="min", tz="UTC"),
                "device": f"d{i}",
                "a": rng.normal(size=rows) * 1.1,
                "b": np.arange(rows) / 7.0,
            }
        )
        if labels:
            frame["label"] = (np.arange(rows) % 10 == 0).astype(int)
        frames.append(frame)
    # Shuffled on purpose: the loader sorts, the splits rely on that.
    return telemetry_from_frame(pd.concat(frames).sample(frac=1.0, random_state=0))


def test_each_stream_is_cut_in_time_order_without_overlap() -> None:
    tel = _telemetry()
    splits = time_splits(tel, FeatureSpec(sensors=("a", "b"), window=4))
    assert (splits.train.n_rows, splits.validation.n_rows, splits.test.n_rows) == (60 + 36, 20 + 12, 20 + 12)
    for stream in ("d0", "d1"):
        train, val, test = (s.stream(stream) for s in (splits.train, splits.validation, splits.test))
        assert train.timestamps.max() < val.timestamps.min()
        assert val.timestamps.max() < test.timestamps.min()
        for part in (train, val, test):
            assert (np.diff(part.timestamps) > np.timedelta64(0)).all()


def test_features_are_the_shared_batch_features_rounded_to_float32() -> None:
    tel = _telemetry()
    spec = FeatureSpec(sensors=("a", "b"), window=4)
    splits = time_splits(tel, spec)
    _, frame = next(tel.streams())
    expected = batch_features(spec, frame[["a", "b"]].to_numpy()).astype(np.float32)
    got = np.concatenate([s.stream("d0").features for s in (splits.train, splits.validation, splits.test)])
    np.testing.assert_array_equal(got, expected.astype(np.float64))
    assert splits.train.features.shape[1] == spec.n_features


def test_labels_follow_rows_and_are_absent_without_labels() -> None:
    splits = time_splits(_telemetry(), FeatureSpec(sensors=("a", "b")))
    assert splits.has_labels
    assert splits.test.labels is not None
    assert splits.train.labels is not None
    assert splits.train.labels.dtype == np.int8
    unlabelled = time_splits(_telemetry(labels=False), FeatureSpec(sensors=("a", "b")))
    assert not unlabelled.has_labels
    assert unlabelled.test.labels is None


def test_too_short_streams_and_bad_fractions_are_input_errors() -> None:
    with pytest.raises(InputError, match="split is empty"):
        time_splits(_telemetry(n=(2,)), FeatureSpec(sensors=("a", "b")))
    with pytest.raises(InputError, match="fractions"):
        time_splits(_telemetry(), FeatureSpec(sensors=("a", "b")), fractions=(0.5, 0.5, 0.5))
    with pytest.raises(InputError, match="lacks"):
        time_splits(_telemetry(), FeatureSpec(sensors=("a", "zzz")))
