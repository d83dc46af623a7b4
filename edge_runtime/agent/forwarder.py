"""A userspace stand-in for the agent's kernel redirect: a TCP forwarder on the public port.

It implements the agent's ``TrafficSwitch`` with the same semantics as the iptables rule: the target is
read when a connection is accepted, so new connections go to the new port at once and open ones stay with
the old service, which drains them. Unlike the kernel redirect it is in the data path (it dies with this
process); the demo's embedded mode uses it where iptables cannot be used.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading


class ProxySwitch:
    """``start()`` binds ``host:public_port``; ``point_to(port)`` sends new connections to ``host:port``."""

    def __init__(self, public_port: int, host: str = "127.0.0.1") -> None:
        self.public_port = public_port
        self.host = host
        self._target: int | None = None
        self._listener: socket.socket | None = None
        self._closed = threading.Event()

    def start(self) -> ProxySwitch:
        listener = socket.create_server((self.host, self.public_port), backlog=256, reuse_port=False)
        self._listener = listener
        threading.Thread(target=self._accept, name=f"proxy-{self.public_port}", daemon=True).start()
        return self

    def target(self) -> int | None:
        return self._target

    def point_to(self, port: int) -> None:
        self._target = port  # one assignment: atomic for the accepting thread

    def remove(self) -> None:
        self._closed.set()
        self._target = None
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread; close() alone does not
            with contextlib.suppress(OSError):
                self._listener.close()

    def _accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        while not self._closed.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by remove()
            target = self._target
            if target is None:
                client.close()  # nothing serves yet: like a redirect to nowhere, the client sees a refusal
                continue
            threading.Thread(target=self._pipe, args=(client, target), daemon=True).start()

    def _pipe(self, client: socket.socket, port: int) -> None:
        try:
            upstream = socket.create_connection((self.host, port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with client, upstream, selectors.DefaultSelector() as sel:
            sel.register(client, selectors.EVENT_READ, upstream)
            sel.register(upstream, selectors.EVENT_READ, client)
            open_ends = 2
            while open_ends and not self._closed.is_set():
                for key, _ in sel.select(timeout=1.0):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    sink: socket.socket = key.data
                    try:
                        data = source.recv(65536)
                    except OSError:
                        data = b""
                    if data:
                        try:
                            sink.sendall(data)
                        except OSError:
                            return
                        continue
                    # One side finished sending: pass the half-close on, keep reading the other side.
                    sel.unregister(source)
                    open_ends -= 1
                    with contextlib.suppress(OSError):
                        sink.shutdown(socket.SHUT_WR)
