"""The agent's link to the fleet channel: after every step, the device shadow and (for a step that did something)
an event; every ``field_interval_s``, the serving model's field summary from the service's ``GET /v1/field``;
and the service's new anomaly decisions (``GET /v1/anomalies``) as anomaly events, rate-limited (at most
``anomaly_burst`` per step and ``anomaly_per_hour`` an hour; what is held back is counted in the next event).
With ``capture_windows`` (``[fleet] capture_windows``, off by default) an anomaly event also carries the readings
the model saw for it, when the service captured them and they fit one fleet message (else ``"window": "oversized"``).

The reporter (:class:`edge_runtime.fleet.reporter.Reporter`) never blocks and never raises for the broker, so
nothing here can stop the agent from serving or updating; a failing field fetch is logged once and skipped.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from edge_runtime.fleet.messages import MAX_MESSAGE_BYTES, DeviceEvent, DeviceState
from edge_runtime.fleet.shadow import device_state, started_event, update_event

log = logging.getLogger("otaml.agent")


class Publisher(Protocol):
    """What the link needs of the reporter (a fake in unit tests)."""

    def publish_state(self, state: DeviceState) -> bool: ...

    def publish_event(self, event: DeviceEvent) -> bool: ...

    def publish_field(self, summary: bytes) -> bool: ...


def _get(port: int, path: str, cap: int, timeout_s: float) -> bytes | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read(cap + 1)
    finally:
        conn.close()
    if response.status != 200 or len(body) > cap:
        return None
    return body


def fetch_field(port: int, timeout_s: float = 2.0) -> bytes | None:
    """The service's compact field summary (``GET /v1/field`` on 127.0.0.1), or None when it has none."""
    return _get(port, "/v1/field", MAX_MESSAGE_BYTES, timeout_s)


def fetch_anomalies(port: int, timeout_s: float = 2.0) -> Any:
    """The service's anomaly log (``GET /v1/anomalies``): ``{"seq": N, "events": [...]}``, or None."""
    body = _get(port, "/v1/anomalies", 128 * 1024, timeout_s)
    return json.loads(body) if body is not None else None


