"""A fleet of device agents on this machine: the fleet bench and the demo's fleet use it.

Each device is the real agent (:class:`edge_runtime.agent.reconcile.Reconciler`, the same TUF trust policy, the same
fleet reporter and link as ``otaml agent run`` with ``[fleet]``) running as a thread of this process with its own
state directory, device id, groups, platform and broker credentials. It reads the registry through its own
:class:`edge_runtime.agent.source.RegistrySource` (a real registry over HTTP, or an OCI layout) and serves with the
light process runtime (:class:`edge_runtime.agent.process.ProcessRuntime`) behind a TCP forwarder
(:class:`edge_runtime.agent.forwarder.ProxySwitch`). The devices of one fleet share a read-through blob cache, so
each blob is fetched once per machine.

A served model costs a process (about 0.7 CPU-seconds to start and 60 MB resident): :class:`DeviceOptions` turns
``warm_rollback`` off and keeps probation short, and the poll interval sets the load (every device polls with
±20 % jitter).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.agent.state import AgentState, StateStore
from edge_runtime.errors import OtamlError
from edge_runtime.oci import OCI_CONFIG, Platform
from otaml.ports import free_port

PI4 = "linux/arm64"
X86 = "linux/amd64"


class FleetHarnessError(OtamlError):
    """A device of the local fleet could not be set up (the message names it and the cause)."""


@dataclass(frozen=True)
class DeviceSpec:
    """One device: its id (also its broker user), its groups (e.g. ``hw=pi4``) and the platform it pulls."""

    device_id: str
    groups: Mapping[str, str] = field(default_factory=dict)
    platform: str = X86


@dataclass(frozen=True)
class DeviceOptions:
    """What every device of the fleet shares: where the registry, the metadata and the broker are, and timings."""

    registry_url: str
    repository: str
    trust_url: str
    trusted_root: Path
    model: str
    broker_host: str
    broker_port: int
    password_file: Callable[[str], Path]  # device id -> its broker password file
    fleet: str = "default"
    channel: str = "production"
    poll_interval_s: float = 10.0
    poll_jitter: float = 0.2
    probation_s: float = 3.0
    heartbeat_s: float = 900.0
    field_interval_s: float = 3600.0


def fleet_specs(count: int, *, pi4_every: int = 2, prefix: str = "dev") -> list[DeviceSpec]:
    """``count`` devices; every ``pi4_every``-th (from the first) is ``hw=pi4`` on linux/arm64, the others
    ``hw=x86`` on linux/amd64."""
    specs = []
    for i in range(count):
        arm = i % pi4_every == 0
        specs.append(DeviceSpec(f"{prefix}-{i:04d}", {"hw": "pi4" if arm else "x86"}, PI4 if arm else X86))
    return specs


class BlobCache:
    """A read-through cache of registry blobs shared by the devices of this machine (``ProcessRuntime``'s
    ``blob_cache``): each blob is fetched from the registry once, then hardlinked into each device's store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.fetched = 0
        self.hits = 0

    def _lock(self, digest: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(digest, threading.Lock())

    def path(self, digest: str, fetch: Callable[[str], bytes]) -> tuple[Path, int]:
        """The cached file of ``digest`` (fetched with ``fetch`` when missing) and the bytes fetched now."""
        if not digest.startswith("sha256:") or len(digest) != 71:
            raise FleetHarnessError(f"blob digest {digest!r} is not sha256:<64 hex>")
        target = self.root / digest.removeprefix("sha256:")
        with self._lock(digest):
            if target.is_file():
                self.hits += 1
                return target, 0
            data = fetch(digest)
            partial = target.with_suffix(f".{os.getpid()}.partial")  # several processes may share the cache
            partial.write_bytes(data)
            partial.rename(target)
            self.fetched += 1
            return target, len(data)


class Device:
    """One device agent running in a thread, with its reporter and its forwarder."""

    def __init__(self, spec: DeviceSpec, reconciler: Any, reporter: Any, link: Any, runtime: Any, switch: Any):
        self.spec = spec
        self.reconciler = reconciler
        self.reporter = reporter
        self.link = link
        self.runtime = runtime
        self.switch = switch
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"agent-{spec.device_id}", daemon=True)

    @property
    def public_port(self) -> int:
        return int(self.reconciler.config.public_port)

    @property
    def state_dir(self) -> Path:
        return Path(self.reconciler.config.state_dir)

    def _run(self) -> None:
        from edge_runtime.agent.loop import run

        try:
            run(self.reconciler, self.stop_event, on_report=self.link)
        except BaseException as exc:  # kept for problem(): a device thread must not die silently
            self.error = exc

    def state(self) -> AgentState:
        try:
            return StateStore(self.state_dir).load()
        except OtamlError:
            return AgentState()

    def serving_version(self) -> str:
        current = self.state().current
        return str(current.version) if current is not None else ""

    def problem(self) -> str | None:
        if self.error is not None:
            return f"{self.spec.device_id}: the agent failed: {type(self.error).__name__}: {self.error}"
        if not self.thread.is_alive() and not self.stop_event.is_set():
            return f"{self.spec.device_id}: the agent thread stopped"
        return None


