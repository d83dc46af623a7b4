"""Service ports: below the ephemeral range, each handed out once, never one that something holds."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from otaml import ports


def test_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    low = ports.ephemeral_low()
    given = [ports.free_port() for _ in range(50)]
    assert len(set(given)) == 50
    assert all(ports.LOWEST <= p < low for p in given), given
    assert all(ports.bindable(p) for p in given)


def test_a_port_held_by_a_listener_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        start = ports.free_port() + 1
        held.bind(("127.0.0.1", start))
        held.listen()
        monkeypatch.setattr(ports, "_next", start)
        assert ports.free_port() == start + 1


def test_the_range_is_read_from_the_kernel_and_defaults_when_unreadable(tmp_path: Path) -> None:
    (tmp_path / "range").write_text("40000\t60999\n")
    assert ports.ephemeral_low(tmp_path / "range") == 40000
    assert ports.ephemeral_low(tmp_path / "missing") == 32768


def test_processes_side_by_side_take_blocks_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    starts = [ports.block(i, 1000) for i in range(4)]
    assert starts == [ports.LOWEST + 1000 * i for i in range(4)]
    assert all(s + 1000 <= ports.ephemeral_low() for s in starts)
    monkeypatch.setattr(ports, "_next", 0)
    ports.start_at(starts[2] + 500)
    taken = ports.free_port()
    assert starts[2] + 500 <= taken < starts[3]
