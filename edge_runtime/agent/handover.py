"""Moving the public port's traffic from one service container to another without failing a request.

The chosen mechanism is a kernel redirect (see docs/agent.md for the measurements and the alternatives):
the service containers listen on private ports and a ``nat`` rule sends new TCP connections to the public
port on to the serving container's private port. Switching rewrites that one rule in a single atomic
``iptables-restore`` transaction; connections already open keep their conntrack mapping to the old
container, which then drains them on SIGTERM. The agent is not in the data path: if it crashes or is
restarted, traffic keeps flowing.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence
from typing import Protocol

from edge_runtime.errors import OtamlError

Runner = Callable[[Sequence[str], str | None], tuple[int, str]]


class HandoverError(OtamlError):
    """The kernel redirect could not be read or changed (iptables missing, no CAP_NET_ADMIN)."""

    reason = "handover-failed"


class TrafficSwitch(Protocol):
    def target(self) -> int | None:
        """The private port the public port is sent to now, or None when nothing is set up."""
        ...

    def point_to(self, port: int) -> None:
        """Send new connections to ``port`` from now on (atomically)."""
        ...

    def remove(self) -> None:
        """Remove the redirect entirely (uninstall)."""
        ...


def run_command(argv: Sequence[str], stdin: str | None = None) -> tuple[int, str]:
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HandoverError(f"Running {argv[0]} failed: {exc}. Install iptables and run the agent as root.") from exc
    return done.returncode, done.stdout + done.stderr


class IptablesRedirect:
    """``nat`` chain ``OTAML-<public port>``, jumped to from OUTPUT (local clients) and PREROUTING (others)."""

    def __init__(self, public_port: int, iptables: str = "iptables", runner: Runner = run_command) -> None:
        self.public_port = public_port
        self.iptables = iptables
        self.chain = f"OTAML-{public_port}"
        self.run = runner

    def _ipt(self, *args: str, check: bool = True) -> tuple[int, str]:
        code, out = self.run([self.iptables, "-w", "-t", "nat", *args], None)
        if check and code != 0:
            raise HandoverError(f"iptables -t nat {' '.join(args)} failed ({code}): {out.strip()}")
        return code, out

    def _jump(self) -> list[str]:
        return ["-p", "tcp", "-m", "addrtype", "--dst-type", "LOCAL", "-j", self.chain]

    def ensure(self) -> None:
        """Create the chain and the two jumps if missing (idempotent: after a reboot they are gone)."""
        if self._ipt("-S", self.chain, check=False)[0] != 0:
            self._ipt("-N", self.chain)
        for builtin in ("OUTPUT", "PREROUTING"):
            if self._ipt("-C", builtin, *self._jump(), check=False)[0] != 0:
                self._ipt("-I", builtin, "1", *self._jump())

    def target(self) -> int | None:
        code, out = self._ipt("-S", self.chain, check=False)
        if code != 0 or any(self._ipt("-C", b, *self._jump(), check=False)[0] != 0 for b in ("OUTPUT", "PREROUTING")):
            return None  # no chain, or someone removed a jump (a firewall reload): not redirecting
        match = re.search(rf"--dport {self.public_port} .*--to-ports (\d+)", out)
        return int(match.group(1)) if match else None

    def point_to(self, port: int) -> None:
        self.ensure()
        # Declaring the chain in a --noflush restore empties it; flush + add commit as one transaction,
        # so there is no instant without a rule.
        rules = (
            f"*nat\n:{self.chain} - [0:0]\n"
            f"-A {self.chain} -p tcp --dport {self.public_port} -j REDIRECT --to-ports {port}\nCOMMIT\n"
        )
        code, out = self.run([f"{self.iptables}-restore", "-w", "--noflush"], rules)
        if code != 0:
            raise HandoverError(f"iptables-restore could not point port {self.public_port} to {port}: {out.strip()}")

    def remove(self) -> None:
        for builtin in ("OUTPUT", "PREROUTING"):
            while self._ipt("-D", builtin, *self._jump(), check=False)[0] == 0:
                pass
        self._ipt("-F", self.chain, check=False)
        self._ipt("-X", self.chain, check=False)
