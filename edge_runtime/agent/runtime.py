"""The container runtime the agent drives: a small protocol, one real implementation (``ctr``), fakes in tests.

How calls fail (callers branch on these types, never on text):

- ``NotFound``: the image, blob or container does not exist.
- ``TemporaryError``: pulling failed on the network or the registry (retry with back-off).
- ``RuntimeFailure``: containerd refused or failed an operation (bad image, digest mismatch, runc error).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from edge_runtime.errors import OtamlError

# Every container the agent creates carries this label, so recovery can find (and remove) leftovers.
AGENT_LABEL = "io.otaml.agent"


class RuntimeFailure(OtamlError):
    """containerd (or runc) failed an operation; the message carries its output."""

    reason = "runtime-failure"


@dataclass(frozen=True)
class ContainerSpec:
    """How to run one service container: non-root (the image's user), read-only root, limits, no new privileges."""

    name: str
    image: str
    env: Mapping[str, str] = field(default_factory=dict)
    memory_bytes: int = 100 * 1024 * 1024
    cpus: float = 0.25
    read_only: bool = True
    tmpfs: tuple[str, ...] = ("/tmp",)
    platform: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    command: tuple[str, ...] = ()  # empty: the image's entrypoint and command


@dataclass(frozen=True)
class ContainerStatus:
    """A container as the runtime sees it. ``running`` is False when its task exited or never started."""

    name: str
    image: str
    running: bool
    exit_code: int | None = None
    oom_killed: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)


class ExitWatch(Protocol):
    """Tells at once when a container's main process exits (the kernel says so; containerd is not polled)."""

    def wait(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s``; True as soon as the process has exited (also when it already had)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class PullResult:
    ref: str
    bytes_fetched: int


class ContainerRuntime(Protocol):
    def pull(self, ref: str, platform: str) -> PullResult:
        """Fetch ``ref`` (``host/repo@digest``) for ``platform``; containerd verifies every digest."""
        ...

    def has_image(self, ref: str) -> bool: ...

    def read_blob(self, digest: str) -> bytes:
        """A blob from the local content store (after a pull: no network)."""
        ...

    def remove_image(self, ref: str) -> None: ...

    def list_images(self) -> list[str]: ...

    def start(self, spec: ContainerSpec) -> None:
        """Create and start the container; the name must be free."""
        ...

    def status(self, name: str) -> ContainerStatus:
        """Raises NotFound when no such container exists."""
        ...

    def stop(self, name: str, timeout_s: float) -> None:
        """SIGTERM, wait up to ``timeout_s`` for it to drain, then SIGKILL; remove task and container.

        A missing container is not an error (stop is idempotent)."""
        ...

    def list_containers(self) -> list[ContainerStatus]:
        """The containers this agent created (those labelled ``AGENT_LABEL``)."""
        ...

    def logs(self, name: str, max_bytes: int = 2000) -> str:
        """The end of the container's output ("" when none was kept): quoted in canary failures."""
        ...


@runtime_checkable
class WatchesExits(Protocol):
    """A runtime that can also tell at once when a container exits (the real one can; without it the agent
    sees an exit at its next status check, up to ``health_interval_s`` later)."""

    def exit_watch(self, name: str) -> ExitWatch:
        """A watch on the running container's main process; raises NotFound when it has no task."""
        ...
