"""uvicorn's httptools protocol with deadlines on request heads and a direct route for the hot path.

**Deadlines.** uvicorn bounds the idle time between requests (keep-alive) but not the time a client takes to
send a request's head: a client that connects and sends nothing, or a byte now and then ("slowloris"), holds
its connection and buffer forever. Here each head must be complete within ``timeout_s`` of the connection
opening or of the request's first byte; otherwise the connection is closed. Deadlines are kept as a time on
the connection and checked by one timer that re-arms itself only when it fires early, so a request on a
kept-alive connection schedules no timer (uvicorn's keep-alive timer, this head deadline and the body's
``asyncio.timeout`` made three timer handles per request). That holds while the keep-alive idle time and the
read timeout are equal (5 s each by default); otherwise the shorter deadline re-arms the timer once per request.

**Direct route.** ``POST <route.path>`` (the score route) is answered by the protocol itself: the body is
collected here (capped at the route's limit, within its deadline) and handed to the route synchronously when
complete, and the answer goes out in one write. It skips what a request costs in uvicorn's ASGI cycle — an
asyncio task, an event, the receive/send coroutines, the head and the body as two socket writes, a keep-alive
timer (``docs/footprint.md`` has the figures). The route answers exactly as the ASGI application would (the
same code decides, and tests compare the two byte for byte). Every other request goes the ASGI way, and so
does a score request with a query string, ``Expect: 100-continue``, a pipelined predecessor still in progress
or a full write buffer.

Reads are also capped at ``READ_CHUNK`` bytes per ``recv`` (asyncio's default is 256 KiB). A burst of many
connections that each send most of a large body lands in one event-loop iteration, before any request handler
runs: with 256 KiB reads, 200 such connections held ~40 MB at once (the service peaked at 95–101 MB against its
100 MB limit); with 16 KiB reads they hold ~3 MB. A direct request's body is buffered here up to the route's
limit, and only requests holding one of the route's slots get that far (the others are refused on their
headers and closed): at most slots × limit (16 × 256 KiB by default), plus one copy while it is scored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

READ_CHUNK = 16 * 1024
CLOSE = (b"connection", b"close")


class Reply(NamedTuple):
    """An answer: status, JSON body and extra headers (``connection: close`` among them closes the connection)."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


class DirectRequest(Protocol):
    """A request its route accepted on its headers; exactly one of these is called."""

    def answer(self, body: bytes) -> Reply: ...

    def too_large(self) -> Reply: ...

    def timed_out(self) -> Reply: ...

    def gone(self) -> None: ...


class DirectRoute(Protocol):
    """What the protocol answers itself: ``POST path``, bodies up to ``max_body`` within ``body_timeout_s``."""

    path: bytes
    max_body: int
    body_timeout_s: float

    def open(self, headers: list[tuple[bytes, bytes]]) -> DirectRequest | Reply: ...


class ServiceProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with request-head deadlines and the service's direct route."""

    timeout_s: float = 5.0
    route: DirectRoute | None = None

    _deadline: float | None = None
    _on_deadline: Callable[[], None] | None = None
    _timer: asyncio.TimerHandle | None = None
    _direct: DirectRequest | None = None  # a direct request whose body is arriving
    _answered = False  # the current message was answered directly: ignore the rest of it
    _closing = False  # graceful shutdown asked while a direct body was arriving
    _limit = 0  # the direct request's body limit

    def connection_made(self, transport: Any) -> None:
        if hasattr(transport, "max_size"):  # asyncio's selector transport: bytes read per recv()
            transport.max_size = READ_CHUNK
        super().connection_made(transport)
        self._body = bytearray()
        self._until(self.timeout_s, self._close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        direct, self._direct = self._direct, None
        if direct is not None:  # the client left before its body was complete
            direct.gone()
        super().connection_lost(exc)

    # ── parser callbacks ──────────────────────────────────────────────────────────────────────────
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._answered = False
        self._until(self.timeout_s, self._close)

    def on_headers_complete(self) -> None:
        self._deadline = None
        route = self.route
        if (
            route is not None
            and self.url == route.path
            and self.parser.get_method() == b"POST"
            and not self.expect_100_continue
            and not self.parser.should_upgrade()
            and (self.cycle is None or self.cycle.response_complete)
            and not self.flow.write_paused
        ):
            self._open(route)
        else:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        direct = self._direct
        if direct is not None:
            self._body += body
            if len(self._body) > self._limit:
                self._reply(direct.too_large())
        elif not self._answered:
            super().on_body(body)

    def on_message_complete(self) -> None:
        direct = self._direct
        if direct is not None:
            body = bytes(self._body)
            self._reply(direct.answer(body))
        elif not self._answered:
            super().on_message_complete()

    def eof_received(self) -> None:
        direct, self._direct = self._direct, None
        if direct is not None:  # half-closed before its body was complete: it never will be
            direct.gone()
        super().eof_received()

    # ── server callbacks ──────────────────────────────────────────────────────────────────────────
    def shutdown(self) -> None:
        if self._direct is not None:
            self._closing = True  # answer the request in progress, then close
        else:
            super().shutdown()

    # ── the direct route ──────────────────────────────────────────────────────────────────────────
    def _open(self, route: DirectRoute) -> None:
        self._answered = True
        if self.transport.is_closing():
            return
        opened = route.open(self.headers)
        if isinstance(opened, tuple):
            self._respond(opened)
            return
        self._direct = opened
        self._limit = route.max_body
        self._body.clear()
        self._until(route.body_timeout_s, self._body_late)

    def _reply(self, reply: Reply) -> None:
        self._direct = None
        self._deadline = None
        self._body.clear()
        self._respond(reply)

    def _respond(self, reply: Reply) -> None:
        status, body, headers = reply
        close = (
            self._closing
            or CLOSE in headers
            or not (self.parser.get_http_version() == "1.1" and self.parser.should_keep_alive())
        )
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += (name, b": ", value, b"\r\n")
        content += (b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(), b"\r\n")
        for name, value in headers:
            content += (name, b": ", value, b"\r\n")
        if close and CLOSE not in headers:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", body)
        self.transport.write(b"".join(content))
        self.server_state.total_requests += 1
        if close:
            self.transport.close()
        else:
            self._until(self.timeout_keep_alive, self._close)

    def _body_late(self) -> None:
        if self._direct is not None:
            closing = self.transport.is_closing()
            self._reply(self._direct.timed_out())
            if closing:  # its earlier answers were never read: drop them with the connection
                self.transport.abort()

    # ── deadlines ─────────────────────────────────────────────────────────────────────────────────
    def _until(self, seconds: float, then: Callable[[], None]) -> None:
        """Call ``then`` unless something moves or clears the deadline within ``seconds``."""
        deadline = self._deadline = self.loop.time() + seconds
        self._on_deadline = then
        timer = self._timer
        if timer is not None and timer.when() > deadline:  # a shorter deadline than the one armed
            timer.cancel()
            timer = None
        if timer is None:
            self._timer = self.loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        deadline = self._deadline
        # A closing transport needs no deadline, unless a direct request still holds a score slot: a client that
        # half-closed, or stopped reading its earlier answers, would otherwise keep that slot until it leaves.
        if deadline is None or (self.transport.is_closing() and self._direct is None):
            return
        if self.loop.time() < deadline:  # moved since this timer was armed: wait for the new one
            self._timer = self.loop.call_at(deadline, self._check_deadline)
            return
        self._deadline = None
        if self._on_deadline is not None:
            self._on_deadline()

    def _close(self) -> None:
        self.transport.close()


def service_protocol(timeout_s: float, route: DirectRoute | None = None) -> type[ServiceProtocol]:
    """The protocol class to hand to uvicorn (``Config(http=...)``): a ``timeout_s`` head deadline, ``route``."""
    return type("ServiceProtocol", (ServiceProtocol,), {"timeout_s": float(timeout_s), "route": route})
