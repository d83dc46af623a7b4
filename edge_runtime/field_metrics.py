"""Field metrics: what the served model sees and says, streaming, per model version, in bounded memory.

Nothing per reading is stored. Every scored batch adds bucket counts to the current *sub-window*; the
sliding window is the last ``sub_windows`` sub-windows (between ``(k-1)/k`` and all of ``window``
readings once warm), kept as running totals, so reading a metric never sums history and the state is a
fixed ``(sub_windows + 2) x buckets`` integer table whatever the readings count.

- **Score histogram** (cumulative since start, Prometheus ``otaml_score``) over the buckets of the bundle's
  ``field_reference.score`` edges (training-score quantiles, the threshold among them).
- **Anomaly ratio** over the window: readings at or above the threshold / readings.
- **Drift**: population stability index per raw sensor, window against the bundle's training histogram,
  ``PSI = sum((q - p) * ln(q / p))`` with both shares floored at :data:`PSI_EPSILON`; at or above
  :data:`PSI_ALERT` a sensor counts as drifting. Without a reference in the bundle drift is not measured,
  and the summary says so.
- **Input-error ratio** since start: requests refused as bad input (:data:`INPUT_ERROR_STATUSES`) over those
  plus the requests that were scored.

:func:`summary` turns the state into the compact (< 1 kB) JSON document the fleet agent publishes and
``GET /v1/field`` answers; :func:`to_json` encodes it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.bundle import FieldReference

PSI_ALERT = 0.2  # the conventional "significant shift" level of the population stability index
PSI_EPSILON = 1e-4  # floor of a bucket's share, so empty buckets give a finite PSI
DEFAULT_WINDOW = 4096  # readings; long enough to span a daily cycle at one reading a minute on a few streams
DEFAULT_SUB_WINDOWS = 8
TOP_FEATURES = 5  # drifting features a summary names (the summary stays < 1 kB with many sensors)
INPUT_ERROR_STATUSES = frozenset({400, 413, 415, 422})  # the client sent something unusable
QUANTILES = (0.5, 0.9, 0.99)
SUMMARY_SCHEMA = 1

Array = npt.NDArray[np.float64]


def _padded_edges(reference: FieldReference) -> tuple[Array, npt.NDArray[np.float64], int]:
    """Sensor edges as one (S, E) matrix padded with +inf, training shares (S, E + 1), and E + 1."""
    width = max(len(hist.edges) for _, hist in reference.sensors)
    edges = np.full((len(reference.sensors), width), np.inf)
    shares = np.zeros((len(reference.sensors), width + 1))
    for i, (_, hist) in enumerate(reference.sensors):
        edges[i, : len(hist.edges)] = hist.edges
        shares[i, : len(hist.fractions)] = hist.fractions
    return edges, shares, width + 1


def histogram_quantile(q: float, edges: Sequence[float], counts: Sequence[int] | npt.NDArray[np.int64]) -> float | None:
    """The ``q`` quantile of a fixed-bucket histogram, interpolated within its bucket (None when empty).

    The outer buckets are open, so a quantile that falls in them is clamped to the outermost edge.
    """
    total = float(np.sum(counts))
    if total <= 0:
        return None
    if not len(edges):
        return None
    cumulative = np.cumsum(counts)
    target = q * total
    i = int(np.searchsorted(cumulative, target, side="left"))
    if i == 0:
        return float(edges[0])
    if i >= len(edges):
        return float(edges[-1])
    below = float(cumulative[i - 1])
    inside = float(counts[i])
    lower, upper = float(edges[i - 1]), float(edges[i])
    return lower + (upper - lower) * ((target - below) / inside if inside else 1.0)


def population_stability(window: npt.NDArray[np.int64], reference: Array) -> Array:
    """PSI per row: ``window`` counts (rows, buckets) against ``reference`` shares of the same shape."""
    n = window.sum(axis=1, keepdims=True)
    q = np.maximum(window / np.maximum(n, 1), PSI_EPSILON)
    p = np.maximum(reference, PSI_EPSILON)
    psi: Array = ((q - p) * np.log(q / p)).sum(axis=1)
    return psi


class FieldMetrics:
    """Streaming field metrics of one served model version (see the module docstring)."""

    def __init__(
        self,
        model: str,
        version: str,
        threshold: float,
        reference: FieldReference | None,
        *,
        window: int = DEFAULT_WINDOW,
        sub_windows: int = DEFAULT_SUB_WINDOWS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if sub_windows < 2 or window < sub_windows:
            raise ValueError(f"window {window} must be >= sub_windows {sub_windows} >= 2.")
        self.model = model
        self.version = version
        self.threshold = float(threshold)
        self.reference = reference
        self.window_size = window
        self.since = clock()
        self._sub = math.ceil(window / sub_windows)
        if reference is not None:
            self.features: tuple[str, ...] = tuple(name for name, _ in reference.sensors)
            self._edges, self._shares, self._buckets = _padded_edges(reference)
            self.score_edges: tuple[float, ...] = reference.score.edges
        else:
            self.features = ()
            self._edges = np.zeros((0, 0))
            self._shares = np.zeros((0, 1))
            self._buckets = 1
            self.score_edges = ()
        self._score_edges = np.asarray(self.score_edges, dtype=np.float64)
        n_sensor_cells = len(self.features) * self._buckets
        self._sensor_offsets = np.arange(len(self.features), dtype=np.intp) * self._buckets
        self._score_at = n_sensor_cells
        self._score_cells = len(self.score_edges) + 1
        # Layout of one row: sensor buckets (S x B), score buckets, readings, anomalies.
        self._readings_at = n_sensor_cells + self._score_cells
        self._width = self._readings_at + 2
        self._slots = np.zeros((sub_windows, self._width), dtype=np.int64)
        self._totals = np.zeros(self._width, dtype=np.int64)
        self._slot = 0
        self._fill = 0
        self.score_counts = np.zeros(self._score_cells, dtype=np.int64)  # cumulative, for otaml_score
        self.score_sum = 0.0
        self.readings = 0
        self.anomalies = 0
        self.requests = 0
        self.input_errors = 0

    # ----------------------------------------------------------------- updates (the scoring path)

    def observe(self, readings: Array, scores: Array) -> None:
        """Count one scored request: ``readings`` (n, n_sensors) and their ``scores`` (n,)."""
        self.requests += 1
        n = scores.shape[0]
        start = 0
        while start < n:
            take = min(n - start, self._sub - self._fill)
            self._add(readings[start : start + take], scores[start : start + take])
            start += take
            self._fill += take
            if self._fill >= self._sub:
                self._rotate()

    def observe_error(self, status: int) -> None:
        """Count a refused score request; only :data:`INPUT_ERROR_STATUSES` count as input errors."""
        if status in INPUT_ERROR_STATUSES:
            self.input_errors += 1

    def _add(self, readings: Array, scores: Array) -> None:
        score_cells = np.searchsorted(self._score_edges, scores, side="left") + self._score_at
        if self.features:
            # Bucket of each value = how many of its sensor's edges lie strictly below it ("le" buckets).
            buckets = (readings[:, :, None] > self._edges).sum(axis=2) + self._sensor_offsets
            cells = np.concatenate((buckets.ravel(), score_cells))
        else:
            cells = score_cells
        row = np.bincount(cells, minlength=self._width)
        anomalies = int(np.count_nonzero(scores >= self.threshold))
        n = scores.shape[0]
        row[self._readings_at] = n
        row[self._readings_at + 1] = anomalies
        self._slots[self._slot] += row
        self._totals += row
        self.score_counts += row[self._score_at : self._readings_at]
        self.score_sum += float(scores.sum())
        self.readings += n
        self.anomalies += anomalies

    def _rotate(self) -> None:
        self._slot = (self._slot + 1) % self._slots.shape[0]
        self._totals -= self._slots[self._slot]
        self._slots[self._slot] = 0
        self._fill = 0

    # ----------------------------------------------------------------- reads

    @property
    def window_readings(self) -> int:
        return int(self._totals[self._readings_at])

    @property
    def anomaly_ratio(self) -> float | None:
        n = self.window_readings
        return None if n == 0 else int(self._totals[self._readings_at + 1]) / n

    @property
    def input_error_ratio(self) -> float:
        seen = self.requests + self.input_errors
        return 0.0 if seen == 0 else self.input_errors / seen

    @property
    def window_score_counts(self) -> npt.NDArray[np.int64]:
        return self._totals[self._score_at : self._readings_at].copy()

    def drift_state(self) -> str:
        """``ok``, ``no_reference`` (the bundle has none) or ``warming_up`` (less than a sub-window seen)."""
        if self.reference is None:
            return "no_reference"
        if self.window_readings < self._sub:
            return "warming_up"
        return "ok"

    def psi(self) -> dict[str, float]:
        """PSI per raw sensor over the window (spec order); empty unless :meth:`drift_state` is ``ok``."""
        if self.drift_state() != "ok":
            return {}
        counts = self._totals[: self._score_at].reshape(len(self.features), self._buckets)
        return dict(zip(self.features, population_stability(counts, self._shares).tolist(), strict=True))

    def score_quantiles(self, window: bool = True) -> dict[str, float | None]:
        counts = self.window_score_counts if window else self.score_counts
        return {f"p{round(q * 100)}": histogram_quantile(q, self.score_edges, counts) for q in QUANTILES}

    def state_bytes(self) -> int:
        """Bytes of the numpy state: fixed at construction, whatever the number of readings."""
        arrays = (self._slots, self._totals, self.score_counts, self._edges, self._shares, self._score_edges)
        return sum(a.nbytes for a in arrays)


def _round(value: float | None, digits: int = 4) -> float | None:
    """``digits`` significant digits: keeps the summary short without losing what matters."""
    if value is None or value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def summary(field: FieldMetrics, top: int = TOP_FEATURES) -> dict[str, Any]:
    """The compact field summary (< 1 kB): the ``top`` most drifting sensors, numbers to 4 significant digits."""
    psi = field.psi()
    ranked = sorted(psi.items(), key=lambda kv: kv[1], reverse=True)
    state = field.drift_state()
    return {
        "schema": SUMMARY_SCHEMA,
        "model": field.model,
        "version": field.version,
        "since": _iso(field.since),
        "readings": field.readings,
        "window": field.window_readings,
        "anomaly_ratio": _round(field.anomaly_ratio),
        "threshold": _round(field.threshold, 6),
        "score": {
            **{k: _round(v) for k, v in field.score_quantiles().items()},
            "le": [_round(e) for e in field.score_edges],
            "counts": field.window_score_counts.tolist(),
        },
        "drift": state,
        "psi_alert": PSI_ALERT,
        "drifting": sum(1 for v in psi.values() if v >= PSI_ALERT),
        "features": len(field.features),
        "psi": {name: _round(value, 3) for name, value in ranked[:top]},
        "input_error_ratio": _round(field.input_error_ratio),
    }


def to_json(data: dict[str, Any]) -> str:
    """Compact JSON of a summary (what goes over MQTT and out of ``GET /v1/field``)."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False)
