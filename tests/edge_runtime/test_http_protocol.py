"""The HTTP protocol on a real socket: the direct score route answers exactly as the ASGI path does.

Each test runs uvicorn in a thread with :class:`edge_runtime.http_protocol.ServiceProtocol`, once with the
direct route and once without it (every request through the ASGI application), and talks raw HTTP/1.1; each
on both event loops the service runs on (uvloop where it is installed, asyncio's own where it is not): their
transports differ (read sizes, write buffering, half-close, abort).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from edge_runtime.bundle import Bundle
from edge_runtime.http_protocol import service_protocol
from edge_runtime.scoring import Scorer
from edge_runtime.server import DirectScoreRoute, ScoringService, create_app
from edge_runtime.settings import ServeSettings
from otaml.ports import free_port
from tests.conftest import require
from tests.fixtures.bundles import synthetic_readings

KEEP_ALIVE_S = 1


class CountingRoute(DirectScoreRoute):
    """The direct route, counting the requests it took (so a test knows which path answered)."""

    opened = 0

    def open(self, headers: list[tuple[bytes, bytes]]) -> Any:
        self.opened += 1
        return super().open(headers)


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    """The event loop uvicorn runs the protocol on."""
    if request.param == "uvloop":
        installed = importlib.util.find_spec("uvloop") is not None
        require(installed, "uvloop", "pip install -c constraints.txt -e '.[serve]'")
    return str(request.param)


@contextlib.contextmanager
def serving(bundle: Bundle, direct: bool, loop: str, **limits: Any) -> Iterator[tuple[int, ScoringService]]:
    settings = ServeSettings(bundle=bundle.path, **limits)
    service = create_app(Scorer.load(bundle, max_streams=settings.max_streams), settings)
    route = service.route = CountingRoute(service) if direct else None  # type: ignore[attr-defined]
    protocol = service_protocol(settings.read_timeout_seconds, route)
    port = free_port()
    config = uvicorn.Config(
        service,
        host="127.0.0.1",
        port=port,
        http=protocol,  # type: ignore[arg-type]
        loop=loop,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        assert time.monotonic() < deadline, "the server did not start in 30 s"
        time.sleep(0.02)
    try:
        yield port, service
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def both(model_bundle: Bundle, loop_kind: str) -> Iterator[tuple[dict[str, int], CountingRoute]]:
    limits = {"max_body_bytes": 4096, "max_batch": 50}
    with (
        serving(model_bundle, True, loop_kind, **limits) as (direct, service),
        serving(model_bundle, False, loop_kind, **limits) as (asgi, _),
    ):
        yield {"direct": direct, "asgi": asgi}, service.route  # type: ignore[attr-defined]


def exchange(port: int, raw: bytes, wait_close: bool = False) -> tuple[bytes, bool]:
    """Send ``raw``; return what came back before the server went quiet (0.5 s) and whether it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(raw)
        conn.settimeout(10 if wait_close else 0.5)
        received = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                return received, False
            if not chunk:
                return received, True
            received += chunk


