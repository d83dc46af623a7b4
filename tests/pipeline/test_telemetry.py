from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edge_runtime.errors import InputError
from pipeline.synth import synth_telemetry
from pipeline.tabular_io import sniff_delimiter, write_table
from pipeline.telemetry import Telemetry, TelemetryError, load_telemetry, telemetry_from_frame


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


MULTI = """timestamp,device,temperature,pressure,label
2026-01-01T00:00:00Z,b,20.0,4.0,0
2026-01-01T00:01:00Z,b,21.0,4.1,1
2026-01-01T00:00:00Z,a,30.0,5.0,0
2026-01-01T00:01:00Z,a,31.0,5.1,0
2026-01-01T00:02:00Z,a,32.0,5.2,0
"""


# -- happy paths --------------------------------------------------------------------------------


def test_multivariate_csv_is_normalised_to_the_contract(tmp_path: Path) -> None:
    t = load_telemetry(write(tmp_path, "t.csv", MULTI))
    assert isinstance(t, Telemetry)
    assert list(t.frame.columns) == ["timestamp", "stream", "temperature", "pressure", "label"]
    assert t.sensors == ("temperature", "pressure")
    assert t.has_labels
    assert str(t.frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert t.frame["temperature"].dtype == np.float64
    assert t.frame["label"].dtype == np.int8
    assert isinstance(t.frame.index, pd.RangeIndex)
    assert t.frame["stream"].tolist() == ["a", "a", "a", "b", "b"]
    assert t.n_rows == 5
    assert t.source == str(tmp_path / "t.csv")
    assert t.stream_column == "device"
    assert t.label_rate == pytest.approx(0.2)
    streams = dict(t.streams())
    assert list(streams) == ["a", "b"]
    assert streams["b"]["temperature"].tolist() == [20.0, 21.0]
    assert t.fingerprint.startswith("sha256:")
    assert len(t.fingerprint) == 7 + 64


def test_semicolon_skab_style_file(tmp_path: Path) -> None:
    text = (
        "datetime;Accelerometer1RMS;Current;Temperature;anomaly;changepoint\n"
        "2020-03-09 10:14:33;0.026;1.43;68.6;0.0;0.0\n"
        "2020-03-09 10:14:34;0.027;1.41;68.7;1.0;1.0\n"
        "2020-03-09 10:14:35;0.028;1.42;68.8;0.0;0.0\n"
    )
    t = load_telemetry(write(tmp_path, "skab.csv", text))
    assert t.sensors == ("Accelerometer1RMS", "Current", "Temperature")  # no changepoint
    assert "left out known non-sensor columns ['changepoint'] (pass sensors= to use them)" in t.notes
    assert t.label_column == "anomaly"
    assert t.frame["label"].tolist() == [0, 1, 0]
    assert t.frame["stream"].unique().tolist() == ["default"]
    assert t.frame["timestamp"].iloc[0] == pd.Timestamp("2020-03-09T10:14:33Z")


def test_tab_delimited_file(tmp_path: Path) -> None:
    t = load_telemetry(write(tmp_path, "t.tsv", "ts\tvalue\n1700000000\t1.5\n1700000060\t2.5\n"))
    assert t.sensors == ("value",)
    assert t.frame["value"].tolist() == [1.5, 2.5]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["a,b,c", "1,2,3"], ","),
        (["a;b;c", "1,5;2,5;3"], ";"),  # decimal commas in the data do not fool it: the header decides
        (["a\tb", "1\t2"], "\t"),
        (["value"], ","),
    ],
)
def test_sniff_delimiter(lines: list[str], expected: str) -> None:
    assert sniff_delimiter(lines) == expected


def test_univariate_nab_style_file_with_and_without_labels(tmp_path: Path) -> None:
    plain = load_telemetry(
        write(tmp_path, "nab.csv", "timestamp,value\n2014-04-01 00:00:00,18.3\n2014-04-01 00:05:00,19.1\n")
    )
    assert plain.sensors == ("value",)
    assert not plain.has_labels
    assert list(plain.frame.columns) == ["timestamp", "stream", "value"]
    assert plain.label_rate is None
    labelled = load_telemetry(
        write(tmp_path, "nabl.csv", "timestamp,value,label\n2014-04-01 00:00:00,18.3,0\n2014-04-01 00:05:00,99.0,1\n")
    )
    assert labelled.frame["label"].tolist() == [0, 1]


