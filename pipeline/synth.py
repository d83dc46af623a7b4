"""Synthetic multi-device IoT telemetry with labelled anomalies, deterministic for a seed.

Every device runs a motor whose latent *load* (duty cycles, a daily shift pattern, slow random
variation) drives the sensors:

* ``motor_current`` (A) follows load;
* ``vibration_rms`` (mm/s) grows with load and with slow bearing wear (drift);
* ``temperature`` (°C) is ambient (daily cycle) plus heating that lags current (first-order lag);
* ``pressure`` (bar) is tied to load and drifts slowly down (a clogging filter).

Noise is added, a small fraction of readings is missing (NaN), and anomalies are injected
with ``label = 1`` and ``anomaly_kind`` naming them (:data:`ANOMALY_KINDS`; normal rows are
:data:`NORMAL_KIND`). A few percent of rows are anomalous and every kind appears on every device.
All arrays are built with numpy per device; only the handful of anomaly events are a Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.signal import lfilter, lfilter_zi

from edge_runtime.errors import InputError
from pipeline.tabular_io import write_table

SENSORS: tuple[str, ...] = ("temperature", "vibration_rms", "motor_current", "pressure")
ANOMALY_KINDS: tuple[str, ...] = ("spike", "level_shift", "stuck", "noise_burst", "broken_correlation")
NORMAL_KIND = "none"
COLUMNS: tuple[str, ...] = ("timestamp", "device", *SENSORS, "label", "anomaly_kind")
START = pd.Timestamp("2026-01-05T00:00:00Z")  # fixed, so output never depends on the clock

Array = npt.NDArray[np.float64]

# Event lengths in rows at full scale (a week at one reading a minute); shorter series scale them down.
_LENGTHS: dict[str, tuple[int, int]] = {
    "spike": (1, 3),
    "level_shift": (20, 90),
    "stuck": (30, 120),
    "noise_burst": (10, 60),
    "broken_correlation": (30, 120),
}
# Extra events beyond one of each kind favour short ones, so the anomalous share stays a few percent.
_EXTRA_WEIGHTS = np.array([0.4, 0.15, 0.15, 0.15, 0.15])
_FULL_SCALE_ROWS = 10_080
_MISSING_RATE = 0.003
_NON_NEGATIVE = frozenset({"vibration_rms", "motor_current", "pressure"})


@dataclass(frozen=True)
class _Device:
    """Per-device constants, drawn once from the device's own random stream."""

    current_idle: float
    current_span: float
    vibration_base: float
    vibration_gain: float
    wear: float
    ambient: float
    heating: float
    pressure_base: float
    pressure_gain: float
    clogging: float
    cycle_minutes: float
    phase: float