def responses(raw: bytes) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """Status line, headers (date left out: it is the clock) and body of each response in ``raw``."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = {name.lower(): value for name, value in (line.split(b": ", 1) for line in lines)}
        headers.pop(b"date", None)
        length = int(headers.get(b"content-length", b"0"))
        out.append((status, headers, rest[:length]))
        raw = rest[length:]
    return out


def post(body: bytes, *headers: str, path: str = "/v1/score", version: str = "1.1") -> bytes:
    head = [f"POST {path} HTTP/{version}", "Host: x", *headers]
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def score_body(n: int, stream: str = "s", seed: int = 0) -> bytes:
    return json.dumps({"stream": stream, "readings": synthetic_readings(n, seed=seed).tolist()}).encode()


JSON = "Content-Type: application/json"
CASES = {
    "single reading": post(score_body(1), JSON),
    "batch": post(score_body(20, seed=1), JSON),
    "the stream goes on": post(score_body(3, seed=2), JSON),
    "http/1.0 closes": post(score_body(1, stream="old"), JSON, version="1.0"),
    "query string": post(score_body(1, stream="q"), JSON, path="/v1/score?debug=1"),
    "not json": post(b"{nope", JSON),
    "NaN": post(b'{"stream": "s", "readings": [[NaN, 1, 2]]}', JSON),
    "wrong width": post(b'{"stream": "s", "readings": [[1, 2]]}', JSON),
    "media type": post(score_body(1), "Content-Type: text/plain"),
    "declared too large": post(b"{}", JSON, "Content-Length: 999999"),
    "length not a number": post(b"{}", JSON, "Content-Length: 12x"),
    "chunked past the limit": post(
        b"".join(b"400\r\n" + b"x" * 0x400 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n",
        JSON,
        "Transfer-Encoding: chunked",
    ),
    "chunked within the limit": post(
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(score_body(2)), score_body(2)), JSON, "Transfer-Encoding: chunked"
    ),
    "GET on the route": b"GET /v1/score HTTP/1.1\r\nHost: x\r\n\r\n",
    "expect 100-continue": post(score_body(1, stream="e"), JSON, "Expect: 100-continue"),
}


# Left to the ASGI application, or refused by the HTTP parser before any route (a length that is not a number).
NOT_DIRECT = {"query string", "GET on the route", "length not a number", "expect 100-continue"}


@pytest.mark.parametrize("case", list(CASES))
def test_direct_route_answers_byte_for_byte_as_the_asgi_path(
    both: tuple[dict[str, int], CountingRoute], case: str
) -> None:
    ports, route = both
    if case == "the stream goes on":  # the same stream's history, built the same way on both servers
        for port in ports.values():
            exchange(port, CASES["single reading"])
    opened = route.opened
    seen = {name: exchange(port, CASES[case]) for name, port in ports.items()}
    assert route.opened - opened == (0 if case in NOT_DIRECT else 1), "answered on the wrong path"
    (direct, direct_closed), (asgi, asgi_closed) = seen["direct"], seen["asgi"]
    assert direct, f"{case}: no answer"
    assert responses(direct) == responses(asgi), case
    assert direct_closed == asgi_closed, f"{case}: the connection closed on one path only"


def test_pipelined_requests_are_answered_in_order(both: tuple[dict[str, int], CountingRoute]) -> None:
    ports, _ = both
    burst = CASES["single reading"] + b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n" + post(score_body(2, seed=4), JSON)
    direct, _ = exchange(ports["direct"], burst)
    asgi, _ = exchange(ports["asgi"], burst)
    got = responses(direct)
    assert [status for status, _, _ in got] == [b"HTTP/1.1 200 OK"] * 3
    assert json.loads(got[1][2])["status"] == "ready"
    assert len(json.loads(got[2][2])["scores"]) == 2
    assert got == responses(asgi)


def test_a_late_body_gets_408_and_the_connection_closes(model_bundle: Bundle, loop_kind: str) -> None:
    body = score_body(5)
    with serving(model_bundle, True, loop_kind, read_timeout_seconds=1) as (port, service):
        head = post(body, JSON)[: -len(body)]
        answer, closed = exchange(port, head + body[:10], wait_close=True)
        ((status, headers, error),) = responses(answer)
        assert (status, json.loads(error)["error"]["code"]) == (b"HTTP/1.1 408 Request Timeout", "body_timeout")
        assert closed
        assert headers[b"connection"] == b"close"
        assert service._scoring == 0
        assert 'route="/v1/score",status="408"} 1' in service.metrics.render()


def test_a_client_gone_mid_body_frees_its_slot_and_is_counted(model_bundle: Bundle, loop_kind: str) -> None:
    body = score_body(5)
    with serving(model_bundle, True, loop_kind, max_concurrent_scores=1) as (port, service):
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(post(body, JSON)[:-20])  # the head and most of the body
            busy, closed = exchange(port, CASES["single reading"])  # the one slot is taken
            ((status, headers, error),) = responses(busy)
            assert status == b"HTTP/1.1 503 Service Unavailable"
            assert closed
            assert json.loads(error)["error"]["code"] == "busy"
            assert headers[b"retry-after"] == b"1"
        deadline = time.monotonic() + 10
        while service._scoring and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service._scoring == 0  # the slot came back when the client left
        answer, _ = exchange(port, CASES["single reading"])
        assert responses(answer)[0][0] == b"HTTP/1.1 200 OK"
        metrics = service.metrics.render()
        assert 'route="/v1/score",status="499"} 1' in metrics
        assert 'route="/v1/score",status="503"} 1' in metrics
        assert 'route="/v1/score",status="200"} 1' in metrics  # each request counted once


def test_a_kept_alive_connection_closes_when_idle_and_serves_until_then(model_bundle: Bundle, loop_kind: str) -> None:
    with serving(model_bundle, True, loop_kind) as (port, _), socket.create_connection(("127.0.0.1", port)) as conn:
        conn.settimeout(10)
        for seed in range(3):  # one connection, several requests
            conn.sendall(post(score_body(1, seed=seed), JSON))
            assert conn.recv(65536).startswith(b"HTTP/1.1 200 OK")
        started = time.monotonic()
        assert conn.recv(65536) == b""  # closed by the server once idle
        assert time.monotonic() - started >= KEEP_ALIVE_S * 0.9


def test_token_is_required_on_the_direct_route(model_bundle: Bundle, tmp_path: Path, loop_kind: str) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-0123456789abcdef\n")
    token.chmod(0o600)
    with serving(model_bundle, True, loop_kind, api_token_file=token) as (port, _):
        refused, closed = exchange(port, CASES["single reading"])
        ((status, headers, _),) = responses(refused)
        assert status == b"HTTP/1.1 401 Unauthorized"
        assert closed
        assert headers[b"www-authenticate"] == b'Bearer realm="otaml"'
        wrong, _ = exchange(port, post(score_body(1), JSON, "Authorization: Bearer s3cret-0123456789abcde"))
        assert responses(wrong)[0][0] == b"HTTP/1.1 401 Unauthorized"
        allowed, _ = exchange(port, post(score_body(1), JSON, "Authorization: Bearer s3cret-0123456789abcdef"))
        assert responses(allowed)[0][0] == b"HTTP/1.1 200 OK"


def test_request_heads_have_a_deadline_on_a_kept_alive_connection(model_bundle: Bundle, loop_kind: str) -> None:
    with (
        serving(model_bundle, True, loop_kind, read_timeout_seconds=1) as (port, _),
        socket.create_connection(("127.0.0.1", port)) as conn,
    ):
        conn.settimeout(10)
        conn.sendall(CASES["single reading"])
        assert re.match(rb"HTTP/1.1 200 OK", conn.recv(65536))
        conn.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\n")  # and never the rest of the head
        assert conn.recv(65536) == b""


class StuckTransport(asyncio.Transport):
    """A transport whose earlier answers were never read: once closed it stays closing and never reports lost."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True  # asyncio keeps the connection until its write buffer drains: here, never

    def abort(self) -> None:
        self.closing = self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1234) if name in ("peername", "sockname") else default

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


