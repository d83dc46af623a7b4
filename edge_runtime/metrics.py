"""Prometheus text exposition (format 0.0.4) for the scoring service, without a client library.

One event loop serves every request, so plain counters suffice (no locks).
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Callable

from edge_runtime.anomaly_log import AnomalyLog
from edge_runtime.field_metrics import FieldMetrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}" if pairs else ""


def process_memory() -> dict[str, int]:
    """Resident memory of this process in bytes: ``rss``, ``anon`` and ``file`` (0 where /proc is missing)."""
    found = {"rss": 0, "anon": 0, "file": 0}
    keys = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file"}
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                parts = line.split()
                if parts and parts[0] in keys:
                    found[keys[parts[0]]] = int(parts[1]) * 1024
    except OSError:
        pass
    if not found["rss"]:
        try:
            with open("/proc/self/statm", encoding="ascii") as statm:
                found["rss"] = int(statm.read().split()[1]) * _PAGE
        except OSError:
            pass
    return found


class Metrics:
    """The service's counters, one latency histogram per route, static model info, and the field metrics."""

    def __init__(
        self, model_name: str, model_version: str, bundle_digest: str, field: FieldMetrics | None = None
    ) -> None:
        self.info = (("model", model_name), ("version", model_version), ("digest", bundle_digest))
        self.field = field
        self.anomalies = AnomalyLog()  # the latest anomalous readings, for the fleet agent (GET /v1/anomalies)
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, list[int]] = {}
        self.latency_sum: dict[str, float] = {}
        self.readings_scored = 0
        self.anomalies_flagged = 0
        self.streams_evicted = 0

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        counts = self.latency.get(route)
        if counts is None:
            counts = self.latency[route] = [0] * (len(LATENCY_BUCKETS) + 1)
            self.latency_sum[route] = 0.0
        counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum[route] += seconds

    def observe_scores(self, readings: int, anomalies: int) -> None:
        self.readings_scored += readings
        self.anomalies_flagged += anomalies

    def render(self, streams_active: int = 0) -> str:
        out: list[str] = []

        def family(name: str, kind: str, doc: str) -> None:
            out.append(f"# HELP {name} {doc}")
            out.append(f"# TYPE {name} {kind}")

        family("otaml_http_requests_total", "counter", "HTTP requests by method, route and status.")
        for (method, route, status), count in sorted(self.requests.items()):
            labels = _labels((("method", method), ("route", route), ("status", str(status))))
            out.append(f"otaml_http_requests_total{labels} {count}")
        family("otaml_http_request_duration_seconds", "histogram", "HTTP request latency by route.")
        for route, counts in sorted(self.latency.items()):
            cumulative = 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(
                    f"otaml_http_request_duration_seconds_bucket{_labels((('route', route), ('le', le)))} {cumulative}"
                )
            route_label = _labels((("route", route),))
            out.append(f"otaml_http_request_duration_seconds_sum{route_label} {self.latency_sum[route]!r}")
            out.append(f"otaml_http_request_duration_seconds_count{route_label} {cumulative}")
        family("otaml_readings_scored_total", "counter", "Readings scored by the model.")
        out.append(f"otaml_readings_scored_total {self.readings_scored}")
        family("otaml_anomalies_flagged_total", "counter", "Readings whose score reached the threshold.")
        out.append(f"otaml_anomalies_flagged_total {self.anomalies_flagged}")
        family("otaml_streams_active", "gauge", "Streams whose feature window is held in memory.")
        out.append(f"otaml_streams_active {streams_active}")
        family("otaml_streams_evicted_total", "counter", "Streams dropped by the LRU bound (their history restarts).")
        out.append(f"otaml_streams_evicted_total {self.streams_evicted}")
        family(
            "otaml_model_info",
            "gauge",
            "The model being served (always 1); the otaml_score family and the "
            "field gauges below describe this version.",
        )
        out.append(f"otaml_model_info{_labels(self.info)} 1")
        if self.field is not None:
            render_field(self.field, family, out)
        memory = process_memory()
        family("process_resident_memory_bytes", "gauge", "Resident set size of the serving process.")
        out.append(f"process_resident_memory_bytes {memory['rss']}")
        family("otaml_process_resident_memory_split_bytes", "gauge", "Resident memory split: anonymous vs file-backed.")
        out.append(f'otaml_process_resident_memory_split_bytes{{kind="anon"}} {memory["anon"]}')
        out.append(f'otaml_process_resident_memory_split_bytes{{kind="file"}} {memory["file"]}')
        return "\n".join(out) + "\n"


def _number(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else ("+Inf" if value > 0 else "NaN")


def render_field(field: FieldMetrics, family: Callable[[str, str, str], None], out: list[str]) -> None:
    """The field metrics of the served version, labelled with it (docs/field.md)."""
    version = (("version", field.version),)
    family("otaml_score", "histogram", "Model scores since start, in the bundle's training-score buckets.")
    cumulative = 0
    for bound, count in zip((*field.score_edges, math.inf), field.score_counts.tolist(), strict=True):
        cumulative += count
        out.append(f"otaml_score_bucket{_labels((*version, ('le', _number(bound))))} {cumulative}")
    out.append(f"otaml_score_sum{_labels(version)} {_number(field.score_sum)}")
    out.append(f"otaml_score_count{_labels(version)} {cumulative}")
    family("otaml_anomaly_ratio", "gauge", "Share of the sliding window's readings at or above the threshold.")
    ratio = field.anomaly_ratio
    if ratio is not None:
        out.append(f"otaml_anomaly_ratio{_labels(version)} {_number(ratio)}")
    family("otaml_field_window_readings", "gauge", "Readings in the sliding window the field gauges describe.")
    out.append(f"otaml_field_window_readings{_labels(version)} {field.window_readings}")
    family(
        "otaml_feature_drift_psi", "gauge", "Population stability index of each raw sensor: window vs training data."
    )
    for name, value in field.psi().items():
        out.append(f"otaml_feature_drift_psi{_labels((('feature', name), *version))} {_number(value)}")
    family("otaml_input_error_ratio", "gauge", "Score requests refused as bad input (4xx) over all score requests.")
    out.append(f"otaml_input_error_ratio{_labels(version)} {_number(field.input_error_ratio)}")