def test_epoch_seconds_and_milliseconds_give_the_same_times(tmp_path: Path) -> None:
    seconds = load_telemetry(write(tmp_path, "s.csv", "time,x\n1767225600,1\n1767225660,2\n"))
    millis = load_telemetry(write(tmp_path, "ms.csv", "time,x\n1767225600000,1\n1767225660000,2\n"))
    assert seconds.frame["timestamp"].tolist() == millis.frame["timestamp"].tolist()
    assert seconds.frame["timestamp"].iloc[0] == pd.Timestamp("2026-01-01T00:00:00Z")
    assert any("epoch seconds" in n for n in seconds.notes)
    assert any("epoch milliseconds" in n for n in millis.notes)


def test_iso_timestamps_with_offsets_become_utc(tmp_path: Path) -> None:
    t = load_telemetry(write(tmp_path, "t.csv", "timestamp,x\n2026-01-01T02:00:00+02:00,1\n2026-01-01T00:30:00Z,2\n"))
    assert t.frame["timestamp"].tolist() == [pd.Timestamp("2026-01-01T00:00:00Z"), pd.Timestamp("2026-01-01T00:30Z")]


def test_unsorted_rows_are_sorted_and_noted(tmp_path: Path) -> None:
    text = "timestamp,x\n2026-01-01T00:02:00Z,3\n2026-01-01T00:00:00Z,1\n2026-01-01T00:01:00Z,2\n"
    t = load_telemetry(write(tmp_path, "t.csv", text))
    assert t.frame["x"].tolist() == [1.0, 2.0, 3.0]
    assert "sorted 3 rows that were out of time order" in t.notes


def test_sorted_file_has_no_sorting_note(tmp_path: Path) -> None:
    t = load_telemetry(write(tmp_path, "t.csv", MULTI))  # streams interleaved, but each in time order
    assert not any(n.startswith("sorted") for n in t.notes)


def test_duplicate_timestamps_keep_the_first_and_are_noted(tmp_path: Path) -> None:
    text = (
        "timestamp,device,x\n2026-01-01T00:00:00Z,d1,1\n2026-01-01T00:01:00Z,d1,2\n"
        "2026-01-01T00:01:00Z,d1,99\n2026-01-01T00:02:00Z,d1,3\n2026-01-01T00:01:00Z,d2,5\n2026-01-01T00:02:00Z,d2,6\n"
    )
    t = load_telemetry(write(tmp_path, "t.csv", text))
    assert t.frame["x"].tolist() == [1.0, 2.0, 3.0, 5.0, 6.0]
    assert any(
        n.startswith("dropped 1 duplicate timestamps in stream 'd1' (first: 2026-01-01T00:01:00Z)") for n in t.notes
    )


def test_missing_readings_are_imputed_per_stream_forward_then_backward(tmp_path: Path) -> None:
    text = (
        "timestamp,device,x,y\n"
        "2026-01-01T00:00:00Z,a,,1\n2026-01-01T00:01:00Z,a,2,\n2026-01-01T00:02:00Z,a,,3\n"
        "2026-01-01T00:00:00Z,b,7,4\n2026-01-01T00:01:00Z,b,,5\n"
    )
    t = load_telemetry(write(tmp_path, "t.csv", text))
    assert t.frame["x"].tolist() == [2.0, 2.0, 2.0, 7.0, 7.0]  # never filled across streams
    assert t.frame["y"].tolist() == [1.0, 1.0, 3.0, 4.0, 5.0]
    assert not t.frame[list(t.sensors)].isna().any().any()
    assert any(n.startswith("imputed 3 missing readings in 'x'") for n in t.notes)
    assert any(n.startswith("imputed 1 missing readings in 'y'") for n in t.notes)


@pytest.mark.parametrize(("name", "values"), [("is_anomaly", "True,False"), ("labels", "true,false"), ("label", "1,0")])
def test_label_column_detection_and_booleans(tmp_path: Path, name: str, values: str) -> None:
    a, b = values.split(",")
    t = load_telemetry(write(tmp_path, "t.csv", f"timestamp,x,{name}\n1767225600,1,{a}\n1767225660,2,{b}\n"))
    assert t.has_labels
    assert t.label_column == name
    assert t.frame["label"].tolist() == [1, 0]
    assert "x" in t.sensors
    assert name not in t.sensors


