"""Captured windows: the readings around anomalies, from the devices that opted in, saved for labelling.

A device whose agent has ``[fleet] capture_windows = true`` attaches to each published anomaly event the raw
readings the model saw for it (``detail.window``: rows of sensor values, oldest first). :class:`CaptureWriter`
(pure: fed one message at a time) keeps those events and appends each as one JSON line::

    {"device_id": "pi4-1", "version": 3, "seq": 812, "at": 1764720000.1, "stream": "pump-3", "score": 0.71,
     "threshold": 0.31, "window": [[61.2, 0.49, 3.01], ...]}

and counts the rest: anomaly events without a window (``no-window``: capture is off on that device),
``oversized`` (the device kept a window too large for one message), ``malformed`` (not the contract, or a window
that is not rows of finite numbers), ``duplicate`` (the same event again: MQTT's at-least-once delivery, or an agent
that restarted and published its service's log again). Each line is flushed as it is written: an interrupted
capture keeps everything received until then. Device messages are untrusted: :meth:`CaptureWriter.feed` raises only
for the output file (disk full), never for a message.
"""

from __future__ import annotations

import json
import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import IO, Any

from edge_runtime.fleet.messages import MAX_MESSAGE_BYTES, MalformedMessage, parse_event, split_topic

MAX_WINDOW_VALUES = 4096  # a window larger than a device can send is not from a device
SEEN = 10_000  # events remembered to drop duplicates


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
        self._seen: set[tuple[Any, ...]] = set()
        self._order: deque[tuple[Any, ...]] = deque()

    def feed(self, topic: str, payload: bytes) -> bool:
        """Take one message; ``True`` when it was a window, written. Raises only ``OSError`` of the output."""
        try:
            record = self._record(topic, bytes(payload))
        except Exception:  # a message no check foresaw is counted, never a crash of the capture
            record = None
            self.stats.skipped["malformed"] += 1
        if record is None:
            return False
        key = (record["device_id"], record["version"], record["seq"], record["at"])
        if key in self._seen:
            self.stats.skipped["duplicate"] += 1
            return False
        self._seen.add(key)
        self._order.append(key)
        if len(self._order) > SEEN:
            self._seen.discard(self._order.popleft())
        self.out.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n")
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
        detail = event.detail
        stream, seq = detail.get("stream"), detail.get("seq", 0)
        numbers = [detail.get("at", event.at), detail.get("score"), detail.get("threshold")]
        if (
            not _is_window(window)
            or not isinstance(stream, str)
            or not 0 < len(stream) <= 256
            or not _is_int(seq)
            or not all(_is_number(v) for v in numbers)
        ):
            skipped["malformed"] += 1
            return None
        at, score, threshold = numbers
        return {
            "device_id": device_id,
            "version": event.version,
            "seq": seq,
            "at": at,
            "stream": stream,
            "score": score,
            "threshold": threshold,
            "window": window,
        }


def _is_number(value: Any) -> bool:
    """A finite JSON number (an integer of any size counts only if a float holds it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _is_window(value: Any) -> bool:
    """Rows of the same length of finite numbers, not too many of them."""
    if not isinstance(value, list) or not value or not all(isinstance(row, list) and row for row in value):
        return False
    width = len(value[0])
    return (
        all(len(row) == width for row in value)
        and width * len(value) <= MAX_WINDOW_VALUES
        and all(_is_number(v) for row in value for v in row)
    )
