"""A load generator that scores against the public port throughout a scenario and counts failed requests.

Each request is ``POST /v1/score`` on a fresh TCP connection (``Connection: close``), like a sensor gateway
posting a batch now and then; ``keep_alive=True`` reuses one connection per worker instead, checking it
was not closed by the server before reusing it (as urllib3 and httpx do); a request that then fails still
counts as failed: there are no retries. Used by the containerd tier and by
bench/bench_agent.py.
"""

from __future__ import annotations

import http.client
import json
import select
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    versions: list[tuple[float, str]] = field(default_factory=list)  # (time, model version) of each success
    latencies: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.ok + self.failed

    def version_counts(self) -> Counter[str]:
        return Counter(v for _, v in self.versions)

    def last_version(self) -> str:
        return self.versions[-1][1] if self.versions else ""


class LoadGenerator:
    """``rate`` requests per second in total, spread over ``workers`` threads, until :meth:`stop`."""

    def __init__(
        self,
        port: int,
        rate: float = 50.0,
        workers: int = 4,
        host: str = "127.0.0.1",
        keep_alive: bool = False,
        timeout_s: float = 5.0,
    ) -> None:
        self.host, self.port = host, port
        self.rate, self.workers = rate, workers
        self.keep_alive = keep_alive
        self.timeout_s = timeout_s
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> LoadGenerator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, args=(i,), daemon=True, name=f"load-{i}")
            thread.start()
            self._threads.append(thread)

    def stop(self) -> LoadResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 5)
        return self.result

    def _work(self, worker: int) -> None:
        interval = self.workers / self.rate
        body = json.dumps({"stream": f"load-{worker}", "readings": [[60.0, 0.5, 3.0], [61.0, 0.52, 3.01]]}).encode()
        headers = {"Content-Type": "application/json"}
        if not self.keep_alive:
            headers["Connection"] = "close"
        conn: http.client.HTTPConnection | None = None
        next_at = time.monotonic() + worker * interval / self.workers
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            # A client that fell behind (slow or failing requests) skips the slots it missed instead of
            # bursting to catch up: the failure count then means "requests at `rate` that failed".
            next_at = max(next_at + interval, time.monotonic())
            started = time.monotonic()
            try:
                if conn is not None and _dropped(conn):
                    # What urllib3/httpx do before reusing a pooled connection: the server closed it.
                    conn.close()
                    conn = None
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
                conn.request("POST", "/v1/score", body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
                version = str(json.loads(data).get("version", ""))
                with self._lock:
                    self.result.ok += 1
                    self.result.versions.append((time.time(), version))
                    self.result.latencies.append(time.monotonic() - started)
            except Exception as exc:  # every failure counts, whatever its kind
                with self._lock:
                    self.result.failed += 1
                    self.result.errors.append(f"{time.time():.3f} {type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                conn = None
            if not self.keep_alive and conn is not None:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """True when the idle connection's socket is readable: the server closed it (EOF) or sent garbage."""
    sock = conn.sock
    if sock is None:
        return True
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)