def test_given_columns_override_detection(tmp_path: Path) -> None:
    text = "when,machine_no,a,b,flag\n1767225600,1,1.0,2.0,0\n1767225660,1,1.5,2.5,1\n"
    t = load_telemetry(
        write(tmp_path, "t.csv", text),
        timestamp_column="when",
        stream_column="machine_no",
        label_column="flag",
        sensors=["b"],
    )
    assert t.sensors == ("b",)
    assert t.frame["stream"].tolist() == ["1", "1"]
    assert t.frame["label"].tolist() == [0, 1]


def test_text_columns_are_ignored_not_sensors(tmp_path: Path) -> None:
    t = load_telemetry(write(tmp_path, "t.csv", "timestamp,site,x\n1767225600,north,1\n1767225660,north,2\n"))
    assert t.sensors == ("x",)
    assert any("ignored non-numeric columns ['site']" in n for n in t.notes)


def test_parquet_and_csv_of_the_same_data_have_the_same_fingerprint(tmp_path: Path) -> None:
    frame = synth_telemetry(devices=2, days=0.5, seed=3)
    csv = write_table(frame, tmp_path / "t.csv")
    parquet = write_table(frame, tmp_path / "t.parquet")
    a, b = load_telemetry(csv), load_telemetry(parquet)
    assert a.fingerprint == b.fingerprint == load_telemetry(csv).fingerprint
    assert a.fingerprint == telemetry_from_frame(frame).fingerprint
    assert a.fingerprint == telemetry_from_frame(a.frame).fingerprint  # normalising is idempotent
    assert a.fingerprint == telemetry_from_frame(frame.sample(frac=1, random_state=0)).fingerprint  # row order
    changed = frame.copy()
    changed.loc[5, "pressure"] += 0.001
    assert telemetry_from_frame(changed).fingerprint != a.fingerprint


def test_from_frame_accepts_synthetic_telemetry_and_a_datetime_index() -> None:
    frame = synth_telemetry(devices=2, days=0.25, seed=1)
    t = telemetry_from_frame(frame)
    assert t.source == "<frame>"
    assert t.sensors == ("temperature", "vibration_rms", "motor_current", "pressure")  # not anomaly_kind
    assert t.frame["label"].tolist() == frame["label"].tolist()
    indexed = pd.DataFrame({"x": [1.0, 2.0]}, index=pd.date_range("2026-01-01", periods=2, freq="min"))
    assert telemetry_from_frame(indexed).frame["timestamp"].iloc[1] == pd.Timestamp("2026-01-01T00:01Z")


# -- validation errors --------------------------------------------------------------------------


def error_of(path: Path, **kwargs: object) -> str:
    with pytest.raises(TelemetryError) as info:
        load_telemetry(path, **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, InputError)
    message = str(info.value)
    assert str(path) in message
    return message


def test_error_no_timestamp_column(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "t.csv", "when,x\n1,2\n"))
    assert "['when', 'x']" in message
    assert "--timestamp-column" in message


def test_error_given_timestamp_column_missing(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "t.csv", "timestamp,x\n1,2\n"), timestamp_column="clock")
    assert "'clock'" in message
    assert "['timestamp', 'x']" in message


def test_error_non_numeric_sensor_shows_value_and_row(tmp_path: Path) -> None:
    text = "timestamp,x\n1767225600,1\n1767225660,2\n1767225720,ERR\n1767225780,4\n"
    message = error_of(write(tmp_path, "t.csv", text))
    assert "'x'" in message
    assert "'ERR'" in message
    assert "data row 3" in message


def test_error_decimal_comma_gets_a_hint(tmp_path: Path) -> None:
    text = 'timestamp,x\n1767225600,1\n1767225660,2\n1767225720,"3,5"\n'
    assert "decimal comma" in error_of(write(tmp_path, "t.csv", text))


def test_error_all_empty_column(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "t.csv", "timestamp,x,y\n1767225600,1,\n1767225660,2,\n"))
    assert "'y'" in message
    assert "empty in every row" in message


def test_error_sensor_empty_in_one_stream(tmp_path: Path) -> None:
    text = "timestamp,device,x\n1767225600,a,1\n1767225660,a,2\n1767225600,b,\n1767225660,b,\n"
    message = error_of(write(tmp_path, "t.csv", text))
    assert "'x'" in message
    assert "'b'" in message


