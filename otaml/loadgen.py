"""The one load generator: open-loop ``POST /v1/score`` at a fixed rate, counted per phase.

Used by ``otaml demo``, the containerd test tier and the benches. Open loop: slot ``k`` is due at
``start + k / rate`` whatever happened to earlier requests, so an outage cannot slow the load down and hide
itself. A pool of ``workers`` threads takes the slots in order; a slot no worker could send within
``max_lag_s`` of its due time (every worker stuck on a hanging request) is **missed**, and a missed slot
counts as a failure: it is never skipped. Every other failure counts too, whatever its kind (refused, reset,
timeout, non-200, a body without a version); there are no retries.

A **phase** is a named interval the caller marks with :meth:`LoadGenerator.mark`: a sent request belongs to
the phase that was current when it completed (answered or failed), a missed slot to the phase current at its due
time, and phases marked more than once add up. Each phase reports
``sent`` (requests sent), ``ok`` (200 with a version), ``failed`` (slots without a 200: failed requests
*and* missed slots) and ``missed`` (slots never sent); always ``ok + failed == slots`` and
``sent == slots - missed``.

Example::

    from otaml.loadgen import LoadGenerator

    with LoadGenerator(8080, readings=[[61.2, 0.41, 7.9, 3.02], [61.5, 0.40, 8.0, 3.01]], rate=50) as load:
        load.mark("steady")
        time.sleep(5)
        load.mark("update")
        move_the_channel_and_wait()
        load.mark("after")
        time.sleep(2)
    report = load.report()
    report.phase("update").failed      # failures (missed slots included) while the update ran
    report.to_dict()                   # {"rate": 50.0, "phases": {"steady": {"slots": ..., "sent": ..., ...}}, ...}

Times are ``time.monotonic()`` seconds. Connections: one per request (``Connection: close``, a gateway posting
now and then), or with ``keep_alive=True`` one per worker, checked before reuse as urllib3 and httpx do.
"""

from __future__ import annotations

import bisect
import http.client
import json
import math
import select
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