class FleetLink:
    """Call it with each step's report (``loop.run(..., on_report=link)``)."""

    def __init__(
        self,
        reconciler: Any,
        publisher: Publisher,
        *,
        device_id: str,
        groups: dict[str, str],
        model: str,
        field_interval_s: float = 300.0,
        anomaly_burst: int = 5,
        anomaly_per_hour: int = 60,
        capture_windows: bool = False,
        clock: Callable[[], float] = time.time,
        field_fetch: Callable[[int], bytes | None] = fetch_field,
        anomaly_fetch: Callable[[int], Any] = fetch_anomalies,
    ) -> None:
        self.reconciler = reconciler
        self.publisher = publisher
        self.device_id = device_id
        self.groups = groups
        self.model = model
        self.field_interval_s = field_interval_s
        self._clock = clock
        self._field_fetch = field_fetch
        self._field_at = float("-inf")
        self._field_failed = False
        self.anomaly_burst = anomaly_burst
        self.anomaly_per_hour = anomaly_per_hour
        self.capture_windows = capture_windows
        self._anomaly_fetch = anomaly_fetch
        self._anomaly_seen: tuple[str, int] = ("", 0)  # (container, last sequence number published or skipped)
        self._anomaly_warned = ""  # the service whose unavailable anomaly log was last logged
        self._tokens = float(anomaly_per_hour)
        self._tokens_at = clock()
        self.anomalies_suppressed = 0

    def __call__(self, report: Any) -> None:
        state = self.reconciler.state
        now = self._clock()
        health = (
            "ok" if state.current is not None and report.ok else ("unknown" if state.current is None else "degraded")
        )
        if report.outcome == "rolled_back" or (report.outcome == "error" and report.step == "probation"):
            health = "unhealthy"
        self.publisher.publish_state(
            device_state(
                state, report, device_id=self.device_id, groups=self.groups, model=self.model, health=health, now=now
            )
        )
        event = update_event(report, device_id=self.device_id, now=now)
        if event is not None:
            self.publisher.publish_event(event)
        if state.current is not None and now - self._field_at >= self.field_interval_s:
            self._field_at = now
            self._publish_field(state.current.port)
        if state.current is not None:
            self._publish_anomalies(state.current.container, state.current.port, now)

    def phase_changed(self) -> None:
        """An update entered a phase (pulling, canary, handover, probation): the shadow says so at once, its health
        ``unknown`` until the step ends (the controller waits for it, and judges it by this phase if it goes
        offline now); pulling also sends a ``started`` event. Wired as the reconciler's ``on_phase``."""
        state = self.reconciler.state
        now = self._clock()
        self.publisher.publish_state(
            device_state(
                state, None, device_id=self.device_id, groups=self.groups, model=self.model, health="unknown", now=now
            )
        )
        event = started_event(state, device_id=self.device_id, now=now)
        if event is not None:
            self.publisher.publish_event(event)

    def _publish_anomalies(self, container: str, port: int, now: float) -> None:
        try:
            log_doc = self._anomaly_fetch(port)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            log_doc, why = None, str(exc)
        else:
            why = "not an anomaly log (an error status, a body over the cap, or another shape)"
        if not isinstance(log_doc, dict) or not isinstance(log_doc.get("events"), list):
            if container != self._anomaly_warned:  # once per service: anomalies are best effort
                self._anomaly_warned = container
                log.warning("anomaly log of port %d unavailable: %s", port, why, extra={"event": "anomalies_failed"})
            return
        seen_container, seen = self._anomaly_seen
        if container != seen_container:
            seen = 0  # a new service: its sequence starts again
        self._tokens = min(
            float(self.anomaly_per_hour), self._tokens + (now - self._tokens_at) * self.anomaly_per_hour / 3600
        )
        self._tokens_at = now
        fresh = [
            e for e in log_doc["events"] if isinstance(e, dict) and isinstance(e.get("seq"), int) and e["seq"] > seen
        ]
        sent = 0
        for event in fresh:
            if sent >= self.anomaly_burst or self._tokens < 1:
                self.anomalies_suppressed += 1
                continue
            self._tokens -= 1
            sent += 1
            detail = {k: event.get(k) for k in ("stream", "at", "score", "threshold", "seq")}
            if self.anomalies_suppressed:
                detail["suppressed_before"] = self.anomalies_suppressed
                self.anomalies_suppressed = 0
            message = DeviceEvent(
                device_id=self.device_id, kind="anomaly", at=now, version=_int(self.reconciler), detail=detail
            )
            if self.capture_windows and isinstance(event.get("window"), list):
                captured = dataclasses.replace(message, detail={**detail, "window": event["window"]})
                # Said, not silently lost: a window that would not fit one fleet message stays on the device.
                fits = len(captured.to_json()) <= MAX_MESSAGE_BYTES
                message = captured if fits else dataclasses.replace(message, detail={**detail, "window": "oversized"})
            self.publisher.publish_event(message)
        latest = log_doc.get("seq")
        self._anomaly_seen = (container, latest if isinstance(latest, int) else seen)

    def _publish_field(self, port: int) -> None:
        try:
            summary = self._field_fetch(port)
        except (OSError, http.client.HTTPException) as exc:
            if not self._field_failed:
                log.warning("field summary unavailable from port %d: %s", port, exc, extra={"event": "field_failed"})
            self._field_failed = True
            return
        self._field_failed = False
        if summary is not None:
            self.publisher.publish_field(summary)


def _int(reconciler: Any) -> int:
    cur = reconciler.state.current
    try:
        return int(cur.version) if cur is not None else 0
    except (TypeError, ValueError):
        return 0
