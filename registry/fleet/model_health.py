"""Is the candidate *model* behaving in the field? The ML half of a rollout wave's health.

A container can be perfectly healthy while its model is useless: it alarms on everything, or its inputs have
drifted away from what it was trained on. Each device publishes a compact field summary of the model it serves
(:mod:`edge_runtime.field_metrics`: anomaly ratio over a sliding window, PSI of each sensor against the training
reference in the bundle). :func:`assess` compares the wave's devices on the candidate with comparable devices on
the stable version (same group selector, outside the wave):

- **anomaly ratio**: the candidate's (reading-weighted over its devices) above ``anomaly_ratio_factor`` x the
  stable version's (floored at ``min_anomaly_ratio``, so a quiet stable version does not make one alarm a halt);
  with no stable devices reporting, above ``max_anomaly_ratio``.
- **drift**: the candidate's devices see a sensor's PSI above ``max_psi`` (median over its devices) while the
  stable version's devices do not: the inputs left the candidate's training distribution, not the stable one's.

Devices with fewer than ``min_readings`` readings in their window do not count yet. Limits live next to the
promotion gates (``registry/gates.toml``, section ``[rollout]``). Pure code: summaries are plain dicts from the
broker (untrusted: anything malformed is skipped).
"""

from __future__ import annotations

import math
import statistics
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edge_runtime.errors import InputError
from edge_runtime.field_metrics import DEFAULT_WINDOW
from edge_runtime.fleet.rollout import RolloutRecord, bucket, matches


class ModelHealthConfigError(InputError):
    """The ``[rollout]`` section of the gates file is malformed."""


@dataclass(frozen=True)
class ModelHealthLimits:
    """When the candidate model misbehaves (see the module docstring)."""

    anomaly_ratio_factor: float = 3.0
    min_anomaly_ratio: float = 0.01
    max_anomaly_ratio: float = 0.5
    max_psi: float = 0.5
    min_readings: int = 200

    @classmethod
    def from_gates(cls, path: str | Path) -> ModelHealthLimits:
        """The ``[rollout]`` table of a gates file (defaults for what it does not set)."""
        file = Path(path)
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ModelHealthConfigError(f"Cannot read gates file {file}: {exc.strerror}.") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ModelHealthConfigError(f"Gates file {file} is not valid TOML: {exc}.") from exc
        table = data.get("rollout", {})
        if not isinstance(table, dict):
            raise ModelHealthConfigError(f"Gates file {file}: [rollout] must be a table.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ModelHealthConfigError(
                f"Gates file {file}: unknown key(s) {unknown} in [rollout]; known: {sorted(known)}."
            )
        values: dict[str, Any] = {}
        for key, value in table.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ModelHealthConfigError(f"Gates 'rollout.{key}' in {file} has value {value!r}. Use a number >= 0.")
            values[key] = int(value) if key == "min_readings" else float(value)
        return cls(**values)


@dataclass(frozen=True)
class FieldView:
    """What one device's summary says about the model version it serves."""

    device_id: str
    version: int
    readings: int
    anomaly_ratio: float
    psi: Mapping[str, float]


def field_view(device_id: str, summary: Any) -> FieldView | None:
    """A usable view of a device's summary, or None (absent or malformed: the broker's data is untrusted)."""
    if not isinstance(summary, Mapping):
        return None
    version, window, ratio = summary.get("version"), summary.get("window"), summary.get("anomaly_ratio")
    psi = summary.get("psi", {})
    try:
        view = FieldView(
            device_id=device_id,
            version=int(version),  # type: ignore[arg-type]
            readings=int(window),  # type: ignore[arg-type]
            anomaly_ratio=float(ratio),  # type: ignore[arg-type]
            psi={str(k): float(v) for k, v in psi.items()} if isinstance(psi, Mapping) else {},
        )
    except (TypeError, ValueError, OverflowError):
        return None
    if not (0.0 <= view.anomaly_ratio <= 1.0 and view.readings >= 0 and view.version >= 0):
        return None
    if not all(math.isfinite(v) and v >= 0 for v in view.psi.values()):
        return None
    return view


@dataclass(frozen=True)
class ModelVerdict:
    """Why the candidate model is misbehaving, and on which devices (``code`` goes into the signed record)."""

    code: str
    reason: str
    devices: tuple[str, ...]


def _ratio(views: list[FieldView]) -> float:
    """The readings-weighted anomaly ratio; one device weighs at most a default field window of readings, so a
    device reporting a huge window (a bug, or a lying device outside the wave) cannot outweigh the others."""
    weights = [min(v.readings, DEFAULT_WINDOW) for v in views]
    total = sum(weights)
    return sum(v.anomaly_ratio * w for v, w in zip(views, weights, strict=True)) / total if total else 0.0


def _psi(views: list[FieldView]) -> dict[str, float]:
    names = {name for v in views for name in v.psi}
    return {name: statistics.median(v.psi.get(name, 0.0) for v in views) for name in sorted(names)}


def assess(
    record: RolloutRecord, devices: Iterable[tuple[str, Mapping[str, str], Any]], limits: ModelHealthLimits
) -> ModelVerdict | None:
    """``devices``: (device id, groups, field summary) of the fleet. None while the candidate looks fine (or
    there is not enough field data yet)."""
    candidate: list[FieldView] = []
    stable: list[FieldView] = []
    for device_id, groups, summary in devices:
        view = field_view(device_id, summary)
        if view is None or view.readings < limits.min_readings or not matches(groups, record.group):
            continue
        in_wave = bucket(device_id, record.rollout_id) < record.percent
        if in_wave and view.version == record.version:
            candidate.append(view)
        elif not in_wave and view.version == record.stable_version:
            stable.append(view)
    if not candidate:
        return None
    names = tuple(v.device_id for v in candidate)
    ratio = _ratio(candidate)
    if stable:
        base = _ratio(stable)
        allowed = limits.anomaly_ratio_factor * max(base, limits.min_anomaly_ratio)
        if ratio > allowed:
            return ModelVerdict(
                "model-anomaly-ratio",
                f"model: v{record.version} flags {ratio:.1%} of readings on {len(candidate)} device(s) against "
                f"{base:.1%} for v{record.stable_version} on {len(stable)} comparable device(s) (limit "
                f"{limits.anomaly_ratio_factor:g}x = {allowed:.1%})",
                names,
            )
    elif ratio > limits.max_anomaly_ratio:
        return ModelVerdict(
            "model-anomaly-ratio",
            f"model: v{record.version} flags {ratio:.1%} of readings on {len(candidate)} device(s), above the "
            f"{limits.max_anomaly_ratio:.0%} limit (no device on v{record.stable_version} reports to compare with)",
            names,
        )
    drifting = {name: psi for name, psi in _psi(candidate).items() if psi > limits.max_psi}
    stable_psi = _psi(stable) if stable else {}
    diverging = {name: psi for name, psi in drifting.items() if stable_psi.get(name, 0.0) <= limits.max_psi}
    if diverging:
        worst = ", ".join(f"{name} {psi:.2f}" for name, psi in sorted(diverging.items(), key=lambda kv: -kv[1])[:3])
        return ModelVerdict(
            "model-drift",
            f"model: the inputs of v{record.version}'s devices left its training distribution (median PSI {worst}; "
            f"limit {limits.max_psi:g})" + (f", not v{record.stable_version}'s" if stable else ""),
            names,
        )
    return None