DEFAULT_PHASE = "start"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One slot: ``status`` is ``ok``, ``failed`` (sent, no 200) or ``missed`` (never sent)."""

    due: float  # monotonic time the slot was due
    phase: str
    status: str
    version: str = ""  # the model version that answered ("" unless ok)
    error: str = ""
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class PhaseCounts:
    """Counts of one phase (or of the whole run). ``failed`` includes ``missed``."""

    slots: int = 0
    sent: int = 0
    ok: int = 0
    failed: int = 0
    missed: int = 0

    def add(self, outcome: Outcome) -> None:
        self.slots += 1
        if outcome.status == "missed":
            self.missed += 1
            self.failed += 1
        else:
            self.sent += 1
            if outcome.ok:
                self.ok += 1
            else:
                self.failed += 1


@dataclass
class LoadReport:
    """What a run (so far) did: counts per phase in marking order, the total, versions seen, first errors."""

    rate: float
    phases: dict[str, PhaseCounts] = field(default_factory=dict)
    total: PhaseCounts = field(default_factory=PhaseCounts)
    versions: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # the first few, "<phase> +<s> <error>"

    def phase(self, name: str) -> PhaseCounts:
        """The counts of ``name`` (all zero when it was never marked or had no slot)."""
        return self.phases.get(name, PhaseCounts())

    def to_dict(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "phases": {name: asdict(counts) for name, counts in self.phases.items()},
            "total": asdict(self.total),
            "versions": dict(self.versions),
            "errors": list(self.errors),
        }


class LoadGenerator:
    """``rate`` scoring requests per second on ``host:port`` from :meth:`start` until :meth:`stop`.

    ``readings``: rows in the model's sensor order; each request sends ``batch`` consecutive rows (walking
    through them) on the worker's own stream (or on ``streams`` stream ids in turn, to fill a device's
    stream table). ``path`` and ``body`` aim it at another server (a fixed JSON body; any 200 is ok).
    Thread-safe: read :meth:`report`, :meth:`outcomes` while it runs.
    """

    def __init__(
        self,
        port: int,
        readings: Sequence[Sequence[float]],
        *,
        rate: float = 50.0,
        workers: int = 4,
        host: str = "127.0.0.1",
        batch: int = 2,
        keep_alive: bool = False,
        timeout_s: float = 5.0,
        max_lag_s: float = 1.0,
        phase: str = DEFAULT_PHASE,
        streams: int = 0,
        path: str = "/v1/score",
        body: Mapping[str, Any] | None = None,
    ) -> None:
        if rate <= 0 or workers < 1 or batch < 1 or timeout_s <= 0 or max_lag_s <= 0:
            raise ValueError(
                "LoadGenerator needs rate > 0, workers >= 1, batch >= 1, timeout_s > 0 and max_lag_s > 0; got "
                f"rate={rate!r}, workers={workers!r}, batch={batch!r}, timeout_s={timeout_s!r}, "
                f"max_lag_s={max_lag_s!r}."
            )
        rows = [[float(v) for v in row] for row in readings]
        if not rows and body is None:
            raise ValueError("LoadGenerator needs at least one reading (a row in the model's sensor order).")
        self.host, self.port = host, port
        self.rate, self.workers, self.batch = float(rate), workers, batch
        self.keep_alive = keep_alive
        self.timeout_s, self.max_lag_s = timeout_s, max_lag_s
        self._rows = rows
        self.streams, self.path = streams, path
        # A fixed body for another server (e.g. mlflow's /invocations): any 200 counts as ok.
        self._fixed_body = json.dumps(body).encode() if body is not None else None
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._mark_times: list[float] = [-math.inf]
        self._mark_names: list[str] = [phase]
        self._next_slot = 0
        self._t0 = 0.0
        self._stop = threading.Event()
        self._stop_at = math.inf
        self._threads: list[threading.Thread] = []

    # ── control ───────────────────────────────────────────────────────────────────────────────────
    def start(self) -> LoadGenerator:
        if self._threads:
            raise RuntimeError("LoadGenerator.start() was already called; make a new one for another run.")
        self._t0 = time.monotonic()
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, args=(i,), daemon=True, name=f"otaml-load-{i}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> LoadReport:
        """Stop sending; wait for requests in flight; count slots due before now that nobody sent as missed."""
        if self._threads and not self._stop.is_set():
            self._stop_at = time.monotonic()
            self._stop.set()
            for thread in self._threads:
                thread.join(timeout=2 * self.timeout_s + 5)
            with self._lock:
                last_due = math.ceil((self._stop_at - self._t0) * self.rate)  # slots k < last_due were due
                for k in range(self._next_slot, last_due):
                    self._record_locked(Outcome(self._due(k), self._phase_at(self._due(k)), "missed"))
                self._next_slot = max(self._next_slot, last_due)
        return self.report()

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def mark(self, phase: str) -> None:
        """Slots due from now on count in ``phase`` (until the next mark)."""
        with self._lock:
            self._mark_times.append(time.monotonic())
            self._mark_names.append(phase)

    @contextmanager
    def phase(self, name: str, then: str = "between") -> Iterator[None]:
        """``with load.phase("update"): ...`` marks ``name`` on entry and ``then`` on exit."""
        self.mark(name)
        try:
            yield
        finally:
            self.mark(then)

    # ── reading ───────────────────────────────────────────────────────────────────────────────────
    @property
    def started_at(self) -> float:
        """When slot 0 was due (monotonic); 0.0 before :meth:`start`."""
        return self._t0

    def report(self, max_errors: int = 10) -> LoadReport:
        with self._lock:
            outcomes = list(self._outcomes)
            names = list(dict.fromkeys(self._mark_names))
        report = LoadReport(self.rate, {name: PhaseCounts() for name in names})
        for o in outcomes:
            report.phases[o.phase].add(o)
            report.total.add(o)
            if o.ok:
                report.versions[o.version] += 1
            elif len(report.errors) < max_errors:
                report.errors.append(f"{o.phase} +{o.due - self._t0:.3f}s {o.error or o.status}")
        return report

    def outcomes(self, start: float = -math.inf, end: float = math.inf) -> list[Outcome]:
        """Slots due in ``[start, end]`` (monotonic), in the order they were settled."""
        with self._lock:
            return [o for o in self._outcomes if start <= o.due <= end]

    def first_answer(self, version: str, since: float = -math.inf) -> float | None:
        """The due time of the first slot after ``since`` that ``version`` answered, or None."""
        times = [o.due for o in self.outcomes(since) if o.ok and o.version == version]
        return min(times) if times else None

    def last_version(self) -> str:
        """The version of the latest-due slot answered, "" when none was."""
        ok = [o for o in self.outcomes() if o.ok]
        return max(ok, key=lambda o: o.due).version if ok else ""

    # ── workers ───────────────────────────────────────────────────────────────────────────────────
    def _due(self, k: int) -> float:
        return self._t0 + k / self.rate

    def _phase_at(self, t: float) -> str:
        return self._mark_names[bisect.bisect_right(self._mark_times, t) - 1]

    def _record_locked(self, outcome: Outcome) -> None:
        self._outcomes.append(outcome)

    def _take_slot(self) -> int:
        with self._lock:
            k = self._next_slot
            self._next_slot += 1
            return k

    def _body(self, k: int, worker: int, n: int) -> bytes:
        rows = [self._rows[(k * self.batch + j) % n] for j in range(self.batch)]
        stream = f"load-{k % self.streams}" if self.streams else f"load-{worker}"
        return json.dumps({"stream": stream, "readings": rows}).encode()

    def _work(self, worker: int) -> None:
        headers = {"Content-Type": "application/json"}
        if not self.keep_alive:
            headers["Connection"] = "close"
        conn: http.client.HTTPConnection | None = None
        n = len(self._rows)
        try:
            while True:
                k = self._take_slot()
                due = self._due(k)
                delay = due - time.monotonic()
                if (delay > 0 and self._stop.wait(delay)) or due >= self._stop_at:
                    return  # not due before stop: not part of the run
                late = time.monotonic() - due
                with self._lock:
                    phase = self._phase_at(due)
                if late > self.max_lag_s:
                    with self._lock:
                        self._record_locked(Outcome(due, phase, "missed", error=f"missed: sent {late:.2f} s late"))
                    continue
                body = self._fixed_body or self._body(k, worker, n)
                sent = time.monotonic()
                try:
                    if conn is not None and _dropped(conn):
                        conn.close()  # the server closed the idle connection: reconnect, as urllib3/httpx do
                        conn = None
                    if conn is None:
                        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
                    conn.request("POST", self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
                    version = json.loads(data).get("version") if self._fixed_body is None else "-"
                    if not version:
                        raise RuntimeError(f"200 without a model version: {data[:200]!r}")
                    outcome = Outcome(due, phase, "ok", str(version), latency_s=time.monotonic() - sent)
                except Exception as exc:  # every failure counts, whatever its kind
                    outcome = Outcome(due, phase, "failed", error=f"{type(exc).__name__}: {exc}")
                    if conn is not None:
                        conn.close()
                    conn = None
                if not self.keep_alive and conn is not None:
                    conn.close()
                    conn = None
                with self._lock:
                    # A sent request counts in the phase current when it completed: one that a fault in a
                    # new phase breaks mid-flight is that phase's failure, not the previous one's.
                    self._record_locked(replace(outcome, phase=self._phase_at(time.monotonic())))
        finally:
            if conn is not None:
                conn.close()


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """True when the idle connection's socket is readable: the server closed it (EOF) or sent garbage."""
    sock = conn.sock
    if sock is None:
        return True
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)
