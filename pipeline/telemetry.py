"""Telemetry in: load a CSV or Parquet file (or a DataFrame), validate it, normalise it.

The result, :class:`Telemetry`, always has the same shape whatever the file looked like:
``timestamp`` (UTC), ``stream``, the sensor columns (float64, gaps imputed), and ``label`` when
the file has labels; sorted by stream then time. What was fixed on the way is listed in
``notes``; what cannot be fixed raises :class:`TelemetryError` naming the file, the column,
the offending value and its data row (1-based, header not counted), and what to do.

Columns are recognised by name (case-insensitive) unless given:

* timestamp: :data:`TIMESTAMP_NAMES`; ISO 8601 strings or epoch seconds/ms/µs/ns (by magnitude)
* stream: :data:`STREAM_NAMES`; without one, every row belongs to the stream ``"default"``
* label: :data:`LABEL_NAMES`; 0/1, or true/false
* sensors: every other numeric column except :data:`NON_SENSOR_COLUMNS`
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from edge_runtime.errors import InputError
from pipeline.tabular_io import TableError, read_table

TIMESTAMP_NAMES: tuple[str, ...] = ("timestamp", "time", "datetime", "date", "ts")
STREAM_NAMES: tuple[str, ...] = ("device", "stream", "device_id", "stream_id", "machine", "unit")
LABEL_NAMES: tuple[str, ...] = ("label", "anomaly", "is_anomaly", "labels")
# Columns that are numeric in common datasets but are not sensor readings: SKAB's
# ``changepoint`` (a second kind of label), our synthetic ``anomaly_kind``, scores and row ids.
NON_SENSOR_COLUMNS: frozenset[str] = frozenset(
    {"changepoint", "anomaly_kind", "anomaly_score", "score", "index", "id", "row", "unnamed: 0"}
)
DEFAULT_STREAM = "default"
_TRUE = frozenset({"1", "1.0", "true", "t", "yes"})
_FALSE = frozenset({"0", "0.0", "false", "f", "no"})
_MAX_STREAM_NOTES = 10


class TelemetryError(InputError):
    """Telemetry that cannot be used: the message names the file, column, value and row, and the fix."""


@dataclass(frozen=True, eq=False)
class Telemetry:
    """Validated, normalised telemetry. Compare two by ``fingerprint``, not ``==``."""

    frame: pd.DataFrame
    sensors: tuple[str, ...]
    has_labels: bool
    source: str
    fingerprint: str
    notes: tuple[str, ...]
    # Where the columns came from in the source (for reports); the frame always uses the fixed names.
    timestamp_column: str = "timestamp"
    stream_column: str | None = None
    label_column: str | None = None

    def streams(self) -> Iterator[tuple[str, pd.DataFrame]]:
        """Each stream's rows, time-ordered; the sub-frames keep the global row index."""
        codes = self.frame["stream"].to_numpy()
        if len(codes) == 0:
            return
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        stops = np.r_[starts[1:], len(codes)]
        for start, stop in zip(starts, stops, strict=True):
            yield str(codes[start]), self.frame.iloc[start:stop]

    @property
    def n_rows(self) -> int:
        return len(self.frame)

    @property
    def stream_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.streams())

    @property
    def label_rate(self) -> float | None:
        """Fraction of rows labelled anomalous, or None without labels."""
        if not self.has_labels or self.n_rows == 0:
            return None
        return float(self.frame["label"].mean())


def load_telemetry(
    path: str | Path,
    *,
    timestamp_column: str | None = None,
    stream_column: str | None = None,
    label_column: str | None = None,
    sensors: Sequence[str] | None = None,
    min_rows: int = 2,
) -> Telemetry:
    """Load and validate a telemetry file (.csv with ``,`` ``;`` or tab, or .parquet)."""
    try:
        raw = read_table(path)
    except TableError as exc:
        raise TelemetryError(str(exc)) from exc
    return telemetry_from_frame(
        raw,
        source=str(path),
        timestamp_column=timestamp_column,
        stream_column=stream_column,
        label_column=label_column,
        sensors=sensors,
        min_rows=min_rows,
    )


