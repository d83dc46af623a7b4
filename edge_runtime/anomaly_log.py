"""The service's most recent anomaly decisions, for the fleet agent to publish as events (``GET /v1/anomalies``).

A ring of the last ``capacity`` anomalous readings (stream, time, score, threshold) with a running sequence
number, so the agent publishes each once (it remembers the last number it sent). Only anomalous readings are
recorded — nothing is kept of normal traffic — and memory is bounded (64 events ≈ 10 kB).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

DEFAULT_CAPACITY = 64


class AnomalyLog:
    """Bounded log of anomalous readings; :meth:`record` is called only for requests that had one."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, clock: Callable[[], float] = time.time) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._clock = clock
        self.seq = 0  # anomalies recorded since start (the sequence number of the last one)

    def record(self, stream: str, scores: Sequence[float], threshold: float) -> None:
        """Record each reading of ``scores`` at or above ``threshold`` (one request of ``stream``)."""
        now = round(self._clock(), 3)
        for score in scores:
            if score >= threshold:
                self.seq += 1
                self._events.append(
                    {
                        "seq": self.seq,
                        "stream": stream[:128],
                        "at": now,
                        "score": round(score, 6),
                        "threshold": threshold,
                    }
                )

    def to_json(self) -> bytes:
        """``{"seq": last sequence number, "events": [oldest .. newest]}``."""
        return json.dumps({"seq": self.seq, "events": list(self._events)}, separators=(",", ":")).encode()
