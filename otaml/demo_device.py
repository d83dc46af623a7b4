"""The demo's device: the OTA agent's configuration, the agent running, and waiting on what it reports.

The demo watches the agent only through its state file (``<state_dir>/state.json``, what ``otaml agent status``
shows): each finished update step leaves a history entry with its outcome, timings and bytes pulled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edge_runtime.agent.state import AgentState, StateStore
from edge_runtime.errors import OtamlError, TemporaryError

NAMESPACE = "otaml-demo"
# Outcomes that end the agent's work on a digest (an "error" is retried, so it does not).
FINAL_OUTCOMES = ("updated", "rolled_back", "refused")


class DemoFailed(OtamlError):
    """A step of the demo did not happen as it should (the message says which, and where the logs are)."""


@dataclass(frozen=True)
class AgentSettings:
    """The agent configuration the demo uses: quick polls and a short probation, so the loop takes seconds."""

    registry_url: str
    repository: str
    state_dir: Path
    public_port: int
    private_ports: tuple[int, int]
    containerd_socket: str = "/run/containerd/containerd.sock"
    namespace: str = "otaml-demo"
    channel: str = "production"
    trust_url: str = ""  # the served TUF metadata; empty: [trust] insecure = true
    trusted_root: Path | None = None
    model: str = ""
    handover: str = "iptables"
    poll_interval_s: float = 1.0
    probation_s: float = 5.0
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)

    def toml(self) -> str:
        """The agent's TOML file (see deploy/agent.example.toml)."""

        def value(v: Any) -> str:
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, (int, float)):
                return repr(v)
            if isinstance(v, (list, tuple)):
                return "[" + ", ".join(value(x) for x in v) + "]"
            if isinstance(v, dict):
                return "{" + ", ".join(f"{value(str(k))} = {value(x)}" for k, x in v.items()) + "}"
            return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

        tables: dict[str, dict[str, Any]] = {
            "registry": {"url": self.registry_url, "repository": self.repository, "channel": self.channel},
            "poll": {"interval_s": self.poll_interval_s, "jitter": 0.2, "backoff_base_s": 1, "backoff_max_s": 5},
            "containerd": {"socket": self.containerd_socket, "namespace": self.namespace},
            "service": {
                "public_port": self.public_port,
                "private_ports": list(self.private_ports),
                "host": "127.0.0.1",
                "drain_s": 2,
                "switch_grace_s": 1,
                "stop_timeout_s": 10,
            },
            "update": {
                "probation_s": self.probation_s,
                "ready_timeout_s": 90,
                "health_timeout_s": 2,
                "health_interval_s": 0.5,
                "unhealthy_after": 2,
            },
            "agent": {"state_dir": str(self.state_dir), "handover": self.handover},
            "trust": {"metadata_url": self.trust_url, "trusted_root": str(self.trusted_root), "model": self.model}
            if self.trust_url
            else {"insecure": True},
            "device": {"id": "demo-device-1"},
        }
        for section, values in self.extra.items():
            tables.setdefault(section, {}).update(values)
        lines = ["# Written by `otaml demo`."]
        for name, table in tables.items():
            lines.append(f"\n[{name}]")
            lines += [f"{k} = {value(v)}" for k, v in table.items()]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Site:
    """Where images go and how a device is started: the same verbs in both modes."""

    base_image: str  # REF of the runtime image without a model
    repository: str  # REF of the model image repository (no tag)
    registry_url: str  # what the agent polls
    agent_repository: str  # the repository name the agent follows
    start_agent: Callable[[AgentSettings], Agent]
    containerd_socket: str = ""
    namespace: str = NAMESPACE


class Agent(Protocol):
    """A running agent: ``problem()`` says why it is no longer running (None while it is)."""

    state_dir: Path

    def problem(self) -> str | None: ...

    def stop(self) -> None: ...


class AgentProcess:
    """``python -m edge_runtime agent run --config FILE`` as a child process, its output in ``log``."""

    def __init__(self, config_file: Path, state_dir: Path, log: Path) -> None:
        self.config_file = config_file
        self.state_dir = state_dir
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        with open(self.log, "wb") as out:
            # Its own session: Ctrl-C reaches the demo, which then stops the agent in order.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge_runtime", "agent", "run", "--config", str(self.config_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def problem(self) -> str | None:
        if self.process is None or self.process.poll() is None:
            return None
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        return f"the agent exited with {self.process.returncode}; end of {self.log}:\n{tail}"

    def stop(self) -> None:
        """SIGTERM (the agent finishes its current step), SIGKILL after 60 s."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class AgentThread:
    """The agent's poll loop in a thread of this process (the embedded mode's device)."""

    def __init__(self, reconciler: Any, state_dir: Path) -> None:
        self.reconciler = reconciler
        self.state_dir = state_dir
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="demo-agent", daemon=True)

    def start(self) -> AgentThread:
        self._thread.start()
        return self

    def _run(self) -> None:
        from edge_runtime.agent.loop import run

        try:
            run(self.reconciler, self._stop)
        except BaseException as exc:  # reported by problem(); the thread must not die silently
            self._error = exc

    def problem(self) -> str | None:
        if self._error is not None:
            return f"the agent failed: {type(self._error).__name__}: {self._error}"
        if not self._thread.is_alive() and not self._stop.is_set():
            return "the agent thread stopped"
        return None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def load_state(state_dir: Path) -> AgentState:
    return StateStore(state_dir).load()


def wait_for_outcome(
    agent: Agent,
    digest: str,
    *,
    after: float,
    timeout_s: float,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """The agent's first final history entry for ``digest`` recorded after ``after`` (epoch seconds).

    Raises DemoFailed when the agent dies or nothing final comes within ``timeout_s`` (with its last error).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        problem = agent.problem()
        if problem:
            raise DemoFailed(f"while waiting for {what}: {problem}")
        try:
            state = load_state(agent.state_dir)
        except OtamlError:
            state = AgentState()  # not written yet
        for entry in state.history:
            if entry.get("digest") == digest and entry.get("outcome") in FINAL_OUTCOMES and entry.get("at", 0) >= after:
                return entry
        if time.monotonic() > deadline:
            last = state.last_error or "none"
            raise TemporaryError(
                f"the agent did not finish {what} within {timeout_s:.0f} s (phase {state.phase}, last error: {last}). "
                f"Its state: {agent.state_dir / 'state.json'}."
            )
        sleep(0.2)