def telemetry_from_frame(
    frame: pd.DataFrame,
    *,
    source: str = "<frame>",
    timestamp_column: str | None = None,
    stream_column: str | None = None,
    label_column: str | None = None,
    sensors: Sequence[str] | None = None,
    min_rows: int = 2,
) -> Telemetry:
    """Validate and normalise an in-memory table, as :func:`load_telemetry` does for a file."""
    if not isinstance(min_rows, int) or min_rows < 1:
        raise TelemetryError(f"min_rows must be an integer >= 1, got {min_rows!r}.")
    raw = frame.copy()
    raw.columns = [str(c).strip() for c in raw.columns]
    if isinstance(raw.index, pd.DatetimeIndex) and timestamp_column is None and _find(raw, TIMESTAMP_NAMES) is None:
        raw = raw.reset_index(names="timestamp")
    raw = raw.reset_index(drop=True)
    if len(raw.columns) == 0 or len(raw) == 0:
        found = f"columns {list(raw.columns)}" if len(raw.columns) else "no columns"
        raise TelemetryError(
            f"{source}: no data rows ({found}); the file needs a header row and at least one data row."
        )
    return _Normaliser(raw, source).run(timestamp_column, stream_column, label_column, sensors, min_rows)


def _find(frame: pd.DataFrame, names: Sequence[str]) -> str | None:
    by_lower = {str(c).lower(): str(c) for c in frame.columns}
    for name in names:
        if name in by_lower:
            return by_lower[name]
    return None


def _row(position: int) -> str:
    return f"data row {position + 1}"


def _show(value: object) -> str:
    """A cell as a person would write it: ``'ERR'``, ``2``, ``0.5`` (not ``np.float64(0.5)``)."""
    item = value.item() if isinstance(value, np.generic) else value
    return repr(item)


