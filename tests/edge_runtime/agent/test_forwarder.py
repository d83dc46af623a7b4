"""The embedded mode's traffic switch: new connections follow ``point_to``, open ones stay where they were."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator

import pytest

from edge_runtime.agent.forwarder import ProxySwitch
from otaml.ports import free_port


class Backend:
    """Answers each line with ``<name>:<line>`` until the client closes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as f:
            for line in f:
                f.write(f"{self.name}:".encode() + line)
                f.flush()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def backends() -> Iterator[tuple[Backend, Backend]]:
    a, b = Backend("a"), Backend("b")
    yield a, b
    a.close()
    b.close()


def ask(f: io.BufferedIOBase, text: str) -> str:
    f.write(text.encode() + b"\n")
    f.flush()
    return f.readline().decode().strip()


def test_new_connections_follow_the_switch_open_ones_stay(backends: tuple[Backend, Backend]) -> None:
    a, b = backends
    switch = ProxySwitch(free_port()).start()
    try:
        assert switch.target() is None
        switch.point_to(a.port)
        old = socket.create_connection(("127.0.0.1", switch.public_port), timeout=5)
        old_f = old.makefile("rwb")
        assert ask(old_f, "one") == "a:one"
        switch.point_to(b.port)
        assert switch.target() == b.port
        with socket.create_connection(("127.0.0.1", switch.public_port), timeout=5) as new, new.makefile("rwb") as f:
            assert ask(f, "two") == "b:two"
        assert ask(old_f, "three") == "a:three"  # the open connection still reaches the old service
        old_f.close()
        old.close()
    finally:
        switch.remove()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", switch.public_port), timeout=2).close()


def test_without_a_target_clients_are_closed_not_hung() -> None:
    switch = ProxySwitch(free_port()).start()
    try:
        with socket.create_connection(("127.0.0.1", switch.public_port), timeout=5) as conn:
            assert conn.recv(1) == b""
    finally:
        switch.remove()