@pytest.mark.parametrize("closed_by", ["half-close", "a refused chunk"])
def test_a_slot_held_by_a_closing_connection_is_freed(model_bundle: Bundle, closed_by: str, loop_kind: str) -> None:
    """A client that stops reading, then half-closes (or sends a chunk the parser refuses) mid-body: the body's
    deadline or the EOF frees its score slot, though the connection is never reported lost."""
    settings = ServeSettings(bundle=model_bundle.path, read_timeout_seconds=1, max_concurrent_scores=1)
    service = create_app(Scorer.load(model_bundle, max_streams=settings.max_streams), settings)
    config = uvicorn.Config(service, lifespan="off", log_config=None)
    config.load()
    loop = asyncio.new_event_loop() if loop_kind == "asyncio" else importlib.import_module("uvloop").new_event_loop()
    try:
        protocol = service_protocol(1, DirectScoreRoute(service))(config, ServerState(), {}, _loop=loop)
        transport = StuckTransport()
        protocol.connection_made(transport)
        if closed_by == "half-close":
            protocol.data_received(post(score_body(1), JSON)[:-5])
            assert service._scoring == 1
            protocol.eof_received()
            transport.close()  # what asyncio does when eof_received returns None
        else:
            head = post(b"", JSON, "Transfer-Encoding: chunked")
            protocol.data_received(head + b"5\r\n[[1,2\r\nzz\r\n")  # a chunk size that is not hex
            assert transport.closing
        loop.run_until_complete(asyncio.sleep(2.5))  # past the body's deadline and the timer's re-check
        assert service._scoring == 0
        metrics = service.metrics.render()
        if closed_by == "half-close":
            assert 'route="/v1/score",status="499"} 1' in metrics
        else:
            assert 'route="/v1/score",status="408"} 1' in metrics
            assert transport.aborted  # the unread answers are dropped with the connection
    finally:
        loop.close()


def test_a_cancelled_asgi_score_request_frees_its_slot(model_bundle: Bundle) -> None:
    """uvicorn cancels what is still running when the drain time runs out: the ASGI path's slot comes back."""
    settings = ServeSettings(bundle=model_bundle.path, max_concurrent_scores=1)
    service = create_app(Scorer.load(model_bundle, max_streams=settings.max_streams), settings)
    scope = {"type": "http", "method": "POST", "path": "/v1/score", "headers": [(b"content-type", b"application/json")]}

    async def never() -> dict[str, Any]:
        await asyncio.Event().wait()  # the body never comes
        raise AssertionError

    async def send(message: Any) -> None:
        raise AssertionError(f"nothing is answered, got {message}")

    async def cancelled_mid_body() -> None:
        task = asyncio.create_task(service(scope, never, send))
        await asyncio.sleep(0.1)
        assert service._scoring == 1
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(cancelled_mid_body())
    assert service._scoring == 0