class _Normaliser:
    """One pass over one table; holds the source name so every error can name it."""

    def __init__(self, raw: pd.DataFrame, source: str) -> None:
        self.raw = raw
        self.source = source
        self.notes: list[str] = []

    def fail(self, message: str) -> TelemetryError:
        return TelemetryError(f"{self.source}: {message}")

    def run(
        self,
        timestamp_column: str | None,
        stream_column: str | None,
        label_column: str | None,
        sensors: Sequence[str] | None,
        min_rows: int,
    ) -> Telemetry:
        ts_col = self._pick_timestamp(timestamp_column)
        stream_col = self._pick_optional(stream_column, STREAM_NAMES, "stream", "--stream-column")
        label_col = self._pick_optional(label_column, LABEL_NAMES, "label", "--label-column")
        sensor_cols = self._pick_sensors(sensors, {ts_col, stream_col, label_col})

        out = pd.DataFrame({"timestamp": self._timestamps(ts_col), "stream": self._streams(stream_col)})
        for name in sensor_cols:
            out[name] = self._sensor(name)
        if label_col is not None:
            out["label"] = self._labels(label_col)

        out = self._sort_and_dedupe(out)
        self._check_lengths(out, min_rows)
        self._impute(out, sensor_cols)
        out = out.reset_index(drop=True)
        return Telemetry(
            frame=out,
            sensors=tuple(sensor_cols),
            has_labels=label_col is not None,
            source=self.source,
            fingerprint=fingerprint(out, tuple(sensor_cols)),
            notes=tuple(self.notes),
            timestamp_column=ts_col,
            stream_column=stream_col,
            label_column=label_col,
        )

    # -- choosing columns -------------------------------------------------------------------

    def _require_column(self, name: str, role: str, flag: str) -> str:
        if name in self.raw.columns:
            return name
        found = _find(self.raw, (name.lower(),))
        if found is not None:
            return found
        raise self.fail(f"no {role} column {name!r}; columns found: {list(self.raw.columns)}. Check {flag}.")

    def _pick_timestamp(self, given: str | None) -> str:
        if given is not None:
            return self._require_column(given, "timestamp", "--timestamp-column")
        found = _find(self.raw, TIMESTAMP_NAMES)
        if found is None:
            dated = [str(c) for c in self.raw.columns if pd.api.types.is_datetime64_any_dtype(self.raw[c])]
            if dated:
                return dated[0]
            raise self.fail(
                f"no timestamp column; columns found: {list(self.raw.columns)}. Name one "
                f"{'/'.join(TIMESTAMP_NAMES)} or pass --timestamp-column NAME (timestamp_column= in Python)."
            )
        return found

    def _pick_optional(self, given: str | None, names: Sequence[str], role: str, flag: str) -> str | None:
        if given is not None:
            return self._require_column(given, role, flag)
        return _find(self.raw, names)

    def _pick_sensors(self, given: Sequence[str] | None, taken: set[str | None]) -> list[str]:
        if given is not None:
            if isinstance(given, str):
                given = [given]
            if not given:
                raise self.fail("sensors= is empty; name at least one sensor column or leave it out.")
            chosen = [self._require_column(name, "sensor", "the sensor names") for name in given]
            for name in chosen:
                if name in taken:
                    raise self.fail(f"column {name!r} is used as timestamp/stream/label and cannot be a sensor.")
            return chosen
        reserved = {n.lower() for n in TIMESTAMP_NAMES + STREAM_NAMES + LABEL_NAMES} | NON_SENSOR_COLUMNS
        chosen, ignored, excluded = [], [], []
        for column in self.raw.columns:
            name = str(column)
            if name in taken:
                continue
            if name.lower() in reserved:
                excluded.append(name)
                continue
            series = self.raw[name]
            if pd.api.types.is_bool_dtype(series):
                ignored.append(name)
            elif pd.api.types.is_numeric_dtype(series) or _mostly_numeric(series):
                chosen.append(name)
            else:
                ignored.append(name)
        if excluded:
            self.notes.append(f"left out known non-sensor columns {excluded} (pass sensors= to use them)")
        if ignored:
            self.notes.append(f"ignored non-numeric columns {ignored} (pass sensors= to choose columns)")
        if not chosen:
            raise self.fail(
                f"no numeric sensor columns; columns found: {list(self.raw.columns)}. Sensor columns must hold "
                "numbers with '.' as the decimal point; pass sensors=[...] to name them."
            )
        return chosen

    # -- converting columns -----------------------------------------------------------------

    def _timestamps(self, column: str) -> pd.Series:
        series = self.raw[column]
        missing = series.isna().to_numpy()
        if missing.any():
            pos = int(np.flatnonzero(missing)[0])
            raise self.fail(
                f"timestamp column {column!r} is empty at {_row(pos)} ({int(missing.sum())} empty in all); "
                "every row needs a timestamp: fill it in or delete the row."
            )
        try:
            if pd.api.types.is_datetime64_any_dtype(series):
                parsed = pd.to_datetime(series, utc=True)
            else:
                numeric = _as_numbers(series)
                parsed = self._iso(column, series) if numeric is None else self._epoch(column, numeric)
            return parsed.astype("datetime64[ns, UTC]")
        except (pd.errors.OutOfBoundsDatetime, OverflowError) as exc:
            raise self.fail(
                f"timestamp column {column!r} holds a date outside 1677..2262 ({exc}); check the values "
                "and whether epoch numbers are in seconds or milliseconds."
            ) from exc

    def _epoch(self, column: str, numbers: pd.Series) -> pd.Series:
        values = numbers.to_numpy(dtype=np.float64)
        magnitude = float(np.median(np.abs(values)))
        # Decide the unit by size: "now" is ~1.8e9 s, ~1.8e12 ms, ~1.8e15 µs, ~1.8e18 ns.
        if magnitude < 1e11:
            unit = "s"
        elif magnitude < 1e14:
            unit = "ms"
        elif magnitude < 1e17:
            unit = "us"
        else:
            unit = "ns"
        bad = ~np.isfinite(values) | (np.abs(values) >= 9.2e18)  # beyond int64 nanoseconds in any unit
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise self.fail(
                f"timestamp column {column!r} holds {_show(numbers.iloc[pos])} at {_row(pos)}, too large for an "
                "epoch time; use epoch seconds/milliseconds or ISO 8601."
            )
        names = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
        self.notes.append(f"read {column!r} as epoch {names[unit]}")
        if unit == "ns":
            return pd.to_datetime(numbers.astype("int64"), unit="ns", utc=True)
        return pd.to_datetime(values, unit=unit, utc=True).to_series(index=numbers.index)

    def _iso(self, column: str, series: pd.Series) -> pd.Series:
        text = series.astype(str).str.strip()
        parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
        bad = parsed.isna().to_numpy()
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise self.fail(
                f"timestamp column {column!r} has an unparseable value {_show(text.iloc[pos])} at {_row(pos)} "
                f"({int(bad.sum())} bad in all); use ISO 8601 (e.g. 2026-01-31T12:00:00Z) or epoch "
                "seconds/milliseconds."
            )
        return parsed

    def _streams(self, column: str | None) -> pd.Series:
        if column is None:
            return pd.Series(DEFAULT_STREAM, index=self.raw.index, dtype=str)
        series = self.raw[column]
        missing = series.isna().to_numpy()
        if missing.any():
            pos = int(np.flatnonzero(missing)[0])
            raise self.fail(
                f"stream column {column!r} is empty at {_row(pos)}; give every row a stream/device id "
                "or pass another --stream-column."
            )
        if pd.api.types.is_float_dtype(series) and bool((series == series.round()).all()):
            series = series.astype("int64")
        return series.astype(str)

    def _sensor(self, column: str) -> pd.Series:
        series = self.raw[column]
        if pd.api.types.is_numeric_dtype(series):  # bool included: a 0/1 sensor the caller asked for
            values = series.astype("float64")
        else:
            values = pd.to_numeric(series, errors="coerce").astype("float64")
            bad = (values.isna() & series.notna()).to_numpy()
            if bad.any():
                pos = int(np.flatnonzero(bad)[0])
                value = series.iloc[pos]
                hint = " It looks like a decimal comma: use '.' as the decimal point." if _decimal_comma(value) else ""
                raise self.fail(
                    f"sensor column {column!r} has a non-numeric value {_show(value)} at {_row(pos)} "
                    f"({int(bad.sum())} such values).{hint} Fix the value, leave the cell empty to mark a missing "
                    "reading, or choose other columns with sensors=[...]."
                )
        if values.isna().all():
            raise self.fail(
                f"sensor column {column!r} is empty in every row; drop the column or choose sensors with sensors=[...]."
            )
        infinite = np.isinf(values.to_numpy())
        if infinite.any():
            pos = int(np.flatnonzero(infinite)[0])
            raise self.fail(
                f"sensor column {column!r} has a non-finite value {_show(values.iloc[pos])} at {_row(pos)}; "
                "replace it with a reading or leave the cell empty."
            )
        return values

    def _labels(self, column: str) -> pd.Series:
        series = self.raw[column]
        missing = series.isna().to_numpy()
        if missing.any():
            pos = int(np.flatnonzero(missing)[0])
            raise self.fail(
                f"label column {column!r} is empty at {_row(pos)} ({int(missing.sum())} empty in all); "
                "labels must be 0 (normal) or 1 (anomaly) in every row: fill them in, or drop the column."
            )
        if pd.api.types.is_bool_dtype(series):
            return series.astype("int8")
        if pd.api.types.is_numeric_dtype(series):
            values = series.to_numpy(dtype=np.float64)
            bad = ~np.isin(values, (0.0, 1.0))
            ones = values == 1.0
        else:
            text = series.astype(str).str.strip().str.lower()
            bad = ~text.isin(_TRUE | _FALSE).to_numpy()
            ones = text.isin(_TRUE).to_numpy()
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise self.fail(
                f"label column {column!r} must hold 0/1 (or true/false), found {_show(series.iloc[pos])} "
                f"at {_row(pos)} ({int(bad.sum())} such values). Fix the labels, or pass --label-column to "
                "choose another column."
            )
        return pd.Series(ones.astype("int8"), index=series.index)

    # -- ordering, duplicates, gaps ---------------------------------------------------------

    def _sort_and_dedupe(self, out: pd.DataFrame) -> pd.DataFrame:
        before = out.groupby("stream", sort=False).cumcount().to_numpy()
        out = out.sort_values(["stream", "timestamp"], kind="stable")
        after = out.groupby("stream", sort=False).cumcount().to_numpy()
        moved = int((before[out.index.to_numpy()] != after).sum())
        if moved:
            self.notes.append(f"sorted {moved} rows that were out of time order")

        dup = out.duplicated(["stream", "timestamp"], keep="first").to_numpy()
        if dup.any():
            dups = out[dup]
            counts = dups.groupby("stream", sort=True)["timestamp"].agg(["size", "min"])
            for i, (stream, row) in enumerate(counts.iterrows()):
                if i == _MAX_STREAM_NOTES:
                    self.notes.append(f"dropped duplicate timestamps in {len(counts) - i} more streams")
                    break
                first = pd.Timestamp(row["min"]).strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(".000000Z", "Z")
                self.notes.append(
                    f"dropped {int(row['size'])} duplicate timestamps in stream {stream!r} (first: {first}); kept the "
                    "first row of each"
                )
            out = out[~dup]
        return out

    def _check_lengths(self, out: pd.DataFrame, min_rows: int) -> None:
        sizes = out.groupby("stream", sort=True).size()
        short = sizes[sizes < min_rows]
        if len(short):
            stream, size = str(short.index[0]), int(short.iloc[0])
            more = f" ({len(short)} streams are that short)" if len(short) > 1 else ""
            raise self.fail(
                f"too few rows: stream {stream!r} has {size} rows after removing duplicates, "
                f"at least {min_rows} are needed (min_rows, e.g. the feature window){more}. "
                "Supply more data, drop the stream, or lower min_rows / the window."
            )

    def _impute(self, out: pd.DataFrame, sensors: Sequence[str]) -> None:
        for name in sensors:
            n_missing = int(out[name].isna().sum())
            if not n_missing:
                continue
            grouped = out.groupby("stream", sort=False)[name]
            filled = grouped.ffill()
            filled = filled.groupby(out["stream"], sort=False).bfill()
            still = filled.isna().to_numpy()
            if still.any():
                stream = out["stream"].to_numpy()[still][0]
                raise self.fail(
                    f"sensor column {name!r} has no readings at all in stream {stream!r}, so its gaps cannot be "
                    "filled; supply readings for it, drop the stream, or leave the sensor out with sensors=[...]."
                )
            out[name] = filled
            self.notes.append(f"imputed {n_missing} missing readings in {name!r} (forward, then backward fill)")


