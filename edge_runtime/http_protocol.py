"""uvicorn's httptools protocol with a deadline on every request head.

uvicorn bounds the idle time between requests (keep-alive) but not the time a client takes to send a request's
head: a client that connects and sends nothing, or a byte now and then ("slowloris"), holds its connection and
buffer forever. Here each head must be complete within ``timeout_s`` of the connection opening or of the
request's first byte; otherwise the connection is closed. The request body has its own deadline in
:mod:`edge_runtime.score_endpoint`.

Reads are also capped at ``READ_CHUNK`` bytes per ``recv`` (asyncio's default is 256 KiB). A burst of many
connections that each send most of a large body lands in one event-loop iteration, before any request handler
runs: with 256 KiB reads, 200 such connections held ~40 MB at once (the service peaked at 95–101 MB against its
100 MB limit); with 16 KiB reads they hold ~3 MB, and uvicorn's flow control pauses each one after 64 KiB.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

READ_CHUNK = 16 * 1024


class HeadDeadlineProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` that closes a connection whose request head is not complete in time."""

    timeout_s: float = 5.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        if hasattr(transport, "max_size"):  # asyncio's selector transport: bytes read per recv()
            transport.max_size = READ_CHUNK
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # the next request on a kept-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expire(self) -> None:
        self._head_timer = None
        self.transport.close()


def with_head_deadline(timeout_s: float) -> type[HeadDeadlineProtocol]:
    """The protocol class to hand to uvicorn (``Config(http=...)``) for a ``timeout_s`` deadline."""
    return type("HeadDeadlineProtocol", (HeadDeadlineProtocol,), {"timeout_s": float(timeout_s)})
