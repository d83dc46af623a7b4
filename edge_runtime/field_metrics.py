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
from bisect import bisect_left
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


def _padded_edges(reference: FieldReference | None) -> tuple[Array, Array]:
    """Edges as one matrix, a row per sensor then one for the score, padded with +inf; training shares per sensor."""
    rows = [hist.edges for _, hist in reference.sensors] if reference is not None else []
    rows.append(reference.score.edges if reference is not None else ())
    width = max(len(r) for r in rows)
    edges = np.full((len(rows), width), np.inf)
    for i, row in enumerate(rows):
        edges[i, : len(row)] = row
    shares = np.zeros((len(rows) - 1, width + 1))
    if reference is not None:
        for i, (_, hist) in enumerate(reference.sensors):
            shares[i, : len(hist.fractions)] = hist.fractions
    return edges, shares


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
        self.features: tuple[str, ...] = tuple(n for n, _ in reference.sensors) if reference is not None else ()
        self.score_edges: tuple[float, ...] = reference.score.edges if reference is not None else ()
        # One comparison against this matrix buckets every sensor and the score of a batch at once.
        self._edges, self._shares = _padded_edges(reference)
        self._buckets = self._edges.shape[1] + 1
        self._offsets = np.arange(self._edges.shape[0], dtype=np.intp) * self._buckets
        self._cells = self._edges.shape[0] * self._buckets
        self._edge_lists = [[e for e in row if e != math.inf] for row in self._edges.tolist()]
        self._offset_list = self._offsets.tolist()
        self._score_at = len(self.features) * self._buckets
        self._score_stop = self._score_at + len(self.score_edges) + 1
        # The ring of sub-windows: bucket counts (numpy), readings and anomalies (ints) per sub-window.
        self._slots = np.zeros((sub_windows, self._cells), dtype=np.int64)
        self._slot_readings = [0] * sub_windows
        self._slot_anomalies = [0] * sub_windows
        self._retired = np.zeros(self._score_stop - self._score_at, dtype=np.int64)  # scores of dropped slots
        self._pending = [0] * self._cells
        self._pending_count = 0
        self._slot = 0
        self._fill = 0
        self.score_sum = 0.0
        self.readings = 0
        self.anomalies = 0
        self.requests = 0
        self.input_errors = 0

    # ----------------------------------------------------------------- updates (the scoring path)

    def observe(self, readings: Array, scores: Array, anomalies: int | None = None) -> None:
        """Count one scored request: ``readings`` (n, n_sensors), their ``scores`` (n,), and how many of them
        reached the threshold when the caller already knows (else counted here)."""
        self.requests += 1
        n = scores.shape[0]
        if self._fill + n < self._sub:  # the usual case: the batch fits in the current sub-window
            if anomalies is None:
                anomalies = int(np.count_nonzero(scores >= self.threshold))
            self._add(readings, scores, n, anomalies)
            self._fill += n
            return
        start = 0
        while start < n:
            take = min(n - start, self._sub - self._fill)
            part = scores[start : start + take]
            self._add(readings[start : start + take], part, take, int(np.count_nonzero(part >= self.threshold)))
            start += take
            self._fill += take
            if self._fill >= self._sub:
                self._rotate()

    def observe_error(self, status: int) -> None:
        """Count a refused score request; only :data:`INPUT_ERROR_STATUSES` count as input errors."""
        if status in INPUT_ERROR_STATUSES:
            self.input_errors += 1

    def _add(self, readings: Array, scores: Array, n: int, anomalies: int) -> None:
        if n == 1:  # one reading a request is the common case: plain Python is cheaper than numpy dispatch
            self._add_one(readings, scores, anomalies)
            return
        column = scores.reshape(-1, 1)
        values = np.concatenate((readings, column), axis=1) if self.features else column
        # Bucket of each value = how many of its row's edges lie strictly below it ("le" buckets).
        cells = ((values[:, :, None] > self._edges).sum(axis=2) + self._offsets).ravel()
        self._slots[self._slot] += np.bincount(cells, minlength=self._cells)
        self._slot_readings[self._slot] += n
        self._slot_anomalies[self._slot] += anomalies
        self.score_sum += float(scores.sum())
        self.readings += n
        self.anomalies += anomalies

    def _add_one(self, readings: Array, scores: Array, anomalies: int) -> None:
        score = float(scores[0])
        values = [*readings[0].tolist(), score] if self.features else [score]
        pending = self._pending
        # The same buckets as the batch path: bisect_left counts the edges strictly below the value.
        for offset, edges, value in zip(self._offset_list, self._edge_lists, values, strict=True):
            pending[offset + bisect_left(edges, value)] += 1
        self._pending_count += 1
        self._slot_readings[self._slot] += 1
        self._slot_anomalies[self._slot] += anomalies
        self.score_sum += score
        self.readings += 1
        self.anomalies += anomalies

    def _flush(self) -> None:
        """Move the single-reading counts (kept in a Python list: cheaper per reading) into the current slot."""
        if self._pending_count:
            self._slots[self._slot] += np.asarray(self._pending, dtype=np.int64)
            self._pending = [0] * self._cells
            self._pending_count = 0

    def _rotate(self) -> None:
        self._flush()
        self._slot = (self._slot + 1) % self._slots.shape[0]
        self._retired += self._slots[self._slot, self._score_at : self._score_stop]
        self._slots[self._slot] = 0
        self._slot_readings[self._slot] = 0
        self._slot_anomalies[self._slot] = 0
        self._fill = 0

    # ----------------------------------------------------------------- reads

    @property
    def window_readings(self) -> int:
        return sum(self._slot_readings)

    @property
    def anomaly_ratio(self) -> float | None:
        n = self.window_readings
        return None if n == 0 else sum(self._slot_anomalies) / n

    @property
    def input_error_ratio(self) -> float:
        seen = self.requests + self.input_errors
        return 0.0 if seen == 0 else self.input_errors / seen

    @property
    def window_score_counts(self) -> npt.NDArray[np.int64]:
        self._flush()
        counts: npt.NDArray[np.int64] = self._slots[:, self._score_at : self._score_stop].sum(axis=0)
        return counts

    @property
    def score_counts(self) -> npt.NDArray[np.int64]:
        """Score bucket counts since start (``otaml_score``)."""
        return self._retired + self.window_score_counts

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
        self._flush()
        counts = self._slots[:, : self._score_at].sum(axis=0).reshape(len(self.features), self._buckets)
        return dict(zip(self.features, population_stability(counts, self._shares).tolist(), strict=True))

    def score_quantiles(self, window: bool = True) -> dict[str, float | None]:
        counts = self.window_score_counts if window else self.score_counts
        return {f"p{round(q * 100)}": histogram_quantile(q, self.score_edges, counts) for q in QUANTILES}

    def state_bytes(self) -> int:
        """Bytes of the numpy state: fixed at construction, whatever the number of readings."""
        arrays = (self._slots, self._retired, self._edges, self._shares)
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
