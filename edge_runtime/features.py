"""Windowed features, shared by training (whole series) and serving (one reading at a time).

The feature vector of reading ``t`` of a stream is, for every sensor in order, the raw value,
then the configured statistics over the last ``window`` readings (``t`` included), then ``lags``
lagged raw values ``x[t-1] .. x[t-lags]`` (``lags < window``: the window holds them):

==========  =====================================================
``mean``    rolling mean
``std``     rolling population standard deviation
``min``     rolling minimum
``max``     rolling maximum
``delta``   ``x[t] - x[t-1]`` (0 for the first reading)
``dev``     ``x[t] - mean`` (distance from the rolling mean)
``mad``     rolling median absolute deviation from the rolling median: a spread that one or two
            extreme readings barely move, so it does not echo a spike for the rest of the window
            as ``std`` does
``flat``    how long the reading has been held: the number of readings before ``x[t]`` in the
            window that equal it without a break, minus one (a single repeat, e.g. a gap filled
            forward, counts 0); a stuck sensor counts up to ``window - 2``. Scale-free: a count.
==========  =====================================================

``lag<k>``  ``x[t-k]``, the reading ``k`` steps back (the feature group that sliding-window
            detectors use: a row is the recent shape of the signal)

Per-stream normalisation (``normalize="window"``): every level-carrying feature (the raw value,
``mean``, ``min``, ``max`` and the lags) is taken relative to the stream's own rolling mean, so
devices with different baselines (a fleet of pumps does not share one level) share one model.
``std``, ``delta``, ``dev``, ``mad`` and ``flat`` carry no level and are unchanged. It needs no state beyond the window.

Before a stream has ``window`` readings its window is padded with its first reading, so the
first feature vector of a stream is well defined and batch and streaming agree exactly.

Only numpy is imported here: this module runs on the device.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from edge_runtime.errors import InputError

Array = npt.NDArray[np.float64]

STATS: tuple[str, ...] = ("mean", "std", "min", "max", "delta", "dev", "mad", "flat")
DEFAULT_STATS: tuple[str, ...] = ("mean", "std", "min", "max", "delta", "dev")
NORMALIZATIONS: tuple[str, ...] = ("none", "window")
# Features that carry the stream's level: per-stream normalisation subtracts the rolling mean from them.
_LEVEL_STATS = frozenset({"mean", "min", "max"})
_BATCH_CHUNK = 8192


class FeatureSpecError(InputError):
    """A feature specification is invalid."""


@dataclass(frozen=True)
class FeatureSpec:
    """Which raw sensors, in which order, and which rolling statistics over which window."""

    sensors: tuple[str, ...]
    window: int = 16
    stats: tuple[str, ...] = field(default=DEFAULT_STATS)
    lags: int = 0
    normalize: str = "none"

    def __post_init__(self) -> None:
        if not self.sensors:
            raise FeatureSpecError("FeatureSpec needs at least one sensor name.")
        if len(set(self.sensors)) != len(self.sensors):
            raise FeatureSpecError(f"FeatureSpec sensors must be unique, got {list(self.sensors)}.")
        if not isinstance(self.window, int) or isinstance(self.window, bool) or self.window < 1:
            raise FeatureSpecError(f"FeatureSpec window must be an integer >= 1, got {self.window!r}.")
        unknown = [s for s in self.stats if s not in STATS]
        if unknown:
            raise FeatureSpecError(f"Unknown statistics {unknown}; choose from {list(STATS)}.")
        if not isinstance(self.lags, int) or isinstance(self.lags, bool) or not 0 <= self.lags < self.window:
            raise FeatureSpecError(
                f"FeatureSpec lags must be an integer in [0, window - 1] = [0, {self.window - 1}], got "
                f"{self.lags!r}; the window holds the lagged readings, so raise window to at least lags + 1."
            )
        if self.normalize not in NORMALIZATIONS:
            raise FeatureSpecError(
                f"FeatureSpec normalize {self.normalize!r} is unknown; choose from {list(NORMALIZATIONS)}."
            )
        if self.normalize == "window" and self.window < 2:
            raise FeatureSpecError(
                "FeatureSpec normalize 'window' needs window >= 2: a reading minus the mean of itself is always 0."
            )

    @property
    def n_sensors(self) -> int:
        return len(self.sensors)

    @property
    def per_sensor(self) -> int:
        """Features per sensor: the raw value, the statistics, the lags."""
        return 1 + len(self.stats) + self.lags

    @property
    def n_features(self) -> int:
        return len(self.sensors) * self.per_sensor

    def feature_names(self) -> list[str]:
        names = []
        for sensor in self.sensors:
            names.append(sensor)
            names.extend(f"{sensor}__{stat}" for stat in self.stats)
            names.extend(f"{sensor}__lag{k}" for k in range(1, self.lags + 1))
        return names

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {"sensors": list(self.sensors), "window": self.window, "stats": list(self.stats)}
        # Written only when used, so a spec without them reads exactly as before (older runtimes included).
        if self.lags:
            data["lags"] = self.lags
        if self.normalize != "none":
            data["normalize"] = self.normalize
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> FeatureSpec:
        sensors = data.get("sensors")
        stats = data.get("stats", list(DEFAULT_STATS))
        window = data.get("window", 16)
        if not isinstance(sensors, list) or not all(isinstance(s, str) for s in sensors):
            raise FeatureSpecError(f"feature spec 'sensors' must be a list of names, got {sensors!r}.")
        if not isinstance(stats, list) or not all(isinstance(s, str) for s in stats):
            raise FeatureSpecError(f"feature spec 'stats' must be a list of names, got {stats!r}.")
        if not isinstance(window, int) or isinstance(window, bool):
            raise FeatureSpecError(f"feature spec 'window' must be an integer, got {window!r}.")
        lags = data.get("lags", 0)
        if not isinstance(lags, int) or isinstance(lags, bool):
            raise FeatureSpecError(f"feature spec 'lags' must be an integer, got {lags!r}.")
        normalize = data.get("normalize", "none")
        if not isinstance(normalize, str):
            raise FeatureSpecError(f"feature spec 'normalize' must be a string, got {normalize!r}.")
        return cls(sensors=tuple(sensors), window=window, stats=tuple(stats), lags=lags, normalize=normalize)


def _stats_of_windows(values: Array, windows: Array, previous: Array, spec: FeatureSpec) -> Array:
    """Features for rows ``values`` (n, s) given their windows (n, s, w) and previous values (n, s)."""
    n, s = values.shape
    stats = spec.stats
    out = np.empty((n, s, spec.per_sensor), dtype=np.float64)
    # The ufuncs' own reductions: what ndarray.mean/min/max compute, bit for bit, without their
    # Python-level argument handling (a third of the single-reading time on a device).
    width = windows.shape[-1]
    mean = np.add.reduce(windows, axis=-1) / width
    centred = spec.normalize == "window"
    out[:, :, 0] = values - mean if centred else values
    for k, stat in enumerate(stats, start=1):
        if stat == "mean":
            out[:, :, k] = mean
        elif stat == "std":
            out[:, :, k] = np.sqrt(np.add.reduce((windows - mean[..., None]) ** 2, axis=-1) / width)
        elif stat == "min":
            out[:, :, k] = np.minimum.reduce(windows, axis=-1)
        elif stat == "max":
            out[:, :, k] = np.maximum.reduce(windows, axis=-1)
        elif stat == "delta":
            out[:, :, k] = values - previous
        elif stat == "dev":
            out[:, :, k] = values - mean
        elif stat == "mad":
            median = _median(windows)
            out[:, :, k] = _median(np.abs(windows - median[..., None]))
        elif stat == "flat":
            # Newest first: same[..., j] is x[t-j] == x[t-j-1]; the run is the unbroken prefix of Trues.
            same = windows[..., :0:-1] == windows[..., -2::-1]
            out[:, :, k] = np.maximum(np.cumprod(same, axis=-1).sum(axis=-1) - 1, 0)
        if centred and stat in _LEVEL_STATS:
            out[:, :, k] -= mean
    if spec.lags:
        # windows[..., -1] is x[t]; lag k is windows[..., -1 - k], newest first.
        first = 1 + len(stats)
        lagged = windows[..., -2 : -2 - spec.lags : -1]
        out[:, :, first:] = lagged - mean[..., None] if centred else lagged
    return out.reshape(n, s * spec.per_sensor)


def _median(windows: Array) -> Array:
    """The median over the last axis. Not ``np.median``: it imports ``numpy.ma``, which the runtime image leaves out."""
    ordered = np.sort(windows, axis=-1)
    width = ordered.shape[-1]
    return (ordered[..., (width - 1) // 2] + ordered[..., width // 2]) / 2


class _RowPlan:
    """The output of one reading's features, made once per spec, with a view per feature group.

    A single reading (the common request on a device) then has its statistics written in place by the ufuncs
    (``out=``): no temporary and no copy per group, a third fewer numpy calls than :func:`_stats_of_windows`.
    Every value comes from the same operations on the same operands as there (the sums with the same
    reductions in the same order), so both give the same bits; ``tests/edge_runtime/test_features.py`` checks it.
    """

    __slots__ = ("lags", "out", "raw", "rows", "stats", "thread")

    def __init__(self, spec: FeatureSpec) -> None:
        self.thread = threading.get_ident()  # the scratch is this thread's; others take the allocating path
        out = np.empty((1, spec.n_sensors, spec.per_sensor), dtype=np.float64)
        self.out = out
        self.rows = out.reshape(1, spec.n_features)  # a view of ``out``: what push returns (copied)
        self.raw = out[:, :, 0]
        self.stats = [(stat, out[:, :, k]) for k, stat in enumerate(spec.stats, start=1)]
        self.lags = out[:, :, 1 + len(spec.stats) :] if spec.lags else None


def _stats_of_row(values: Array, window: Array, previous: Array, spec: FeatureSpec, plan: _RowPlan) -> Array:
    """:func:`_stats_of_windows` of one reading (``values`` (1, s), its ``window`` (1, s, w)), bit for bit."""
    width = window.shape[-1]
    mean = np.add.reduce(window, axis=-1) / width
    centred = spec.normalize == "window"
    listed: list[list[float]] | None = None  # the window as Python floats, for the order statistics
    if centred:
        np.subtract(values, mean, out=plan.raw)
    else:
        np.copyto(plan.raw, values)
    for stat, out in plan.stats:
        if stat == "mean":
            if centred:  # the batch path's ``mean`` then ``-= mean``
                np.subtract(mean, mean, out=out)
            else:
                np.copyto(out, mean)
        elif stat == "std":
            np.sqrt(np.add.reduce((window - mean[..., None]) ** 2, axis=-1) / width, out=out)
        elif stat == "min" or stat == "max":
            (np.minimum if stat == "min" else np.maximum).reduce(window, axis=-1, out=out)
            if centred:
                np.subtract(out, mean, out=out)
        elif stat == "delta":
            np.subtract(values, previous, out=out)
        elif stat == "dev":
            np.subtract(values, mean, out=out)
        elif stat == "mad" or stat == "flat":
            if listed is None:
                listed = window[0].tolist()
            out[0] = [_mad_of(xs) for xs in listed] if stat == "mad" else [_held(xs) for xs in listed]
    if plan.lags is not None:
        lagged = window[..., -2 : -2 - spec.lags : -1]
        if centred:
            np.subtract(lagged, mean[..., None], out=plan.lags)
        else:
            np.copyto(plan.lags, lagged)
    return plan.rows.copy()


def _mad_of(xs: list[float]) -> float:
    """``mad`` of one sensor's window, as :func:`_median` computes it, on Python floats (the same bits).

    Sorting moves values without changing them and ``(a + b) / 2``, ``x - m`` and ``abs`` are the same IEEE
    double operations in Python as in numpy, so this equals the array path bit for bit. For one reading it
    costs about half as much (``mad`` and ``flat`` of 4 sensors x 16 readings: 27 -> 15 µs hot on x86): the
    dozen numpy calls it replaces are mostly argument handling on 64 numbers.
    """
    ordered = sorted(xs)
    lo, hi = (len(xs) - 1) // 2, len(xs) // 2
    median = (ordered[lo] + ordered[hi]) / 2
    spread = sorted([abs(x - median) for x in xs])
    return (spread[lo] + spread[hi]) / 2


def _held(xs: list[float]) -> int:
    """``flat`` of one sensor's window (oldest first): the unbroken run of repeats ending at the newest, minus one."""
    run = 0
    for j in range(len(xs) - 1, 0, -1):
        if xs[j] != xs[j - 1]:
            break
        run += 1
    return max(run - 1, 0)