def _as_numbers(series: pd.Series) -> pd.Series | None:
    """The column as numbers if every value is one (epoch timestamps), else None."""
    if pd.api.types.is_bool_dtype(series):
        return None
    if pd.api.types.is_numeric_dtype(series):
        return series
    numbers = pd.to_numeric(series, errors="coerce")
    return numbers if bool(numbers.notna().all()) else None


def _mostly_numeric(series: pd.Series) -> bool:
    """A text column that is mostly numbers is a sensor with a few bad cells, not a text column."""
    present = series.dropna()
    if present.empty:
        return True
    return bool(pd.to_numeric(present, errors="coerce").notna().mean() >= 0.5)


def _decimal_comma(value: object) -> bool:
    text = str(value).strip()
    head, _, tail = text.partition(",")
    return bool(tail) and head.lstrip("-").isdigit() and tail.isdigit()


def fingerprint(frame: pd.DataFrame, sensors: Sequence[str]) -> str:
    """``sha256:<hex>`` over the normalised content: columns, timestamps, streams, sensor values, labels."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"columns": [str(c) for c in frame.columns], "sensors": list(sensors)}).encode())
    digest.update(pd.DatetimeIndex(frame["timestamp"]).asi8.astype("<i8").tobytes())
    digest.update("\x00".join(frame["stream"].astype(str)).encode("utf-8"))
    for name in sensors:
        digest.update(np.ascontiguousarray(frame[name].to_numpy(dtype=np.float64)).astype("<f8").tobytes())
    if "label" in frame.columns:
        digest.update(frame["label"].to_numpy(dtype=np.int8).tobytes())
    return f"sha256:{digest.hexdigest()}"
