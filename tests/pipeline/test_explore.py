from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.patches import Patch, Polygon, Rectangle

from edge_runtime.errors import InputError
from pipeline.explore import SUMMARY_COLUMNS, plot_sensors, summary_table
from pipeline.telemetry import Telemetry, telemetry_from_frame


def telemetry(labels: bool = True) -> Telemetry:
    """Stream ``a``: 10 readings a minute apart with anomalies at rows 2-3 and 7; stream ``b``: 6, none."""
    rows = []
    for stream, n, anomalous in (("a", 10, {2, 3, 7}), ("b", 6, set())):
        for i in range(n):
            rows.append(
                {
                    "timestamp": pd.Timestamp("2026-01-01T00:00:00Z") + pd.Timedelta(minutes=i),
                    "device": stream,
                    "temperature": 20.0 + i,
                    "pressure": 4.0 - 0.1 * i,
                    **({"label": int(i in anomalous)} if labels else {}),
                }
            )
    return telemetry_from_frame(pd.DataFrame(rows), source="test")


def spans(ax: Axes) -> list[Patch]:
    # axvspan draws a Rectangle (matplotlib >= 3.9) or a Polygon (older).
    return [p for p in ax.patches if isinstance(p, Rectangle | Polygon)]


def test_summary_table_counts_rows_interval_and_anomaly_events_per_stream() -> None:
    table = summary_table(telemetry())
    assert list(table.columns) == list(SUMMARY_COLUMNS)
    assert list(table.index) == ["a", "b"]
    a, b = table.loc["a"], table.loc["b"]
    assert (a["rows"], a["anomalous_rows"], a["anomaly_events"]) == (10, 3, 2)  # rows 2-3 are one event
    assert a["anomaly_rate"] == pytest.approx(0.3)
    assert a["interval_s"] == 60.0
    assert a["end"] - a["start"] == pd.Timedelta(minutes=9)
    assert (b["rows"], b["anomalous_rows"], b["anomaly_events"]) == (6, 0, 0)


def test_summary_table_without_labels_leaves_the_anomaly_columns_empty() -> None:
    row = summary_table(telemetry(labels=False)).loc["a"]
    assert row["rows"] == 10
    assert all(math.isnan(row[c]) for c in ("anomalous_rows", "anomaly_rate", "anomaly_events"))


def test_plot_sensors_draws_one_panel_per_sensor_with_every_anomaly_marked() -> None:
    fig = plot_sensors(telemetry())
    axes = fig.axes
    assert [ax.get_ylabel() for ax in axes] == ["temperature", "pressure"]
    for ax in axes:
        assert len(ax.lines) == 1
        assert np.asarray(ax.lines[0].get_xdata()).size == 10
        assert len(spans(ax)) == 2  # one shaded span per event
        (dots,) = [c for c in ax.collections if isinstance(c, PathCollection)]
        assert np.asarray(dots.get_offsets()).shape[0] == 3  # every labelled reading
    assert "2 labelled anomaly events" in axes[0].get_title()
    temps = np.asarray(axes[0].lines[0].get_ydata(), dtype=float)
    assert temps[0] == 20.0
    assert temps[-1] == 29.0


def test_plot_sensors_picks_a_stream_and_sensors_and_handles_no_labels() -> None:
    fig = plot_sensors(telemetry(labels=False), "b", sensors=["pressure"])
    (ax,) = fig.axes
    assert ax.get_ylabel() == "pressure"
    assert np.asarray(ax.lines[0].get_xdata()).size == 6
    assert not spans(ax)
    assert not ax.collections
    assert "no labels" in ax.get_title()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stream": "zz"}, r"stream 'zz' is not in test; choose one of 'a', 'b'"),
        ({"sensors": ["humidity"]}, r"\['humidity'\] not plottable; choose from \['temperature', 'pressure'\]"),
        ({"sensors": []}, r"not plottable"),
    ],
)
def test_plot_sensors_rejects_unknown_streams_and_sensors_naming_the_choices(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        plot_sensors(telemetry(), **kwargs)