def synth_telemetry(*, devices: int = 4, days: float = 7, seed: int = 0, interval_s: int = 60) -> pd.DataFrame:
    """Telemetry for ``devices`` motors over ``days`` at one reading per ``interval_s`` seconds.

    Columns: :data:`COLUMNS`; sorted by device then timestamp. The same arguments give the same frame.
    """
    if not isinstance(devices, int) or devices < 1:
        raise InputError(f"devices must be an integer >= 1, got {devices!r}.")
    if not isinstance(interval_s, int) or interval_s < 1:
        raise InputError(f"interval_s must be an integer number of seconds >= 1, got {interval_s!r}.")
    n = int(days * 86_400 // interval_s) if days > 0 else 0
    if n < 2:
        raise InputError(f"days={days!r} at interval_s={interval_s} gives {n} readings per device; need at least 2.")
    width = max(2, len(str(devices)))
    children = np.random.SeedSequence(seed).spawn(devices)
    offsets = pd.to_timedelta(np.arange(n, dtype=np.int64) * interval_s, unit="s")
    timestamps = (START + offsets).as_unit("ns")
    parts = []
    for index, child in enumerate(children):
        values, label, kind = _device_series(np.random.default_rng(child), n, interval_s)
        part = pd.DataFrame({"timestamp": timestamps, "device": f"dev-{index + 1:0{width}d}"})
        for name in SENSORS:
            part[name] = values[name]
        part["label"] = label
        part["anomaly_kind"] = kind
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    frame["label"] = frame["label"].astype("int8")
    return frame


def write_telemetry(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write telemetry as .csv or .parquet (by extension), atomically."""
    return write_table(frame, path)


def anomaly_summary(frame: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """``{kind: (events, rows)}`` for every kind in :data:`ANOMALY_KINDS`, counted from a synthetic frame."""
    kind = frame["anomaly_kind"].astype(str).to_numpy()
    device = frame["device"].astype(str).to_numpy()
    starts = np.r_[True, (kind[1:] != kind[:-1]) | (device[1:] != device[:-1])]
    return {k: (int((starts & (kind == k)).sum()), int((kind == k).sum())) for k in ANOMALY_KINDS}


def _lag(x: Array, tau_s: float, interval_s: int) -> Array:
    """First-order low-pass (time constant ``tau_s``), starting at steady state."""
    a = float(np.exp(-interval_s / tau_s))
    b, den = [1.0 - a], [1.0, -a]
    out, _ = lfilter(b, den, x, zi=lfilter_zi(b, den) * x[0])
    return np.asarray(out, dtype=np.float64)


def _load(rng: np.random.Generator, n: int, interval_s: int, dev: _Device) -> Array:
    """Latent load in [0, 1]: a daily shift pattern times on/off duty cycles, plus slow random variation."""
    t = np.arange(n, dtype=np.float64) * interval_s
    hours = (t % 86_400) / 3_600
    daily = 0.55 - 0.35 * np.cos(2 * np.pi * (hours - 3.0) / 24)  # busiest mid-afternoon, quiet at night
    cycle = 1.0 / (1.0 + np.exp(-4.0 * np.sin(2 * np.pi * t / (dev.cycle_minutes * 60) + dev.phase)))
    wander = _lag(rng.normal(0.0, 1.0, n), 3_600.0, interval_s)
    wander *= 0.08 / max(float(wander.std()), 1e-9)
    return np.clip(daily * (0.35 + 0.65 * cycle) + wander, 0.0, 1.0)


def _clean(load: Array, n: int, interval_s: int, dev: _Device) -> dict[str, Array]:
    """Noise-free sensors for a given load (called twice: real load and a decoupled one)."""
    progress = np.linspace(0.0, 1.0, n)
    hours = (np.arange(n) * interval_s % 86_400) / 3_600
    current = dev.current_idle + dev.current_span * load
    return {
        "motor_current": current,
        "vibration_rms": dev.vibration_base * (1 + dev.wear * progress) + dev.vibration_gain * load**1.5,
        "temperature": dev.ambient
        + 2.5 * np.sin(2 * np.pi * (hours - 9.0) / 24)
        + dev.heating * _lag(current - dev.current_idle, 1_200.0, interval_s),
        "pressure": dev.pressure_base * (1 - dev.clogging * progress) + dev.pressure_gain * load,
    }


def _device_series(
    rng: np.random.Generator, n: int, interval_s: int
) -> tuple[dict[str, Array], npt.NDArray[np.int8], npt.NDArray[np.str_]]:
    dev = _Device(
        current_idle=rng.uniform(1.5, 3.0),
        current_span=rng.uniform(8.0, 14.0),
        vibration_base=rng.uniform(0.8, 1.5),
        vibration_gain=rng.uniform(1.5, 3.0),
        wear=rng.uniform(0.05, 0.2),
        ambient=rng.uniform(18.0, 26.0),
        heating=rng.uniform(1.5, 2.5),
        pressure_base=rng.uniform(3.5, 4.5),
        pressure_gain=rng.uniform(1.0, 2.0),
        clogging=rng.uniform(0.01, 0.05),
        cycle_minutes=rng.uniform(20.0, 60.0),
        phase=rng.uniform(0.0, 2 * np.pi),
    )
    load = _load(rng, n, interval_s, dev)
    clean = _clean(load, n, interval_s, dev)
    decoupled = _clean(1.0 - load, n, interval_s, dev)
    noise_sd = {name: 0.02 * float(np.std(clean[name])) + 0.01 for name in SENSORS}
    values = {name: clean[name] + rng.normal(0.0, noise_sd[name], n) for name in SENSORS}
    spread = {name: float(np.std(values[name])) for name in SENSORS}

    kind = np.full(n, NORMAL_KIND, dtype=object)
    _inject(rng, n, values, decoupled, noise_sd, spread, kind)
    label = (kind != NORMAL_KIND).astype(np.int8)

    for name in SENSORS:
        missing = (rng.random(n) < _MISSING_RATE) & (label == 0)
        if name in _NON_NEGATIVE:  # a glitch can read zero, never a negative current or pressure
            values[name] = np.maximum(values[name], 0.0)
        values[name] = np.round(values[name], 4)
        values[name][missing] = np.nan
    return values, label, kind.astype(str)


def _inject(
    rng: np.random.Generator,
    n: int,
    values: dict[str, Array],
    decoupled: dict[str, Array],
    noise_sd: dict[str, float],
    spread: dict[str, float],
    kind: npt.NDArray[np.object_],
) -> None:
    """Place non-overlapping anomaly events in ``values`` and name them in ``kind``."""
    scale = min(1.0, max(0.1, n / _FULL_SCALE_ROWS))
    budget = rng.uniform(0.02, 0.04) * n
    order = list(rng.permutation(ANOMALY_KINDS))  # one of each kind first, so every kind appears
    used, attempts = 0, 0
    lo = max(1, n // 20)  # leave the start clean: detectors need a warm-up window
    while attempts < 500 and (order or used < budget):
        attempts += 1
        guaranteed = bool(order)
        name = order.pop(0) if guaranteed else str(rng.choice(ANOMALY_KINDS, p=_EXTRA_WEIGHTS))
        short, long = _LENGTHS[name]
        length = max(1, round(int(rng.integers(short, long + 1)) * (1.0 if name == "spike" else scale)))
        length = min(length, max(1, (n - lo) // 8))
        start = int(rng.integers(lo, max(lo + 1, n - length)))
        stop = min(n, start + length)
        if (kind[max(0, start - 5) : stop + 5] != NORMAL_KIND).any():
            if guaranteed:
                order.insert(0, name)  # retry elsewhere: every kind must appear
            continue
        sensor = str(rng.choice(SENSORS if name != "broken_correlation" else SENSORS[1:]))
        seg = slice(start, stop)
        x = values[sensor]
        if name == "spike":
            sign = 1.0 if rng.random() < 0.7 else -1.0
            x[seg] += sign * rng.uniform(3.0, 6.0) * spread[sensor]
        elif name == "level_shift":
            x[seg] += rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 1.5) * spread[sensor]
        elif name == "stuck":
            x[seg] = x[start]
        elif name == "noise_burst":
            x[seg] += rng.normal(0.0, rng.uniform(0.6, 1.0) * spread[sensor], stop - start)
        else:  # broken_correlation: the sensor follows the inverted load, staying in its normal range
            x[seg] = decoupled[sensor][seg] + rng.normal(0.0, noise_sd[sensor], stop - start)
        kind[seg] = name
        used += stop - start
