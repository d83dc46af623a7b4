"""Promotion gates: what a model version must show before it may reach a channel.

The limits live in a TOML file in the repository (``registry/gates.toml``, see its comments); a ``[default]``
table applies to every channel and ``[staging]`` / ``[production]`` override single keys. The gates:

=============== ==================================================================================
``metric:<m>``  run metric ``m`` >= its minimum, when the run has it (no labels, no metric: skipped)
``alarm_rate``  the validation alarm rate is not degenerate: <= ``max_alarm_to_label_ratio`` times the
                validation label rate, or <= ``max_unlabelled_alarm_rate`` without labels (a threshold
                that flags nearly everything "wins" best F1 when the scores rank anomalies badly)
``parity``      agreement of the shipped ONNX with scikit-learn on anomaly decisions >= minimum
``bundle_size`` bytes of model.onnx + model.json <= maximum
``latency_p50`` / ``latency_p99``: single-reading scoring on the ONNX file with the device's session
                options (CPU arena off, one thread) <= maximum, in milliseconds
=============== ==================================================================================

:func:`evaluate_gates` returns a :class:`GateReport` (every result, passed or not); the caller decides.
"""

from __future__ import annotations

import math
import os
import time
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bundle import Bundle
from edge_runtime.errors import InputError
from edge_runtime.features import batch_features

DEFAULT_GATES_FILE = Path(__file__).with_name("gates.toml")
_KEYS = {
    "min_metrics",
    "parity_metric",
    "min_parity_agreement",
    "max_bundle_bytes",
    "max_latency_p50_ms",
    "max_latency_p99_ms",
    "latency_runs",
    "max_alarm_to_label_ratio",
    "max_unlabelled_alarm_rate",
}


class GateConfigError(InputError):
    """The gates file is missing or has an invalid value."""


@dataclass(frozen=True)
class GateConfig:
    """The limits for one channel."""

    min_metrics: Mapping[str, float] = field(default_factory=dict)
    parity_metric: str = "parity_{variant}_agreement"
    min_parity_agreement: float = 0.99
    max_bundle_bytes: int = 5_000_000
    max_latency_p50_ms: float = 2.0
    max_latency_p99_ms: float = 10.0
    latency_runs: int = 300
    max_alarm_to_label_ratio: float = 3.0
    max_unlabelled_alarm_rate: float = 0.1


@dataclass(frozen=True)
class GateResult:
    """One gate's outcome: ``status`` is ``pass``, ``fail`` or ``skipped``; ``detail`` says why in words."""

    name: str
    status: str
    value: float | None
    limit: float | None
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateReport:
    channel: str
    results: tuple[GateResult, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[GateResult]:
        return [r for r in self.results if r.failed]

    def to_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, "passed": self.passed, "results": [r.to_dict() for r in self.results]}


