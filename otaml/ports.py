"""Free TCP ports for services that bind them later: below the kernel's ephemeral range.

A port found by binding port 0 is an ephemeral port. Between being picked and being bound by the service it was
given to (a container that starts seconds later), the kernel may hand the same port to anything else: another
``bind(("127.0.0.1", 0))`` (a test's HTTP server; the kernel often returns a port it just freed) or the local end of
an outgoing connection (probes, the broker, the registry). The service then cannot bind and exits. Ports below
the ephemeral range are only ever taken by asking for them, so :func:`free_port` hands out each one once per
process, starting from a random place so that processes running side by side rarely meet (or, with
:func:`start_at`, from a block of their own).
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

from edge_runtime.errors import OtamlError

LOWEST = 10000
PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")

_lock = threading.Lock()
_given: set[int] = set()
_next = 0


class NoFreePort(OtamlError):
    """Every port between :data:`LOWEST` and the ephemeral range is taken."""


def free_port() -> int:
    """A port on 127.0.0.1 that is free now, below the ephemeral range, and not handed out before by this process."""
    global _next
    low = ephemeral_low()
    with _lock:
        if not _next:
            _next = random.randrange(LOWEST, max(LOWEST + 1, low - 4000))
        for _ in range(max(1, low - LOWEST)):
            port = _next
            _next = port + 1 if port + 1 < low else LOWEST
            if port not in _given and bindable(port):
                _given.add(port)
                return port
    raise NoFreePort(f"no free TCP port between {LOWEST} and {low} on 127.0.0.1")


def start_at(port: int) -> None:
    """Hand out ports from ``port`` on: processes that run side by side each take their own block."""
    global _next
    with _lock:
        _next = port


def block(index: int, size: int) -> int:
    """The first port of block ``index`` of ``size`` ports (blocks wrap around below the ephemeral range)."""
    span = max(size, ephemeral_low() - LOWEST)
    return LOWEST + (index * size) % span


def ephemeral_low(path: Path = PORT_RANGE) -> int:
    """The first port of the kernel's ephemeral range (32768 when it cannot be read)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
