"""Fakes at the agent's I/O seams: registry (ImageSource), containerd (ContainerRuntime), the kernel redirect,
HTTP probes and the clock. One :class:`World` wires them together; containers behave per image."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.agent.config import AgentConfig
from edge_runtime.agent.policy import NoDowngrade, VerificationPolicy
from edge_runtime.agent.reconcile import Reconciler
from edge_runtime.agent.runtime import AGENT_LABEL, ContainerSpec, ContainerStatus, PullResult, RuntimeFailure
from edge_runtime.agent.source import NoMatchingPlatform, ResolvedImage
from edge_runtime.agent.state import StateStore
from edge_runtime.errors import NotFound, TemporaryError, Unhealthy

GOLDEN_READINGS = [[60.0, 0.5, 3.0], [61.0, 0.6, 3.1], [75.0, 2.5, 4.0]]
GOLDEN_SCORES = [0.1, 0.2, 0.9]


def digest_of(version: str) -> str:
    return "sha256:" + (version.encode().hex() * 64)[:64]


def bundle_layer(version: str) -> bytes:
    card = {
        "name": "pump",
        "version": version,
        "golden": {"readings": GOLDEN_READINGS, "scores": GOLDEN_SCORES, "tolerance": 1e-4},
    }
    data = json.dumps(card).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("opt/model/model.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class AgentKilled(BaseException):
    """Raised by a fake to stop the agent dead at a chosen point (like SIGKILL): nothing catches it."""


@dataclass
class Behaviour:
    """How a container of one image behaves."""

    crash_at_start: bool = False  # exits immediately
    ready: bool = True  # ever answers /readyz 200
    score_offset: float = 0.0  # golden mismatch when non-zero
    die_after_s: float | None = None  # exits this long after start
    oom_after_s: float | None = None  # OOM-killed this long after start
    unready_after_s: float | None = None  # stops answering /readyz


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.01)


@dataclass
class FakeContainer:
    spec: ContainerSpec
    started_at: float
    behaviour: Behaviour
    killed: bool = False

    @property
    def port(self) -> int:
        return int(self.spec.env["OTAML_PORT"])


class FakeRuntime:
    """containerd: images pulled from the fake registry, containers that live by their image's Behaviour."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.images: set[str] = set()
        self.containers: dict[str, FakeContainer] = {}
        self.fail: dict[str, Exception] = {}  # method name -> error to raise once
        self.kill_on: dict[str, int] = {}  # method name -> raise AgentKilled on the n-th call
        self.calls: list[str] = []
        self.calls_log: list[tuple[str, str, float]] = []  # ("start", image, fake time) of each start
        self.bytes_pulled = 0

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.kill_on:
            self.kill_on[name] -= 1
            if self.kill_on[name] == 0:
                del self.kill_on[name]
                raise AgentKilled(name)
        if name in self.fail:
            raise self.fail.pop(name)

    def pull(self, ref: str, platform: str) -> PullResult:
        self._call("pull")
        if self.world.registry_down:
            raise TemporaryError("registry down")
        digest = ref.split("@", 1)[1]
        if digest not in self.world.registry:
            raise NotFound(ref)
        self.images.add(ref)
        self.bytes_pulled += 1000
        return PullResult(ref, 1000)

    def has_image(self, ref: str) -> bool:
        return ref in self.images

    def read_blob(self, digest: str) -> bytes:
        self._call("read_blob")
        if digest not in self.world.blobs:
            raise NotFound(digest)
        return self.world.blobs[digest]

    def remove_image(self, ref: str) -> None:
        self.images.discard(ref)

    def list_images(self) -> list[str]:
        return sorted(self.images)

    def start(self, spec: ContainerSpec) -> None:
        self._call("start")
        if spec.name in self.containers:
            raise RuntimeFailure(f"container {spec.name} exists")
        if spec.image not in self.images:
            raise NotFound(spec.image)
        port = int(spec.env["OTAML_PORT"])
        behaviour = self.world.behaviours.get(spec.image.split("@", 1)[1], Behaviour())
        c = FakeContainer(spec, self.world.clock.now, behaviour)
        self.calls_log.append(("start", spec.image, self.world.clock.now))
        if any(o.port == port and self._running(o) for o in self.containers.values()):
            c.killed = True  # address already in use: the service exits at once
        self.containers[spec.name] = c

    def _running(self, c: FakeContainer) -> bool:
        death = self.death_time(c)
        return not (c.killed or c.behaviour.crash_at_start or (death is not None and self.world.clock.now >= death))

    def status(self, name: str) -> ContainerStatus:
        self._call("status")
        if name not in self.containers:
            raise NotFound(name)
        c = self.containers[name]
        running = self._running(c)
        oom = c.behaviour.oom_after_s is not None and self.world.clock.now >= c.started_at + c.behaviour.oom_after_s
        return ContainerStatus(
            name, c.spec.image, running, None if running else (137 if oom else 1), oom, dict(c.spec.labels)
        )

    def stop(self, name: str, timeout_s: float) -> None:
        self._call("stop")
        self.containers.pop(name, None)

    def list_containers(self) -> list[ContainerStatus]:
        return [self.status(n) for n in list(self.containers) if AGENT_LABEL in self.containers[n].spec.labels]

    def exit_watch(self, name: str) -> FakeExitWatch:
        self._call("exit_watch")
        c = self.containers.get(name)
        if c is None or not self._running(c):
            raise NotFound(f"{name} has no running task")
        return FakeExitWatch(self, c)

    def death_time(self, c: FakeContainer) -> float | None:
        """When the container's process dies by its Behaviour (None: it does not)."""
        ends = [a for a in (c.behaviour.die_after_s, c.behaviour.oom_after_s) if a is not None]
        return c.started_at + min(ends) if ends else None

    def logs(self, name: str, max_bytes: int = 2000) -> str:
        c = self.containers.get(name)
        return "golden self-test failed: scores differ" if c is not None and c.behaviour.crash_at_start else ""

    # What a test checks at the end.
    def running(self) -> list[FakeContainer]:
        return [c for c in self.containers.values() if self._running(c)]

    def reboot(self) -> None:
        """Tasks die; containers (metadata) and images stay, as with containerd after a reboot."""
        for c in self.containers.values():
            c.killed = True


