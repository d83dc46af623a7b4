"""Devices simulated in-process: real readings scored through the device's own code, summaries as devices send them.

Each :class:`SimulatedDevice` loads a bundle with :mod:`edge_runtime.scoring` (the service's scorer and session
options), scores its streams' readings in time order, a batch per stream in turn (like a device's local
clients), feeds :class:`edge_runtime.field_metrics.FieldMetrics` exactly as the service does, and takes a
summary (:func:`edge_runtime.field_metrics.summary`) every ``every`` readings — what the agent would publish.
Used by the field-feedback notebook and the tests; nothing here is specific to a fake.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.bundle import load_bundle
from edge_runtime.field_metrics import DEFAULT_WINDOW, FieldMetrics, summary
from edge_runtime.scoring import Scorer


@dataclass(frozen=True)
class SimulatedDevice:
    """One device: its id and groups, the bundle it serves, its streams' raw readings (n, sensors) in time order."""

    device_id: str
    groups: tuple[str, ...]
    bundle: str | os.PathLike[str]
    streams: Mapping[str, npt.NDArray[np.float64]]
    shift: Mapping[str, float] = field(default_factory=dict)  # sensor name -> value added to every reading


def run_device(
    device: SimulatedDevice, *, every: int, batch: int = 16, window: int = DEFAULT_WINDOW
) -> Iterator[tuple[str, tuple[str, ...], dict[str, Any]]]:
    """Score ``device``'s readings; yield ``(device_id, groups, summary)`` every ``every`` readings and at the end."""
    bundle = load_bundle(Path(device.bundle))
    card = bundle.card
    sensors = list(card.features.sensors)
    unknown = set(device.shift) - set(sensors)
    if unknown:
        raise ValueError(f"shift names {sorted(unknown)}, not sensors of {card.name} v{card.version}: {sensors}.")
    offset = np.array([device.shift.get(name, 0.0) for name in sensors])
    scorer = Scorer.load(bundle)
    metrics = FieldMetrics(card.name, card.version, card.threshold, card.field_reference, window=window)
    length = max((len(x) for x in device.streams.values()), default=0)
    next_at = every
    for start in range(0, length, batch):
        for stream, readings in device.streams.items():
            rows = readings[start : start + batch]
            if len(rows):
                rows = rows + offset
                metrics.observe(rows, scorer.score(stream, rows))
        if metrics.readings >= next_at:
            next_at += every
            yield device.device_id, device.groups, summary(metrics)
    yield device.device_id, device.groups, summary(metrics)


def simulate_fleet(
    devices: Sequence[SimulatedDevice], *, every: int = 2000, batch: int = 16, window: int = DEFAULT_WINDOW
) -> list[tuple[str, tuple[str, ...], dict[str, Any]]]:
    """Every device's summaries over time (device by device, each in time order)."""
    return [entry for device in devices for entry in run_device(device, every=every, batch=batch, window=window)]


def drift_timeline(entries: Sequence[tuple[str, Sequence[str], Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per summary and named sensor: device, version, readings so far, feature, PSI (for plots over time)."""
    rows = []
    for device_id, _groups, data in entries:
        for feature, psi in (data.get("psi") or {}).items():
            rows.append(
                {
                    "device": device_id,
                    "version": data.get("version"),
                    "readings": data.get("readings"),
                    "feature": feature,
                    "psi": psi,
                    "anomaly_ratio": data.get("anomaly_ratio"),
                }
            )
    return rows


def stream_readings(telemetry: Any, start: float = 0.0, stop: float = 1.0) -> dict[str, npt.NDArray[np.float64]]:
    """Each stream's raw readings (sensor order) from ``start`` to ``stop`` of its length (fractions, time order).

    ``telemetry`` is a :class:`pipeline.telemetry.Telemetry`. ``0.0 .. 0.6`` is the pipeline's training split.
    """
    if not 0.0 <= start < stop <= 1.0:
        raise ValueError(f"start {start} and stop {stop} must satisfy 0 <= start < stop <= 1.")
    out = {}
    for name, frame in telemetry.streams():
        values = frame[list(telemetry.sensors)].to_numpy(dtype=np.float64)
        out[name] = values[int(start * len(values)) : int(stop * len(values))]
    return out


def sigma_shift(
    streams: Mapping[str, npt.NDArray[np.float64]], sensors: Sequence[str], sensor: str, sigmas: float
) -> dict[str, float]:
    """``{sensor: sigmas x its standard deviation over all streams}``: a shift for :class:`SimulatedDevice`."""
    if sensor not in sensors:
        raise ValueError(f"{sensor!r} is not one of the sensors {list(sensors)}.")
    column = np.concatenate([x[:, list(sensors).index(sensor)] for x in streams.values()])
    return {sensor: float(sigmas * np.std(column))}


def fleet(
    bundle: str | os.PathLike[str],
    streams: Mapping[str, npt.NDArray[np.float64]],
    *,
    devices: int,
    prefix: str,
    group: str,
    shift: Mapping[str, float] | None = None,
) -> list[SimulatedDevice]:
    """``devices`` gateways serving ``bundle``, each scoring all of ``streams``, ids ``<prefix>-<n>``, one group."""
    return [SimulatedDevice(f"{prefix}-{i + 1}", (group,), bundle, streams, dict(shift or {})) for i in range(devices)]
