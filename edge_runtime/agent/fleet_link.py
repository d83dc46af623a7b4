"""The agent's link to the fleet channel: after every step, the device shadow and (for a step that did something)
an event; every ``field_interval_s``, the serving model's field summary from the service's ``GET /v1/field``.

The reporter (:class:`edge_runtime.fleet.reporter.Reporter`) never blocks and never raises for the broker, so
nothing here can stop the agent from serving or updating; a failing field fetch is logged once and skipped.
"""

from __future__ import annotations

import http.client
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from edge_runtime.fleet.messages import MAX_MESSAGE_BYTES, DeviceEvent, DeviceState
from edge_runtime.fleet.shadow import device_state, update_event

log = logging.getLogger("otaml.agent")


class Publisher(Protocol):
    """What the link needs of the reporter (a fake in unit tests)."""

    def publish_state(self, state: DeviceState) -> bool: ...

    def publish_event(self, event: DeviceEvent) -> bool: ...

    def publish_field(self, summary: bytes) -> bool: ...


def fetch_field(port: int, timeout_s: float = 2.0) -> bytes | None:
    """The service's compact field summary (``GET /v1/field`` on 127.0.0.1), or None when it has none."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", "/v1/field")
        response = conn.getresponse()
        body = response.read(MAX_MESSAGE_BYTES + 1)
    finally:
        conn.close()
    if response.status != 200 or len(body) > MAX_MESSAGE_BYTES:
        return None
    return body


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
        clock: Callable[[], float] = time.time,
        field_fetch: Callable[[int], bytes | None] = fetch_field,
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
