"""Field reports: what a model version does on the devices, per version and device group, from their summaries.

Input: ``(device_id, groups, summary)`` tuples, where ``summary`` is the dict a device's service answers on
``GET /v1/field`` (:func:`edge_runtime.field_metrics.summary`) and the agent publishes. Any iterable works
(a JSONL file, the fleet's MQTT topics, an in-process simulation), so the source is injectable.

:func:`aggregate` is pure and never raises on bad input: a summary it cannot read is counted in
``FieldReport.malformed`` under its reason. The latest summary of a device for a version wins. Per version
and per device group (plus the group ``*``, every device of the version):

- devices reporting, readings (since each service started) and readings in the devices' windows;
- anomaly ratio, weighted by window readings;
- score quantiles from the merged window histograms when the devices share bucket edges (same bundle),
  else the window-reading-weighted mean of the devices' own quantiles;
- per sensor, the largest and mean PSI among the devices that name it, and how many are at or above the alert;
  the features that drift most come first.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.field_metrics import PSI_ALERT, QUANTILES, histogram_quantile

ALL_GROUPS = "*"
TOP_FEATURES = 5
Entry = tuple[str, Sequence[str] | str | None, Any]


class MalformedSummary(ValueError):
    """A device summary that cannot be read; ``reason`` is a short stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DeviceSummary:
    """The parts of one device's summary a report uses, validated."""

    device_id: str
    groups: tuple[str, ...]
    model: str
    version: str
    readings: int
    window: int
    anomaly_ratio: float | None
    quantiles: dict[str, float]
    score_edges: tuple[float, ...]
    score_counts: tuple[int, ...]
    psi: dict[str, float]
    drift: str
    input_error_ratio: float
    since: str