class LocalFleet:
    """Devices of :class:`DeviceSpec` as agents in threads; ``with LocalFleet(...) as fleet`` stops them all."""

    def __init__(
        self,
        workdir: Path,
        options: DeviceOptions,
        *,
        client_factory: Callable[[], Any] | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.options = options
        self.devices: list[Device] = []
        self.cache = BlobCache(cache_dir or workdir / "blob-cache")
        self._client_factory = client_factory

    def __enter__(self) -> LocalFleet:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def add(self, spec: DeviceSpec) -> Device:
        """Set up ``spec``'s agent, reporter and forwarder and start its poll loop."""
        from edge_runtime.agent.canary import HttpProber
        from edge_runtime.agent.cli import build_trust
        from edge_runtime.agent.config import AgentConfig
        from edge_runtime.agent.fleet_link import FleetLink
        from edge_runtime.agent.forwarder import ProxySwitch
        from edge_runtime.agent.policy import NoDowngrade
        from edge_runtime.agent.process import ProcessRuntime
        from edge_runtime.agent.reconcile import Reconciler
        from edge_runtime.agent.source import RegistrySource
        from edge_runtime.fleet.reporter import Reporter
        from edge_runtime.fleet.settings import FleetSettings

        o = self.options
        root = self.workdir / "devices" / spec.device_id
        root.mkdir(parents=True, exist_ok=True)
        fleet = FleetSettings(
            device_id=spec.device_id,
            fleet=o.fleet,
            broker_host=o.broker_host,
            broker_port=o.broker_port,
            groups=dict(spec.groups),
            password_file=o.password_file(spec.device_id),
            heartbeat_s=o.heartbeat_s,
        )
        config = AgentConfig(
            registry_url=o.registry_url,
            repository=o.repository,
            channel=o.channel,
            poll_interval_s=o.poll_interval_s,
            poll_jitter=o.poll_jitter,
            backoff_base_s=1.0,
            backoff_max_s=10.0,
            platform=spec.platform,
            public_port=free_port(),
            private_ports=(free_port(), free_port()),
            service_host="127.0.0.1",
            drain_s=1,
            switch_grace_s=1,
            stop_timeout_s=5,
            probation_s=o.probation_s,
            ready_timeout_s=120,
            health_timeout_s=2,
            health_interval_s=1.0,
            unhealthy_after=2,
            warm_rollback="off",
            state_dir=root / "state",
            handover="none",
            trust_metadata_url=o.trust_url,
            trusted_root=o.trusted_root,
            model=o.model,
            device_id=spec.device_id,
            groups=dict(spec.groups),
            fleet=fleet,
            field_interval_s=o.field_interval_s,
        )
        if self._client_factory is not None:
            source = RegistrySource(self._client_factory(), o.repository, o.channel)
        else:
            source = RegistrySource.connect(o.registry_url, o.repository, o.channel, config.registry_timeout_s)
        runtime = ProcessRuntime(source.client, root / "runtime", blob_cache=self.cache.path)
        switch = ProxySwitch(config.public_port).start()
        reconciler = Reconciler(
            config,
            StateStore(config.state_dir),
            source,
            runtime,
            switch,
            HttpProber("127.0.0.1", config.health_timeout_s),
            NoDowngrade(),
            trust=build_trust(config),
        )
        reporter = Reporter(fleet).start()
        link = FleetLink(
            reconciler,
            reporter,
            device_id=spec.device_id,
            groups=dict(spec.groups),
            model=o.model,
            field_interval_s=o.field_interval_s,
        )
        reconciler.on_phase = link.phase_changed
        device = Device(spec, reconciler, reporter, link, runtime, switch)
        device.thread.start()
        self.devices.append(device)
        return device

    def add_all(self, specs: Iterable[DeviceSpec]) -> list[Device]:
        return [self.add(spec) for spec in specs]

    def problems(self) -> list[str]:
        return [p for d in self.devices if (p := d.problem()) is not None]

    def versions(self) -> dict[str, str]:
        """Device id -> the version it serves ("" before its first install)."""
        return {d.spec.device_id: d.serving_version() for d in self.devices}

    def broker_bytes(self) -> int:
        """Payload bytes the devices' reporters handed to the broker so far."""
        return sum(int(d.reporter.stats().payload_bytes) for d in self.devices)

    def stop(self) -> None:
        """Stop every poll loop (each finishes its step), then the services, forwarders and reporters (several
        devices at once: each service drains for a moment)."""
        from concurrent.futures import ThreadPoolExecutor

        for device in self.devices:
            device.stop_event.set()
        for device in self.devices:
            device.thread.join(timeout=120)

        def stop_device(device: Device) -> None:
            device.runtime.stop_all()
            device.switch.remove()
            device.reporter.close()

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(stop_device, self.devices))
        self.devices = []


