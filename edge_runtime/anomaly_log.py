"""The service's most recent anomaly decisions, for the fleet agent to publish as events (``GET /v1/anomalies``).

A ring of the last ``capacity`` anomalous readings (stream, time, score, threshold) with a running sequence
number, so the agent publishes each once (it remembers the last number it sent). Only anomalous readings are
recorded — nothing is kept of normal traffic — and memory is bounded (64 events ≈ 10 kB).

Window capture (``OTAML_CAPTURE_WINDOWS``, off by default; docs/field.md says what then leaves the device): the
last anomalous reading of a request also keeps ``window``, the raw readings the model saw for that decision (the
stream's last ``window`` readings ending at it, oldest first, 6 significant digits), for labelling and retraining.
Only the ``captured`` most recent events hold one, each at most ``max_window_values`` numbers (the oldest rows are
cut first): 16 windows of 16 readings x 8 sensors ≈ 20 kB. The service shows windows to loopback clients only (the
agent on the same machine), never over the network.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

DEFAULT_CAPACITY = 64
DEFAULT_CAPTURED = 16
MAX_WINDOW_VALUES = 256  # numbers per captured window: with the rest of the event it fits one fleet message


class AnomalyLog:
    """Bounded log of anomalous readings; :meth:`record` is called only for requests that had one."""

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        clock: Callable[[], float] = time.time,
        *,
        captured: int = 0,
        max_window_values: int = MAX_WINDOW_VALUES,
    ) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._windows: deque[dict[str, Any]] = deque(maxlen=max(captured, 1))
        self._clock = clock
        self.captured = captured  # 0: windows are not captured
        self.max_window_values = max_window_values
        self.seq = 0  # anomalies recorded since start (the sequence number of the last one)

    @property
    def capturing(self) -> bool:
        return self.captured > 0

    def record(
        self,
        stream: str,
        scores: Sequence[float],
        threshold: float,
        window: Callable[[int], npt.NDArray[np.float64]] | None = None,
    ) -> None:
        """Record each reading of ``scores`` at or above ``threshold`` (one request of ``stream``).

        When capturing, ``window(i)`` gives the readings the model saw for reading ``i`` (rows, oldest first); it is
        called once, for the request's last anomalous reading."""
        now = round(self._clock(), 3)
        last: dict[str, Any] | None = None
        last_index = -1
        for index, score in enumerate(scores):
            if score >= threshold:
                self.seq += 1
                last, last_index = (
                    {
                        "seq": self.seq,
                        "stream": stream[:128],
                        "at": now,
                        "score": round(score, 6),
                        "threshold": threshold,
                    },
                    index,
                )
                self._events.append(last)
        if last is not None and window is not None and self.capturing:
            rows = np.asarray(window(last_index), dtype=np.float64)
            keep = self.max_window_values // rows.shape[1]  # whole readings within the cap, the latest ones
            if keep > 0:
                values = [[float(f"{v:.6g}") for v in row] for row in rows[-keep:]]
                self._windows.append({"seq": last["seq"], "window": values})

    def to_json(self, windows: bool = True) -> bytes:
        """``{"seq": last sequence number, "events": [oldest .. newest]}``; with ``windows``, captured events carry
        ``window``. UTF-8 (not ASCII escapes): 64 events of the longest stream ids and 16 full windows stay under
        100 kB, within what the agent reads."""
        kept = {w["seq"]: w["window"] for w in self._windows} if windows and self.capturing else {}
        events = [{**e, "window": kept[e["seq"]]} if e["seq"] in kept else e for e in self._events]
        return json.dumps({"seq": self.seq, "events": events}, separators=(",", ":"), ensure_ascii=False).encode()