def _features(spec: FeatureSpec, x: Array, history: Array, last: Array) -> Array:
    """Features of readings ``x`` that follow ``history`` (the ``window - 1`` readings before, oldest first)."""
    n = x.shape[0]
    padded = np.concatenate([history, x], axis=0)
    previous = np.concatenate([last[None, :], x[:-1]], axis=0)
    # (n, s, w): row t holds the window of readings t-w+1 .. t.
    windows = np.lib.stride_tricks.sliding_window_view(padded, spec.window, axis=0)
    out = np.empty((n, spec.n_features), dtype=np.float64)
    for start in range(0, n, _BATCH_CHUNK):
        stop = min(start + _BATCH_CHUNK, n)
        out[start:stop] = _stats_of_windows(
            x[start:stop], np.ascontiguousarray(windows[start:stop]), previous[start:stop], spec
        )
    return out


def _as_readings(spec: FeatureSpec, readings: npt.ArrayLike) -> Array:
    x = np.asarray(readings, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != spec.n_sensors:
        raise ValueError(
            f"readings must have shape (n, {spec.n_sensors}) for sensors {list(spec.sensors)}, got {x.shape}."
        )
    return x


def batch_features(spec: FeatureSpec, readings: npt.ArrayLike) -> Array:
    """Features of every reading of one stream, oldest first: (n, n_sensors) -> (n, n_features)."""
    x = _as_readings(spec, readings)
    if x.shape[0] == 0:
        return np.empty((0, spec.n_features), dtype=np.float64)
    return _features(spec, x, np.repeat(x[:1], spec.window - 1, axis=0), x[0])


class StreamWindow:
    """The bounded history of one stream: its last ``window`` readings, oldest first.

    ``push`` computes exactly what :func:`batch_features` computes for the same readings. A single
    reading (the common case on a device) takes a fast path that reuses one preallocated window.
    """

    __slots__ = ("_count", "_last", "_plan", "_window", "spec")
    _plans: ClassVar[dict[FeatureSpec, _RowPlan]] = {}  # one per spec, shared by its streams, for one thread

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        plan = StreamWindow._plans.get(spec)
        if plan is None:
            plan = StreamWindow._plans[spec] = _RowPlan(spec)
        self._plan = plan
        # (1, n_sensors, window): the same layout as one row of the batch path's windows.
        self._window = np.empty((1, spec.n_sensors, spec.window), dtype=np.float64)
        self._last = np.empty((1, spec.n_sensors), dtype=np.float64)
        self._count = 0

    def push(self, readings: npt.ArrayLike) -> Array:
        """Append readings (n, n_sensors) and return their features (n, n_features)."""
        x = _as_readings(self.spec, readings)
        n = x.shape[0]
        if n == 0:
            return np.empty((0, self.spec.n_features), dtype=np.float64)
        if self._count == 0:
            self._window[0] = x[0][:, None]
            self._last[0] = x[0]
        if n == 1:
            window = self._window
            window[0, :, :-1] = window[0, :, 1:]
            window[0, :, -1] = x[0]
            plan = self._plan
            if plan.thread == threading.get_ident():
                out = _stats_of_row(x, window, self._last, self.spec, plan)
            else:
                out = _stats_of_windows(x, window, self._last, self.spec)
        else:
            history = self._window[0, :, 1:].T
            out = _features(self.spec, x, history, self._last[0])
            keep = min(n, self.spec.window)
            self._window[0, :, : self.spec.window - keep] = self._window[0, :, keep:]
            self._window[0, :, self.spec.window - keep :] = x[n - keep :].T
        self._last[0] = x[-1]
        self._count += n
        return out

    def copy(self) -> StreamWindow:
        """An independent copy (two small arrays): push onto it, keep it only if scoring succeeds."""
        other = StreamWindow.__new__(StreamWindow)
        other.spec = self.spec
        other._plan = self._plan
        other._window = self._window.copy()
        other._last = self._last.copy()
        other._count = self._count
        return other

    @property
    def count(self) -> int:
        """How many readings this stream has seen."""
        return self._count

    def recent(self) -> Array:
        """The stream's last readings as rows (at most ``window``; fewer for a young stream), oldest first."""
        kept = min(self._count, self.spec.window)
        return self._window[0, :, self.spec.window - kept :].T.copy()

    def state(self) -> bytes:
        """The whole history as bytes: equal states score the next readings identically."""
        return self._count.to_bytes(8, "little") + self._window.tobytes() + self._last.tobytes()