def minimal_base(path: Path, platforms: Iterable[str], tag: str = "base") -> str:
    """An image index holding one empty image (a config, no layers) per platform; returns ``oci:PATH:TAG``.

    The process runtime runs the bundle on this machine's Python, so its base needs no root filesystem; the
    platforms listed are what devices can pull (a device whose platform is missing refuses the image).
    """
    from registry.oci.image import Blob, Index, Manifest, canonical_json
    from registry.oci.layout import Layout

    layout = Layout(path, create=True)
    manifests = []
    for platform in platforms:
        os_name, arch, *variant = platform.split("/")
        config = {
            "architecture": arch,
            "os": os_name,
            **({"variant": variant[0]} if variant else {}),
            "config": {"Labels": {"io.otaml.base": "process-runtime"}},
            "rootfs": {"type": "layers", "diff_ids": []},
        }
        blob = Blob.of(canonical_json(config), OCI_CONFIG)
        layout.write_blob(blob.data, blob.descriptor.digest)
        manifest = Manifest(blob.descriptor, ()).blob(Platform(os_name, arch, variant[0] if variant else None))
        layout.write_manifest(manifest.data, manifest.descriptor.media_type)
        manifests.append(manifest.descriptor)
    index = Index(tuple(manifests)).blob()
    layout.write_manifest(index.data, index.descriptor.media_type, tag)
    return f"oci:{path}:{tag}"


def quiet_agent_logs(path: Path) -> Callable[[], None]:
    """Send the agents' and reporters' logs to ``path`` instead of the terminal; returns the undo."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("otaml.agent", "otaml.fleet", "httpx")]
    saved = [(lg, lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.WARNING if lg.name == "httpx" else logging.INFO)
        lg.propagate = False

    def undo() -> None:
        for lg, level, propagate in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate
        handler.close()

    return undo


def publish_metadata(source: Path, served: Path) -> None:
    """Copy the trust site's changed metadata files to the directory devices read, each atomically and
    ``timestamp.json`` last (how an upload to a web server or CDN is ordered): a device sees a whole publication or
    the previous one, so an approval and the rollout that holds it back arrive together."""
    served.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in source.iterdir() if p.is_file() and p.suffix == ".json")
    ordered = [n for n in names if n != "timestamp.json"] + [n for n in names if n == "timestamp.json"]
    for name in ordered:
        data = (source / name).read_bytes()
        target = served / name
        if target.is_file() and target.read_bytes() == data:
            continue
        partial = served / f".{name}.partial"
        partial.write_bytes(data)
        partial.rename(target)