def _number(value: Any, key: str, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MalformedSummary("bad_number", f"'{key}' is {value!r}; expected a finite number.")
    return float(value)


def _count(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedSummary("bad_count", f"'{key}' is {value!r}; expected a count >= 0.")
    return value


def _ratio(value: Any, key: str) -> float | None:
    number = _number(value, key, allow_none=True)
    if number is not None and not 0.0 <= number <= 1.0:
        raise MalformedSummary("bad_ratio", f"'{key}' is {value!r}; expected a ratio in [0, 1].")
    return number


def parse_summary(device_id: Any, groups: Any, data: Any) -> DeviceSummary:
    """Validate one device's summary; :class:`MalformedSummary` names what is wrong."""
    if not isinstance(device_id, str) or not device_id:
        raise MalformedSummary("bad_device_id", f"device id {device_id!r} must be a non-empty string.")
    if groups is None:
        group_names: tuple[str, ...] = ()
    elif isinstance(groups, str):
        group_names = (groups,)
    elif isinstance(groups, (list, tuple)) and all(isinstance(g, str) for g in groups):
        group_names = tuple(groups)
    else:
        raise MalformedSummary("bad_groups", f"groups {groups!r} must be a list of strings.")
    if not isinstance(data, Mapping):
        raise MalformedSummary("not_an_object", f"summary of {device_id} is {type(data).__name__}, not an object.")
    for key in ("model", "version"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise MalformedSummary(f"bad_{key}", f"summary of {device_id}: '{key}' is {data.get(key)!r}.")
    score = data.get("score")
    if not isinstance(score, Mapping):
        raise MalformedSummary("bad_score", f"summary of {device_id}: 'score' is {score!r}; expected an object.")
    edges = score.get("le", [])
    counts = score.get("counts", [])
    if not isinstance(edges, list) or not isinstance(counts, list):
        raise MalformedSummary("bad_score", f"summary of {device_id}: score 'le' and 'counts' must be lists.")
    if counts and len(counts) != len(edges) + 1:
        raise MalformedSummary("bad_score", f"summary of {device_id}: {len(edges)} edges but {len(counts)} counts.")
    quantiles: dict[str, float] = {}
    for q in QUANTILES:
        key = f"p{round(q * 100)}"
        value = _number(score.get(key), f"score.{key}", allow_none=True)
        if value is not None:
            quantiles[key] = value
    psi_raw = data.get("psi") or {}
    if not isinstance(psi_raw, Mapping):
        raise MalformedSummary("bad_psi", f"summary of {device_id}: 'psi' is {psi_raw!r}; expected an object.")
    psi = {str(k): _number(v, f"psi.{k}") for k, v in psi_raw.items()}
    return DeviceSummary(
        device_id=device_id,
        groups=group_names,
        model=data["model"],
        version=data["version"],
        readings=_count(data.get("readings"), "readings"),
        window=_count(data.get("window"), "window"),
        anomaly_ratio=_ratio(data.get("anomaly_ratio"), "anomaly_ratio"),
        quantiles=quantiles,
        score_edges=tuple(float(_number(e, "score.le") or 0.0) for e in edges),
        score_counts=tuple(_count(c, "score.counts") for c in counts),
        psi={k: v for k, v in psi.items() if v is not None},
        drift=str(data.get("drift", "")),
        input_error_ratio=_ratio(data.get("input_error_ratio", 0.0), "input_error_ratio") or 0.0,
        since=str(data.get("since", "")),
    )


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    psi_max: float
    psi_mean: float
    devices: int  # devices naming this feature in their summary (their top drifting ones)
    over_alert: int  # of which at or above the PSI alert


@dataclass(frozen=True)
class GroupStats:
    """One version on one device group (``*`` = all its devices)."""

    version: str
    group: str
    devices: int
    readings: int
    window_readings: int
    anomaly_ratio: float | None
    score: dict[str, float | None]
    score_source: str  # "merged_histogram", "reading_weighted" or "none"
    drift: list[FeatureDrift]
    devices_without_reference: int
    input_error_ratio: float

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["drift"] = [d.__dict__ for d in self.drift]
        return data


@dataclass(frozen=True)
class FieldReport:
    model: str | None
    groups: list[GroupStats]
    summaries: int
    malformed: dict[str, int] = field(default_factory=dict)
    other_models: int = 0
    superseded: int = 0  # older summaries of a device and version, replaced by a later one

    @property
    def versions(self) -> list[str]:
        return sorted({g.version for g in self.groups}, key=_version_key)

    def overall(self, version: str) -> GroupStats | None:
        """The ``*`` group of ``version``."""
        return next((g for g in self.groups if g.version == version and g.group == ALL_GROUPS), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "summaries": self.summaries,
            "malformed": dict(self.malformed),
            "other_models": self.other_models,
            "superseded": self.superseded,
            "groups": [g.to_dict() for g in self.groups],
        }


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isascii() and version.isdigit() else (1 << 62, version)


def _weighted(values: list[tuple[float, int]]) -> float | None:
    total = sum(w for _, w in values)
    if total <= 0:
        return None
    return sum(v * w for v, w in values) / total


def _group_stats(version: str, group: str, devices: list[DeviceSummary], top: int) -> GroupStats:
    window = sum(d.window for d in devices)
    anomaly = _weighted([(d.anomaly_ratio, d.window) for d in devices if d.anomaly_ratio is not None])
    with_hist = [d for d in devices if d.score_counts and d.score_edges]
    edge_sets = {d.score_edges for d in with_hist}
    score: dict[str, float | None]
    if with_hist and len(edge_sets) == 1 and len(with_hist) == len(devices):
        edges = next(iter(edge_sets))
        merged = [sum(c) for c in zip(*(d.score_counts for d in with_hist), strict=True)]
        score = {f"p{round(q * 100)}": histogram_quantile(q, edges, merged) for q in QUANTILES}
        source = "merged_histogram"
    else:
        score = {
            key: _weighted([(d.quantiles[key], d.window) for d in devices if key in d.quantiles])
            for key in (f"p{round(q * 100)}" for q in QUANTILES)
        }
        source = "reading_weighted" if any(v is not None for v in score.values()) else "none"
    by_feature: dict[str, list[float]] = {}
    for d in devices:
        for name, value in d.psi.items():
            by_feature.setdefault(name, []).append(value)
    drift = [
        FeatureDrift(name, max(values), sum(values) / len(values), len(values), sum(v >= PSI_ALERT for v in values))
        for name, values in by_feature.items()
    ]
    drift.sort(key=lambda f: (f.over_alert, f.psi_max), reverse=True)
    return GroupStats(
        version=version,
        group=group,
        devices=len(devices),
        readings=sum(d.readings for d in devices),
        window_readings=window,
        anomaly_ratio=anomaly,
        score=score,
        score_source=source,
        drift=drift[:top],
        devices_without_reference=sum(d.drift == "no_reference" for d in devices),
        input_error_ratio=_weighted([(d.input_error_ratio, max(d.readings, 1)) for d in devices]) or 0.0,
    )


def aggregate(summaries: Iterable[Entry], model: str | None = None, top: int = TOP_FEATURES) -> FieldReport:
    """The field report of ``model`` (all models when None) from ``(device_id, groups, summary)`` tuples."""
    latest: dict[tuple[str, str], DeviceSummary] = {}
    malformed: Counter[str] = Counter()
    seen = other = superseded = 0
    for entry in summaries:
        seen += 1
        try:
            device_id, device_groups, data = entry
            parsed = parse_summary(device_id, device_groups, data)
        except MalformedSummary as exc:
            malformed[exc.reason] += 1
            continue
        except (TypeError, ValueError):  # not a 3-tuple, or an unreadable value deep inside
            malformed["unreadable"] += 1
            continue
        if model is not None and parsed.model != model:
            other += 1
            continue
        key = (parsed.device_id, parsed.version)
        superseded += key in latest
        latest[key] = parsed
    by_version: dict[str, list[DeviceSummary]] = {}
    for summary in latest.values():
        by_version.setdefault(summary.version, []).append(summary)
    groups: list[GroupStats] = []
    for version in sorted(by_version, key=_version_key):
        devices = by_version[version]
        groups.append(_group_stats(version, ALL_GROUPS, devices, top))
        for group in sorted({g for d in devices for g in d.groups}):
            groups.append(_group_stats(version, group, [d for d in devices if group in d.groups], top))
    return FieldReport(model, groups, seen, dict(malformed), other, superseded)


@dataclass(frozen=True)
class RetrainAdvice:
    retrain: bool
    reasons: list[str]


def retrain_advice(report: FieldReport, version: str, min_share: float = 0.25) -> RetrainAdvice:
    """Retrain when at least ``min_share`` of the version's devices see a sensor drift past the PSI alert."""
    stats = report.overall(version)
    if stats is None or stats.devices == 0:
        return RetrainAdvice(False, [f"no device reports version {version}"])
    reasons = [
        f"{d.feature}: PSI >= {PSI_ALERT} on {d.over_alert} of {stats.devices} devices (max {d.psi_max:.3g})"
        for d in stats.drift
        if d.over_alert and d.over_alert / stats.devices >= min_share
    ]
    if reasons:
        return RetrainAdvice(True, reasons)
    return RetrainAdvice(False, [f"no sensor drifts past PSI {PSI_ALERT} on {min_share:.0%} of the devices"])


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def render_text(report: FieldReport) -> str:
    """A table per version and group, then what could not be read."""
    header = ("version", "group", "devices", "readings", "anomaly", "p50", "p90", "p99", "input err", "drifting most")
    rows = [header]
    for g in report.groups:
        drift = ", ".join(f"{d.feature} {d.psi_max:.2f}" + ("!" if d.over_alert else "") for d in g.drift[:3]) or "-"
        if g.devices_without_reference == g.devices:
            drift = "not measured (no reference)"
        rows.append(
            (
                g.version,
                g.group,
                str(g.devices),
                str(g.readings),
                _fmt(g.anomaly_ratio),
                _fmt(g.score["p50"]),
                _fmt(g.score["p90"]),
                _fmt(g.score["p99"]),
                _fmt(g.input_error_ratio),
                drift,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if len(rows) == 1:
        lines.append(f"(no summaries of {report.model or 'any model'})")
    lines.append(f"PSI alert {PSI_ALERT} ('!' = at least one device at or above it)")
    if report.malformed:
        lines.append("malformed summaries: " + ", ".join(f"{k} {v}" for k, v in sorted(report.malformed.items())))
    if report.other_models:
        lines.append(f"summaries of other models ignored: {report.other_models}")
    return "\n".join(lines)
