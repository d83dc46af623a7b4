"""Captured windows: the readings around anomalies, from the devices that opted in, saved for labelling.

A device whose agent has ``[fleet] capture_windows = true`` attaches to each published anomaly event the raw
readings the model saw for it (``detail.window``: rows of sensor values, oldest first). :class:`CaptureWriter`
(pure: fed one message at a time) keeps those events and appends each as one JSON line::

    {"device_id": "pi4-1", "version": 3, "at": 1764720000.1, "stream": "pump-3", "score": 0.71,
     "threshold": 0.31, "window": [[61.2, 0.49, 3.01], ...]}

and counts the rest: anomaly events without a window (``no-window``: capture is off on that device),
``oversized`` (the device kept a window too large for one message), ``malformed`` (not the contract, or a window
that is not rows of finite numbers). Each line is flushed as it is written: an interrupted capture keeps
everything received until then.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

from edge_runtime.fleet.messages import MAX_MESSAGE_BYTES, MalformedMessage, parse_event, split_topic

MAX_WINDOW_VALUES = 4096  # a window larger than a device can send is not from a device


@dataclass
class CaptureStats:
    windows: int = 0
    devices: set[str] = field(default_factory=set)
    skipped: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        return f"{self.windows} windows from {len(self.devices)} devices (skipped: {skipped})"


class CaptureWriter:
    """Appends each captured window of fleet ``fleet`` to ``out`` (one JSON object a line); never raises on a
    message."""

    def __init__(self, fleet: str, out: IO[str]) -> None:
        self.fleet = fleet
        self.out = out
        self.stats = CaptureStats()

    def feed(self, topic: str, payload: bytes) -> bool:
        """Take one message; ``True`` when it was a window, written."""
        record = self._record(topic, bytes(payload))
        if record is None:
            return False
        self.out.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.out.flush()
        self.stats.windows += 1
        self.stats.devices.add(record["device_id"])
        return True

    def _record(self, topic: str, payload: bytes) -> dict[str, Any] | None:
        skipped = self.stats.skipped
        try:
            fleet, device_id, kind = split_topic(topic)
            if fleet != self.fleet or kind != "events":
                return None
            if len(payload) > MAX_MESSAGE_BYTES:
                raise MalformedMessage(f"{len(payload)} bytes")
            event = parse_event(payload, device_id=device_id)
        except MalformedMessage:
            skipped["malformed"] += 1
            return None
        if event.kind != "anomaly":
            return None
        window = event.detail.get("window")
        if window is None:
            skipped["no-window"] += 1
            return None
        if window == "oversized":
            skipped["oversized"] += 1
            return None
        if not _is_window(window):
            skipped["malformed"] += 1
            return None
        detail = event.detail
        return {
            "device_id": device_id,
            "version": event.version,
            "at": detail.get("at", event.at),
            "stream": detail.get("stream"),
            "score": detail.get("score"),
            "threshold": detail.get("threshold"),
            "window": window,
        }


def _is_window(value: Any) -> bool:
    """Rows of the same length of finite numbers, not too many of them."""
    if not isinstance(value, list) or not value or not all(isinstance(row, list) and row for row in value):
        return False
    width = len(value[0])
    return (
        all(len(row) == width for row in value)
        and width * len(value) <= MAX_WINDOW_VALUES
        and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for row in value for v in row
        )
    )