@pytest.mark.parametrize(("value", "shown"), [("2", "found 2 at"), ("yes please", "found 'yes please' at")])
def test_error_label_not_zero_one(tmp_path: Path, value: str, shown: str) -> None:
    text = f"timestamp,x,label\n1767225600,1,0\n1767225660,2,{value}\n"
    message = error_of(write(tmp_path, "t.csv", text))
    assert "'label'" in message
    assert shown in message
    assert "data row 2" in message
    assert "0/1" in message


def test_error_label_empty(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "t.csv", "timestamp,x,label\n1767225600,1,0\n1767225660,2,\n"))
    assert "label column 'label' is empty at data row 2" in message


def test_error_too_few_rows(tmp_path: Path) -> None:
    text = "timestamp,device,x\n1767225600,a,1\n1767225660,a,2\n1767225720,a,3\n1767225600,b,1\n"
    message = error_of(write(tmp_path, "t.csv", text), min_rows=3)
    assert "stream 'b' has 1 rows" in message
    assert "at least 3" in message
    assert "min_rows" in message


def test_error_too_few_rows_counts_after_duplicates(tmp_path: Path) -> None:
    text = "timestamp,x\n1767225600,1\n1767225600,2\n"
    assert "has 1 rows" in error_of(write(tmp_path, "t.csv", text))


def test_error_unparseable_timestamp_shows_value_and_row(tmp_path: Path) -> None:
    text = "timestamp,x\n2026-01-01T00:00:00Z,1\n2026-01-01T00:01:00Z,2\nyesterday,3\n"
    message = error_of(write(tmp_path, "t.csv", text))
    assert "'yesterday'" in message
    assert "data row 3" in message
    assert "ISO 8601" in message


def test_error_empty_timestamp(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "t.csv", "timestamp,x\n2026-01-01T00:00:00Z,1\n,2\n"))
    assert "empty at data row 2" in message


def test_error_empty_file(tmp_path: Path) -> None:
    assert "empty" in error_of(write(tmp_path, "t.csv", ""))


def test_error_header_only(tmp_path: Path) -> None:
    assert "no data rows" in error_of(write(tmp_path, "t.csv", "timestamp,x\n"))


def test_error_unknown_extension(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "t.xlsx", "timestamp,x\n1,2\n"))
    assert "'.xlsx'" in message
    assert ".csv" in message
    assert ".parquet" in message


def test_error_file_not_found(tmp_path: Path) -> None:
    assert "file not found" in error_of(tmp_path / "nope.csv")


def test_error_not_really_parquet(tmp_path: Path) -> None:
    assert "Parquet" in error_of(write(tmp_path, "t.parquet", "timestamp,x\n1,2\n"))


def test_error_no_sensor_columns(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "t.csv", "timestamp,site\n1767225600,north\n1767225660,south\n"))
    assert "no numeric sensor columns" in message
    assert "['timestamp', 'site']" in message


def test_error_unknown_sensor_requested(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "t.csv", "timestamp,x\n1767225600,1\n1767225660,2\n"), sensors=["rpm"])
    assert "'rpm'" in message
    assert "['timestamp', 'x']" in message


def test_frame_errors_name_the_source() -> None:
    with pytest.raises(TelemetryError, match=r"^<frame>: no timestamp column"):
        telemetry_from_frame(pd.DataFrame({"x": [1.0, 2.0]}))


def test_parquet_with_naive_datetimes_and_numeric_stream_ids(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "date": pd.to_datetime(["2026-01-01 00:00", "2026-01-01 00:01", "2026-01-01 00:00", "2026-01-01 00:01"]),
            "unit": [2.0, 2.0, 10.0, 10.0],
            "rpm": [1, 2, 3, 4],
        }
    )
    frame.to_parquet(tmp_path / "t.parquet")
    t = load_telemetry(tmp_path / "t.parquet")
    assert t.stream_names == ("10", "2")
    assert t.frame["timestamp"].iloc[0] == pd.Timestamp("2026-01-01T00:00:00Z")
    assert t.frame["rpm"].dtype == np.float64


def test_bom_and_spaces_after_delimiters(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes("\ufeffTimestamp, Value\n2026-01-01T00:00:00Z, 1.5\n2026-01-01T00:01:00Z, 2.5\n".encode())
    t = load_telemetry(path)
    assert t.timestamp_column == "Timestamp"
    assert t.sensors == ("Value",)
    assert t.frame["Value"].tolist() == [1.5, 2.5]


def test_error_epoch_too_large(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "t.csv", "ts,x\n1e30,1\n1e30,2\n"))
    assert "too large for an epoch time" in message
