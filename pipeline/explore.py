"""Views of telemetry for a data scientist: a per-stream summary table and sensor plots with labelled anomalies.

Figures are built on matplotlib's object API (no pyplot global state), as in :mod:`pipeline.plots`; a notebook
shows them after ``%matplotlib inline`` and ``fig.savefig(path)`` writes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from edge_runtime.errors import InputError
from pipeline.telemetry import Telemetry

SUMMARY_COLUMNS: tuple[str, ...] = (
    "rows",
    "start",
    "end",
    "interval_s",
    "anomalous_rows",
    "anomaly_rate",
    "anomaly_events",
)


def summary_table(telemetry: Telemetry) -> pd.DataFrame:
    """One row per stream (index ``stream``): :data:`SUMMARY_COLUMNS`.

    ``interval_s`` is the median time between readings; the anomaly columns are NaN without labels.
    An *event* is a run of consecutive anomalous rows.
    """
    rows = []
    for name, part in telemetry.streams():
        ts = part["timestamp"]
        steps = ts.diff().dt.total_seconds().dropna()
        record: dict[str, object] = {
            "stream": name,
            "rows": len(part),
            "start": ts.iloc[0],
            "end": ts.iloc[-1],
            "interval_s": float(steps.median()) if len(steps) else float("nan"),
            "anomalous_rows": float("nan"),
            "anomaly_rate": float("nan"),
            "anomaly_events": float("nan"),
        }
        if telemetry.has_labels:
            labels = part["label"].to_numpy().astype(bool)
            record["anomalous_rows"] = int(labels.sum())
            record["anomaly_rate"] = float(labels.mean())
            record["anomaly_events"] = len(_runs(labels))
        rows.append(record)
    return pd.DataFrame(rows, columns=["stream", *SUMMARY_COLUMNS]).set_index("stream")


def _runs(mask: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """``(start, stop)`` positions of each run of True values (stop exclusive)."""
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def plot_sensors(
    telemetry: Telemetry,
    stream: str | None = None,
    *,
    sensors: Sequence[str] | None = None,
    title: str = "",
) -> Figure:
    """Each sensor of one stream (default: the first) over time, one panel per sensor, shared time axis.

    Labelled anomalies are shaded red across every panel and their readings drawn as red dots, so a data
    scientist sees what each anomaly looks like on each sensor.
    """
    names = telemetry.stream_names
    if not names:
        raise InputError(f"{telemetry.source}: no rows to plot; load telemetry with at least one stream.")
    wanted = stream if stream is not None else names[0]
    if wanted not in names:
        shown = ", ".join(repr(n) for n in names[:10]) + (" ..." if len(names) > 10 else "")
        raise InputError(f"stream {wanted!r} is not in {telemetry.source}; choose one of {shown}.")
    chosen = tuple(sensors) if sensors is not None else telemetry.sensors
    unknown = [s for s in chosen if s not in telemetry.sensors]
    if unknown or not chosen:
        raise InputError(f"sensor(s) {unknown or list(chosen)} not plottable; choose from {list(telemetry.sensors)}.")

    part = dict(telemetry.streams())[wanted]
    t = part["timestamp"].dt.tz_localize(None).to_numpy()  # matplotlib's date axis wants naive UTC
    labels = part["label"].to_numpy().astype(bool) if telemetry.has_labels else None
    spans = _runs(labels) if labels is not None else []

    fig = Figure(figsize=(11, 1.9 * len(chosen) + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(chosen), 1, sharex=True, squeeze=False)[:, 0]
    for ax, sensor in zip(axes, chosen, strict=True):
        values = part[sensor].to_numpy()
        ax.plot(t, values, lw=0.6, color="tab:blue")
        for start, stop in spans:
            ax.axvspan(t[start], t[stop - 1], color="tab:red", alpha=0.15, lw=0)
        if labels is not None and labels.any():
            ax.scatter(t[labels], values[labels], s=5, color="tab:red", zorder=3)
        ax.set_ylabel(sensor, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("time (UTC)")
    suffix = f"{len(spans)} labelled anomaly events (red)" if labels is not None else "no labels"
    axes[0].set_title(title or f"stream {wanted}: {len(part)} readings, {suffix}", fontsize=10)
    fig.tight_layout()
    return fig
