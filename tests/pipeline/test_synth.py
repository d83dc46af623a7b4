from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edge_runtime.errors import InputError
from pipeline.synth import (
    ANOMALY_KINDS,
    COLUMNS,
    NORMAL_KIND,
    SENSORS,
    anomaly_summary,
    synth_telemetry,
    write_telemetry,
)
from pipeline.tabular_io import TableError, write_table
from pipeline.telemetry import load_telemetry


@pytest.fixture(scope="module")
def week() -> pd.DataFrame:
    return synth_telemetry(devices=3, days=7, seed=11)


def test_shape_columns_and_types(week: pd.DataFrame) -> None:
    assert tuple(week.columns) == COLUMNS
    assert len(week) == 3 * 7 * 24 * 60
    assert str(week["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert week["label"].dtype == np.int8
    assert week["device"].unique().tolist() == ["dev-01", "dev-02", "dev-03"]
    for _, rows in week.groupby("device"):
        assert rows["timestamp"].is_monotonic_increasing
        assert (rows["timestamp"].diff().dropna() == pd.Timedelta(seconds=60)).all()


def test_same_seed_same_frame_and_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = synth_telemetry(devices=2, days=1, seed=5)
    b = synth_telemetry(devices=2, days=1, seed=5)
    c = synth_telemetry(devices=2, days=1, seed=6)
    pd.testing.assert_frame_equal(a, b)
    assert not a[list(SENSORS)].equals(c[list(SENSORS)])
    first = write_telemetry(a, tmp_path / "a.csv").read_bytes()
    second = write_telemetry(b, tmp_path / "b.csv").read_bytes()
    assert first == second
    assert first != write_telemetry(c, tmp_path / "c.csv").read_bytes()
    pa = write_telemetry(a, tmp_path / "a.parquet").read_bytes()
    assert pa == write_telemetry(b, tmp_path / "b.parquet").read_bytes()


def test_every_anomaly_kind_appears_on_every_device_with_labels(week: pd.DataFrame) -> None:
    assert ((week["anomaly_kind"] != NORMAL_KIND) == (week["label"] == 1)).all()
    for device, rows in week.groupby("device"):
        kinds = set(rows.loc[rows["label"] == 1, "anomaly_kind"])
        assert kinds == set(ANOMALY_KINDS), device
    share = week["label"].mean()
    assert 0.01 < share < 0.06  # "a few percent"
    events = anomaly_summary(week)
    assert all(n_events >= 3 and n_rows >= n_events for n_events, n_rows in events.values())


def test_short_series_still_get_every_kind() -> None:
    frame = synth_telemetry(devices=2, days=1, seed=0)
    for _, rows in frame.groupby("device"):
        assert set(rows["anomaly_kind"]) == {NORMAL_KIND, *ANOMALY_KINDS}


def test_anomalies_look_like_their_kind(week: pd.DataFrame) -> None:
    normal = week[week["label"] == 0]
    kind = week["anomaly_kind"].to_numpy()
    device = week["device"].to_numpy()
    starts = np.flatnonzero(np.r_[True, (kind[1:] != kind[:-1]) | (device[1:] != device[:-1])])
    stops = np.r_[starts[1:], len(week)]
    for start, stop in zip(starts, stops, strict=True):
        segment = week.iloc[start:stop]
        if kind[start] == "stuck":  # some sensor holds one exact value
            assert any(segment[s].nunique() == 1 for s in SENSORS)
        if kind[start] == "spike":  # some sensor leaves the normal range of its device
            dev = normal[normal["device"] == device[start]]
            assert any((segment[s] > dev[s].max()).any() or (segment[s] < dev[s].min()).any() for s in SENSORS) or any(
                (segment[s] - dev[s].mean()).abs().max() > 3 * dev[s].std() for s in SENSORS
            )


def test_sensors_are_correlated_and_realistic(week: pd.DataFrame) -> None:
    normal = week[(week["label"] == 0) & (week["device"] == "dev-01")].dropna()
    corr = normal[list(SENSORS)].corr()
    assert corr.loc["motor_current", "vibration_rms"] > 0.8
    assert corr.loc["motor_current", "pressure"] > 0.7
    assert corr.loc["motor_current", "temperature"] > 0.3
    assert (week[["vibration_rms", "motor_current", "pressure"]].dropna() >= 0).all().all()


def test_temperature_lags_current() -> None:
    frame = synth_telemetry(devices=1, days=3, seed=2)
    current, temp = frame["motor_current"].interpolate(), frame["temperature"].interpolate()
    lagged = [current.corr(temp.shift(-lag)) for lag in (0, 10)]
    assert lagged[1] > lagged[0]  # temperature now matches current some minutes ago


def test_missing_readings_are_a_small_fraction(week: pd.DataFrame) -> None:
    missing = week[list(SENSORS)].isna().mean()
    assert ((missing > 0) & (missing < 0.01)).all()
    assert not week.loc[week["label"] == 1, list(SENSORS)].isna().any().any()


def test_ten_devices_a_week_at_one_minute_is_100800_rows() -> None:
    frame = synth_telemetry(devices=10, days=7, seed=0)
    assert len(frame) == 100_800


@pytest.mark.parametrize(
    "kwargs", [{"devices": 0}, {"days": 0}, {"interval_s": 0}, {"days": 1 / 86_400 * 30, "interval_s": 60}]
)
def test_bad_parameters_are_input_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(InputError):
        synth_telemetry(**kwargs)  # type: ignore[arg-type]


def test_written_files_load_back(tmp_path: Path) -> None:
    frame = synth_telemetry(devices=2, days=0.5, seed=4)
    for name in ("t.csv", "t.parquet"):
        t = load_telemetry(write_telemetry(frame, tmp_path / "sub" / name))
        assert t.n_rows == len(frame)
        assert t.frame["label"].tolist() == frame["label"].tolist()
        assert t.stream_names == ("dev-01", "dev-02")


def test_a_failed_write_leaves_the_old_file_and_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "t.parquet"
    target.write_bytes(b"old")
    unwritable = pd.DataFrame({"x": [1, "two", object()]})  # pyarrow cannot store this column
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever pyarrow raises, the old file must survive
        write_table(unwritable, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_unknown_output_extension_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TableError, match=r"'\.xlsx'"):
        write_telemetry(synth_telemetry(devices=1, days=0.1), tmp_path / "t.xlsx")
    assert list(tmp_path.iterdir()) == []