def load_gate_config(channel: str, path: str | os.PathLike[str] | None = None) -> GateConfig:
    """The gates for ``channel`` from ``path`` (default: ``$OTAML_GATES`` or ``registry/gates.toml``)."""
    file = Path(path or os.environ.get("OTAML_GATES") or DEFAULT_GATES_FILE)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GateConfigError(f"Cannot read gates file {file}: {exc.strerror}. Pass --gates PATH.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise GateConfigError(f"Gates file {file} is not valid TOML: {exc}.") from exc
    merged: dict[str, Any] = {}
    for section in ("default", channel):
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise GateConfigError(f"Gates file {file}: [{section}] must be a table.")
        unknown = sorted(set(table) - _KEYS)
        if unknown:
            raise GateConfigError(
                f"Gates file {file}: unknown key(s) {unknown} in [{section}]; known: {sorted(_KEYS)}."
            )
        merged.update(table)
    return _validated(merged, file, channel)


def _validated(values: dict[str, Any], file: Path, channel: str) -> GateConfig:
    def number(key: str, default: float) -> float:
        value = values.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise GateConfigError(f"Gates '{channel}.{key}' in {file} has value {value!r}. Use a number >= 0.")
        return float(value)

    metrics = values.get("min_metrics", {})
    if not isinstance(metrics, dict):
        raise GateConfigError(f"Gates '{channel}.min_metrics' in {file} has value {metrics!r}. Use a table.")
    minimums = {}
    for name, minimum in metrics.items():
        if isinstance(minimum, bool) or not isinstance(minimum, (int, float)) or not math.isfinite(minimum):
            raise GateConfigError(
                f"Gates '{channel}.min_metrics.{name}' in {file} has value {minimum!r}. Use a number, e.g. 0.7."
            )
        minimums[str(name)] = float(minimum)
    parity_metric = values.get("parity_metric", "parity_{variant}_agreement")
    if not isinstance(parity_metric, str) or not parity_metric:
        raise GateConfigError(f"Gates '{channel}.parity_metric' in {file} has value {parity_metric!r}. Use a name.")
    runs = int(number("latency_runs", 300))
    if runs < 10:
        raise GateConfigError(f"Gates '{channel}.latency_runs' in {file} is {runs}; use at least 10 for a p99.")
    return GateConfig(
        min_metrics=minimums,
        parity_metric=parity_metric,
        min_parity_agreement=number("min_parity_agreement", 0.99),
        max_bundle_bytes=int(number("max_bundle_bytes", 5_000_000)),
        max_latency_p50_ms=number("max_latency_p50_ms", 2.0),
        max_latency_p99_ms=number("max_latency_p99_ms", 10.0),
        latency_runs=runs,
        max_alarm_to_label_ratio=number("max_alarm_to_label_ratio", 3.0),
        max_unlabelled_alarm_rate=number("max_unlabelled_alarm_rate", 0.1),
    )


# --- measurements ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float
    runs: int


def measure_latency(bundle: Bundle, runs: int = 300) -> Latency:
    """p50/p99 of scoring one reading with ``model.onnx``, with the device's session options."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(bundle.onnx_path), options, providers=["CPUExecutionProvider"])
    card = bundle.card
    # Real feature vectors (the golden readings' windows), one row per call, as the device scores them.
    rows = batch_features(card.features, np.asarray(card.golden.readings)).astype(np.float32)
    feeds = [{card.onnx.input_name: rows[i : i + 1]} for i in range(len(rows))]
    outputs = [card.onnx.output_name]
    for feed in feeds[:20]:  # warm-up: first calls allocate and JIT kernels
        session.run(outputs, feed)
    # Three rounds, median of each percentile: one scheduler hiccup on a busy CI machine should not decide
    # a promotion, a consistently slow model should.
    rounds = []
    for _ in range(3):
        timings = np.empty(runs, dtype=np.float64)
        for i in range(runs):
            feed = feeds[i % len(feeds)]
            start = time.perf_counter_ns()
            session.run(outputs, feed)
            timings[i] = (time.perf_counter_ns() - start) / 1e6
        rounds.append((float(np.percentile(timings, 50)), float(np.percentile(timings, 99))))
    return Latency(
        p50_ms=float(np.median([r[0] for r in rounds])), p99_ms=float(np.median([r[1] for r in rounds])), runs=runs
    )


def bundle_bytes(bundle: Bundle) -> int:
    return sum(f.stat().st_size for f in (bundle.path / "model.json", bundle.onnx_path))


# --- evaluation -----------------------------------------------------------------------------------


def _parity_name(config: GateConfig, bundle: Bundle) -> str:
    variant = "fp32" if bundle.card.onnx.quantization == "none" else "int8"
    return config.parity_metric.replace("{variant}", variant)


def _parity_value(name: str, metrics: Mapping[str, float], tags: Mapping[str, str], bundle: Bundle) -> float | None:
    for source in (metrics, bundle.card.metrics):
        if name in source:
            return float(source[name])
    try:
        return float(tags[name]) if name in tags else None
    except ValueError:
        return None


def _evidence(name: str, metrics: Mapping[str, float]) -> str:
    """How many labelled events a split's metric rests on, when the run logged it (a few events: a noisy F1)."""
    split = name.split("_", 1)[0]
    events = metrics.get(f"{split}_n_events")
    return "" if events is None else f" (on {int(events)} labelled {split} event{'s' if int(events) != 1 else ''})"


def _alarm_rate_gate(config: GateConfig, metrics: Mapping[str, float]) -> GateResult:
    """Refuse a degenerate threshold: far more validation alarms than labelled anomalies, or than a sane cap."""
    if "val_alarm_rate" not in metrics:
        return GateResult(
            "alarm_rate", "skipped", None, None, "the run has no 'val_alarm_rate' (trained before this gate)"
        )
    rate = float(metrics["val_alarm_rate"])
    label_rate = metrics.get("val_label_rate")
    if label_rate is not None and label_rate > 0:
        limit = min(1.0, config.max_alarm_to_label_ratio * float(label_rate))
        basis = f"{config.max_alarm_to_label_ratio:g}x the validation label rate {float(label_rate):.2%}"
    else:
        limit = config.max_unlabelled_alarm_rate
        basis = "the cap without labels"
    ok = rate <= limit
    return GateResult(
        "alarm_rate",
        "pass" if ok else "fail",
        rate,
        limit,
        f"validation alarm rate {rate:.2%} {'<=' if ok else '>'} {limit:.2%} ({basis})"
        + ("" if ok else "; the threshold is degenerate: retrain (otaml train refuses such thresholds)"),
    )


def evaluate_gates(
    config: GateConfig,
    channel: str,
    *,
    bundle: Bundle,
    metrics: Mapping[str, float],
    tags: Mapping[str, str] | None = None,
    latency: Latency | None = None,
) -> GateReport:
    """Check every gate on the bundle that will ship and its run's metrics; measure latency unless given."""
    tags = tags or {}
    results: list[GateResult] = []
    for name, minimum in sorted(config.min_metrics.items()):
        if name not in metrics:
            results.append(
                GateResult(f"metric:{name}", "skipped", None, minimum, f"the run has no '{name}' (no labels)")
            )
            continue
        value = float(metrics[name])
        ok = value >= minimum
        results.append(
            GateResult(
                f"metric:{name}",
                "pass" if ok else "fail",
                value,
                minimum,
                f"{name} = {value:.4g} {'>=' if ok else '<'} minimum {minimum:.4g}" + _evidence(name, metrics),
            )
        )
    results.append(_alarm_rate_gate(config, metrics))
    parity_name = _parity_name(config, bundle)
    parity = _parity_value(parity_name, metrics, tags, bundle)
    if parity is None:
        results.append(
            GateResult(
                "parity",
                "fail",
                None,
                config.min_parity_agreement,
                f"no '{parity_name}' recorded for this version; re-run `otaml train`, which checks ONNX parity",
            )
        )
    else:
        ok = parity >= config.min_parity_agreement
        results.append(
            GateResult(
                "parity",
                "pass" if ok else "fail",
                parity,
                config.min_parity_agreement,
                f"ONNX/scikit-learn decision agreement {parity:.2%} "
                f"{'>=' if ok else '<'} {config.min_parity_agreement:.2%}"
                + ("" if ok else f" (quantization {bundle.card.onnx.quantization!r})"),
            )
        )
    size = bundle_bytes(bundle)
    ok = size <= config.max_bundle_bytes
    results.append(
        GateResult(
            "bundle_size",
            "pass" if ok else "fail",
            float(size),
            float(config.max_bundle_bytes),
            f"bundle is {size} bytes, {'within' if ok else 'over'} the {config.max_bundle_bytes}-byte limit",
        )
    )
    measured = latency or measure_latency(bundle, config.latency_runs)
    for label, value, limit in (
        ("p50", measured.p50_ms, config.max_latency_p50_ms),
        ("p99", measured.p99_ms, config.max_latency_p99_ms),
    ):
        ok = value <= limit
        results.append(
            GateResult(
                f"latency_{label}",
                "pass" if ok else "fail",
                round(value, 4),
                limit,
                f"single-reading scoring {label} {value:.3f} ms {'<=' if ok else '>'} {limit} ms "
                f"(median of 3 rounds of {measured.runs}, 1 thread, arena off)",
            )
        )
    return GateReport(channel=channel, results=tuple(results))
