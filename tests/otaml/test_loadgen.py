"""The load generator against a real HTTP server in a thread: per-phase counts, failures of every kind, missed slots."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from otaml.loadgen import LoadGenerator, LoadReport
from otaml.ports import free_port

ROWS = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]


class Service:
    """A scoring endpoint stand-in: answers ``version`` (``mode`` ok), 500 (``error``) or nothing (``hang``)."""

    def __init__(self) -> None:
        service = self
        self.mode = "ok"
        self.version = "1"
        self.bodies: list[dict[str, object]] = []
        self.connections = 0
        self.release = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                service.connections += 1

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                service.bodies.append(json.loads(body))
                if service.mode == "hang":
                    service.release.wait(30)
                    return
                status, data = (200, {"version": service.version}) if service.mode == "ok" else (500, {"e": "x"})
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def service() -> Iterator[Service]:
    s = Service()
    yield s
    s.close()


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def consistent(report: LoadReport) -> None:
    for counts in [*report.phases.values(), report.total]:
        assert counts.ok + counts.failed == counts.slots
        assert counts.sent == counts.slots - counts.missed
    assert report.total.slots == sum(c.slots for c in report.phases.values())


def test_counts_each_phase_on_its_own(service: Service) -> None:
    # One worker: slots settle in order, so once a slot of phase "b" is recorded every slot of "a" is too.
    load = LoadGenerator(service.port, ROWS, rate=100, workers=1, phase="a")
    with load:
        wait_for(lambda: load.report().phase("a").ok >= 5, "5 answers in phase a")
        load.mark("b")
        wait_for(lambda: load.report().phase("b").sent >= 1, "a request of phase b")
        service.mode = "error"
        wait_for(lambda: load.report().phase("b").failed >= 3, "3 failures in phase b")
        with load.phase("c", then="d"):
            service.mode = "ok"
            service.version = "2"
            wait_for(lambda: load.report().phase("c").ok >= 1, "an answer in phase c")
    report = load.report()
    consistent(report)
    assert list(report.phases) == ["a", "b", "c", "d"]
    a, b = report.phase("a"), report.phase("b")
    assert (a.failed, a.missed) == (0, 0)
    assert a.ok == a.slots >= 5
    assert b.failed >= 3
    assert b.missed == 0
    assert report.phase("never-marked").slots == 0
    assert report.versions["1"] >= 5
    assert report.versions["2"] >= 1
    assert load.last_version() == "2"
    first_2 = load.first_answer("2")
    assert first_2 is not None
    assert first_2 >= (load.first_answer("1") or 0)
    assert all("HTTP 500" in e for e in report.errors if e.startswith("b "))
    assert report.to_dict()["phases"]["a"]["failed"] == 0
    # Each request carries `batch` consecutive rows on the worker's own stream.
    assert service.bodies[0] == {"stream": "load-0", "readings": [ROWS[0], ROWS[1]]}
    assert service.bodies[1]["readings"] == [ROWS[2], ROWS[0]]


def test_a_refused_port_fails_every_slot_and_misses_none() -> None:
    load = LoadGenerator(free_port(), ROWS, rate=50, workers=2, timeout_s=2)
    with load:
        wait_for(lambda: load.report().total.failed >= 5, "5 failures")
    report = load.report()
    consistent(report)
    assert report.total.ok == 0
    assert report.total.failed == report.total.slots == report.total.sent
    assert "ConnectionRefusedError" in report.errors[0]


def test_a_hanging_service_misses_slots_and_counts_them_as_failures(service: Service) -> None:
    service.mode = "hang"
    # One worker stuck for timeout_s = 0.5 s cannot send the slots due meanwhile (max_lag_s 0.1): missed.
    load = LoadGenerator(service.port, ROWS, rate=40, workers=1, timeout_s=0.5, max_lag_s=0.1)
    with load:
        wait_for(lambda: load.report().total.missed >= 5, "5 missed slots")
        service.release.set()
    report = load.report()
    consistent(report)
    assert report.total.ok == 0
    assert report.total.failed == report.total.slots
    assert report.total.missed >= 5
    assert report.total.sent >= 1


def test_slots_due_while_every_worker_hangs_are_missed_at_stop(service: Service) -> None:
    service.mode = "hang"
    load = LoadGenerator(service.port, ROWS, rate=100, workers=1, timeout_s=30, max_lag_s=0.05)
    load.start()
    wait_for(lambda: len(service.bodies) >= 1, "the first request")
    wait_for(lambda: time.monotonic() - load.started_at > 0.15, "slots falling due behind the hanging one")
    threading.Timer(0.2, service.release.set).start()  # the hanging request ends (unanswered) after stop()
    report = load.stop()
    consistent(report)
    assert report.total.sent == 1
    assert report.total.missed == report.total.slots - 1 >= 10


def test_keep_alive_reuses_one_connection_per_worker(service: Service) -> None:
    load = LoadGenerator(service.port, ROWS, rate=100, workers=2, keep_alive=True)
    with load:
        wait_for(lambda: load.report().total.ok >= 20, "20 answers")
    assert load.report().total.failed == 0
    assert service.connections == 2


def test_one_connection_per_request_by_default(service: Service) -> None:
    load = LoadGenerator(service.port, ROWS, rate=100, workers=2)
    with load:
        wait_for(lambda: load.report().total.ok >= 10, "10 answers")
    assert service.connections == load.report().total.sent


@pytest.mark.parametrize(
    "kwargs", [{"rate": 0}, {"workers": 0}, {"batch": 0}, {"timeout_s": 0}, {"max_lag_s": -1}, {"readings": []}]
)
def test_bad_settings_are_refused_with_the_value(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"readings": ROWS, **kwargs}
    with pytest.raises(ValueError, match="LoadGenerator needs"):
        LoadGenerator(1, **args)  # type: ignore[arg-type]


def test_a_request_broken_in_flight_counts_in_the_phase_that_broke_it(service: Service) -> None:
    """A fault marked while requests hang is charged to the fault's phase, not to the phase they were due in."""
    service.mode = "hang"
    load = LoadGenerator(service.port, ROWS, rate=5, workers=1, timeout_s=30, max_lag_s=30)
    with load:
        wait_for(lambda: len(service.bodies) >= 1, "a request in flight")
        load.mark("fault")
        service.mode = "error"
        service.release.set()  # the hanging request now ends without an answer
        wait_for(lambda: load.report().total.failed >= 1, "the broken request counted")
    report = load.report()
    consistent(report)
    assert report.phases["start"].failed == 0
    assert report.phases["fault"].failed >= 1
