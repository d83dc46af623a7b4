"""The demo's load generator: threads posting ``/v1/score`` to the device's public port the whole time.

Every request is a fresh connection (a gateway posting now and then) and every failure counts, whatever its
kind (refused, reset, timeout, non-200): no retries. Each outcome is kept with its time, so the demo counts
the failures inside any window (a hand-over) and finds when a version first answered.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    at: float  # time.monotonic() when the request was sent
    ok: bool
    version: str  # the model version that answered ("" on failure)
    error: str = ""


class LoadGenerator:
    """``rate`` requests per second in total over ``workers`` threads until :meth:`stop`; thread-safe reads."""

    def __init__(
        self,
        port: int,
        readings: Sequence[Sequence[float]],
        *,
        rate: float = 40.0,
        workers: int = 4,
        host: str = "127.0.0.1",
        timeout_s: float = 5.0,
    ) -> None:
        self.host, self.port = host, port
        self.rate, self.workers = rate, workers
        self.timeout_s = timeout_s
        self._readings = [list(map(float, r)) for r in readings] or [[0.0]]
        self._outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> LoadGenerator:
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, args=(i,), daemon=True, name=f"demo-load-{i}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 5)

    def outcomes(self, start: float = float("-inf"), end: float = float("inf")) -> list[Outcome]:
        with self._lock:
            return [o for o in self._outcomes if start <= o.at <= end]

    def first_answer(self, version: str, since: float) -> float | None:
        """When a request sent after ``since`` was first answered by ``version`` (monotonic), or None."""
        return next((o.at for o in self.outcomes(since) if o.ok and o.version == version), None)

    def last_version(self) -> str:
        ok = [o for o in self.outcomes() if o.ok]
        return ok[-1].version if ok else ""

    def _work(self, worker: int) -> None:
        interval = self.workers / self.rate
        headers = {"Content-Type": "application/json", "Connection": "close"}
        n = len(self._readings)
        next_at = time.monotonic() + worker * interval / self.workers
        i = worker
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            next_at += interval
            # Two consecutive readings per request, walking through the set: realistic values, varying windows.
            body = json.dumps(
                {"stream": f"demo-{worker}", "readings": [self._readings[i % n], self._readings[(i + 1) % n]]}
            )
            i += 2
            sent = time.monotonic()
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            try:
                conn.request("POST", "/v1/score", body=body.encode(), headers=headers)
                response = conn.getresponse()
                data = response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
                outcome = Outcome(sent, True, str(json.loads(data).get("version", "")))
            except Exception as exc:  # every failure counts, whatever its kind
                outcome = Outcome(sent, False, "", f"{type(exc).__name__}: {exc}")
            finally:
                conn.close()
            with self._lock:
                self._outcomes.append(outcome)
