"""The agent's state file: what serves, what to roll back to, what is blocked, what happened.

Written atomically (temp file, fsync, rename, fsync of the directory) after every step, so a crash or
power cut at any point leaves either the old or the new state, never a torn one. ``phase`` names the
step an update was in; start-up recovery reads it (see :func:`edge_runtime.agent.reconcile.recover`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.errors import InputError

STATE_VERSION = 1
HISTORY_LIMIT = 50
PHASES = ("idle", "pulling", "canary", "handover", "probation")


class StateError(InputError):
    """The state file exists but cannot be read."""


@dataclass
class Deployment:
    """One image running (or meant to run) as the service: where it came from and where it listens."""

    digest: str
    ref: str
    model: str = ""
    version: str = ""
    container: str = ""
    port: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Deployment:
        return cls(
            digest=str(data["digest"]),
            ref=str(data["ref"]),
            model=str(data.get("model", "")),
            version=str(data.get("version", "")),
            container=str(data.get("container", "")),
            port=int(data.get("port", 0)),
        )


@dataclass
class AgentState:
    """``current`` serves (or is in probation), ``previous`` is the last known good one to roll back to,
    ``candidate`` is an update in flight (phases pulling, canary, handover)."""

    current: Deployment | None = None
    previous: Deployment | None = None
    candidate: Deployment | None = None
    phase: str = "idle"
    phase_started: float = 0.0
    channel_digest: str = ""
    blocked: dict[str, str] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    last_error: str = ""
    last_error_at: float = 0.0
    last_check_at: float = 0.0
    consecutive_failures: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    # Trust (TUF): the highest targets version ever trusted (anti-rollback; no recovery path lowers it), the
    # outcome of the last metadata refresh ("ok", a reason code such as "stale-metadata", or "insecure"),
    # and why the device wants what it wants (highest approved, or a rollout's wave decision).
    trust_floor: int = 0
    block_retry: dict[str, int] = field(default_factory=dict)  # blocked digest -> the approval's retry then
    trust_status: str = ""
    rollout_id: str = ""
    desired: str = ""
    prefetched: str = ""  # image ref pulled ahead of this device's wave (kept by the image clean-up)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def record(self, entry: dict[str, Any]) -> None:
        """Keep a step's report, with the rollout it ran under (the fleet's controller judges by it)."""
        self.history.append({"rollout_id": self.rollout_id, **entry})
        del self.history[:-HISTORY_LIMIT]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state_version"] = STATE_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentState:
        def dep(key: str) -> Deployment | None:
            value = data.get(key)
            return Deployment.from_dict(value) if isinstance(value, dict) else None

        phase = str(data.get("phase", "idle"))
        return cls(
            current=dep("current"),
            previous=dep("previous"),
            candidate=dep("candidate"),
            phase=phase if phase in PHASES else "idle",
            phase_started=float(data.get("phase_started", 0.0)),
            channel_digest=str(data.get("channel_digest", "")),
            blocked={str(k): str(v) for k, v in dict(data.get("blocked", {})).items()},
            attempts={str(k): int(v) for k, v in dict(data.get("attempts", {})).items()},
            last_error=str(data.get("last_error", "")),
            last_error_at=float(data.get("last_error_at", 0.0)),
            last_check_at=float(data.get("last_check_at", 0.0)),
            consecutive_failures=int(data.get("consecutive_failures", 0)),
            counters={str(k): int(v) for k, v in dict(data.get("counters", {})).items()},
            history=list(data.get("history", [])),
            trust_floor=int(data.get("trust_floor", 0)),
            block_retry={str(k): int(v) for k, v in dict(data.get("block_retry", {})).items()},
            trust_status=str(data.get("trust_status", "")),
            rollout_id=str(data.get("rollout_id", "")),
            desired=str(data.get("desired", "")),
            prefetched=str(data.get("prefetched", "")),
        )


class StateStore:
    """Loads and atomically saves :class:`AgentState` as ``<state_dir>/state.json``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / "state.json"

    def load(self) -> AgentState:
        """The saved state, or a fresh one on first start."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return AgentState()
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError(type(data).__name__)
            return AgentState.from_dict(data)
        except (ValueError, TypeError, KeyError) as exc:
            raise StateError(
                f"Agent state {self.path} is unreadable ({exc}). It is written atomically, so this is outside "
                "damage: move it aside and restart the agent; it will re-install the channel's image."
            ) from exc

    def save(self, state: AgentState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(state.to_dict(), indent=2, sort_keys=True) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=".state.", suffix=".tmp", dir=self.dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