class FakeExitWatch:
    """Fires the moment the container dies on the fake clock (as a pidfd does), not at the next poll."""

    def __init__(self, runtime: FakeRuntime, container: FakeContainer) -> None:
        self.runtime = runtime
        self.container = container
        self.closed = False

    def wait(self, timeout_s: float) -> bool:
        clock = self.runtime.world.clock
        death = self.runtime.death_time(self.container)
        if death is not None and clock.now < death <= clock.now + timeout_s:
            clock.now = death
        elif self.runtime._running(self.container):
            clock.sleep(timeout_s)
        fired = not self.runtime._running(self.container)
        if fired:
            self.runtime.calls.append("exit_watch fired")
        return fired

    def close(self) -> None:
        self.closed = True


class FakeProber:
    def __init__(self, world: World) -> None:
        self.world = world

    def _container(self, port: int) -> FakeContainer | None:
        rt = self.world.runtime
        return next((c for c in rt.containers.values() if c.port == port and rt._running(c)), None)

    def ready(self, port: int) -> bool:
        c = self._container(port)
        if c is None or not c.behaviour.ready:
            return False
        b = c.behaviour
        return b.unready_after_s is None or self.world.clock.now - c.started_at < b.unready_after_s

    def score(self, port: int, stream: str, readings: list[list[float]]) -> list[float]:
        c = self._container(port)
        if c is None:
            raise Unhealthy(f"nothing listens on {port}")
        return [s + c.behaviour.score_offset for s in GOLDEN_SCORES]


class FakeSwitch:
    def __init__(self) -> None:
        self.port: int | None = None
        self.switches = 0

    def target(self) -> int | None:
        return self.port

    def point_to(self, port: int) -> None:
        self.port = port
        self.switches += 1

    def remove(self) -> None:
        self.port = None


class FakeSource:
    def __init__(self, world: World) -> None:
        self.world = world
        self.heads = 0
        self.resolves = 0

    def channel_digest(self) -> str:
        self.heads += 1
        if self.world.registry_down:
            raise TemporaryError("connecting to 127.0.0.1:5000: connection refused")
        if self.world.registry_500:
            raise TemporaryError("registry answered 500")
        return self.world.channel

    def resolve(self, digest: str, platform: str) -> ResolvedImage:
        self.resolves += 1
        if self.world.registry_down:
            raise TemporaryError("registry down")
        if digest not in self.world.registry:
            raise NotFound(digest)
        image = self.world.registry[digest]
        if platform not in self.world.platforms.get(digest, ("linux/arm64",)):
            raise NoMatchingPlatform(f"{digest} has no {platform}")
        return image


class CountingStore(StateStore):
    """A state store that can kill the agent right after it saves a given phase."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.kill_after_phase: str | None = None
        self.saves = 0

    def save(self, state) -> None:  # type: ignore[no-untyped-def]
        super().save(state)
        self.saves += 1
        if self.kill_after_phase is not None and state.phase == self.kill_after_phase:
            self.kill_after_phase = None
            raise AgentKilled(f"after saving phase {state.phase}")


@dataclass
class World:
    tmp: Path
    clock: Clock = field(default_factory=Clock)
    registry: dict[str, ResolvedImage] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    platforms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    channel: str = ""
    registry_down: bool = False
    registry_500: bool = False
    mem_available: int | None = 4 * 1024**3

    def __post_init__(self) -> None:
        self.runtime = FakeRuntime(self)
        self.prober = FakeProber(self)
        self.switch = FakeSwitch()
        self.source = FakeSource(self)
        self.store = CountingStore(self.tmp / "state")
        self.config = AgentConfig(
            registry_url="http://127.0.0.1:5000",
            repository="pump",
            platform="linux/arm64",
            probation_s=30,
            ready_timeout_s=20,
            health_interval_s=2,
            state_dir=self.tmp / "state",
        )

    def publish(self, version: str, behaviour: Behaviour | None = None, move: bool = True) -> str:
        digest = digest_of(version)
        layer = "sha256:" + digest[7:][::-1]
        self.blobs[layer] = bundle_layer(version)
        self.registry[digest] = ResolvedImage(
            digest=digest,
            manifest_digest=digest,
            platform="linux/arm64",
            labels={"io.otaml.model.name": "pump", "io.otaml.model.version": version},
            layers=("sha256:" + "b" * 64, layer),
            size=1000,
        )
        self.blobs["sha256:" + "b" * 64] = _empty_tar()
        if behaviour is not None:
            self.behaviours[digest] = behaviour
        if move:
            self.channel = digest
        return digest

    def agent(self, policy: VerificationPolicy | None = None) -> Reconciler:
        """A fresh agent process over the same devices (containerd, kernel, disk)."""
        return Reconciler(
            self.config,
            self.store,
            self.source,
            self.runtime,
            self.switch,
            self.prober,
            policy or NoDowngrade(),
            clock=self.clock.time,
            monotonic=self.clock.time,
            sleep=self.clock.sleep,
            available_memory=lambda: self.mem_available,
        )


def _empty_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz"):
        pass
    return buf.getvalue()
