"""The demo without daemons: an OCI layout directory for the registry, local processes for containers.

The promotion side is unchanged (``registry`` writes ``oci:`` REFs as it writes registry ones: bake, sign, move
the channel tag). The device runs the real agent (:class:`edge_runtime.agent.reconcile.Reconciler`, the same
TUF trust policy) in a thread, reading the layout through :class:`LayoutClient`, running services with
:class:`edge_runtime.agent.process.ProcessRuntime` and switching traffic with
:class:`edge_runtime.agent.forwarder.ProxySwitch`.
The base image is a minimal one (a config and no layers): the services run on this machine's Python.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from edge_runtime.agent.forwarder import ProxySwitch
from edge_runtime.agent.process import ProcessRuntime
from edge_runtime.errors import OtamlError
from edge_runtime.oci import OCI_CONFIG, Descriptor, Platform
from otaml.demo_device import NAMESPACE, AgentSettings, AgentThread, Site
from otaml.local_fleet import quiet_agent_logs
from registry.oci.image import Blob, Index, Manifest, canonical_json
from registry.oci.layout import Layout

# AgentConfig wants a URL; nothing listens there: the source reads the layout.
EMBEDDED_URL = "http://embedded.invalid"


class LayoutClient:
    """The three reads the agent's source and signature policy make, served from an OCI layout."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def head_manifest(self, ref: str) -> Descriptor | None:
        return self.layout.resolve(ref)

    def get_manifest(self, ref: str) -> tuple[bytes, str, str]:
        return self.layout.read_manifest(ref)

    def get_blob(self, digest: str, max_bytes: int | None = None) -> bytes:
        data = self.layout.read_blob(digest)
        if max_bytes is not None and len(data) > max_bytes:
            raise OtamlError(f"blob {digest} is {len(data)} bytes, over the {max_bytes}-byte limit for it.")
        return data

    def close(self) -> None:
        return None


def minimal_base_image(path: Path, platform: str, tag: str = "base") -> str:
    """An index holding one empty image (config only) for ``platform``; returns its REF ``oci:PATH:TAG``."""
    os_name, arch, *variant = platform.split("/")
    config = {
        "architecture": arch,
        "os": os_name,
        **({"variant": variant[0]} if variant else {}),
        "config": {"Labels": {"io.otaml.demo.base": "embedded"}},
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    layout = Layout(path, create=True)
    config_blob = Blob.of(canonical_json(config), OCI_CONFIG)
    layout.write_blob(config_blob.data, config_blob.descriptor.digest)
    manifest = Manifest(config_blob.descriptor, ()).blob(Platform(os_name, arch, variant[0] if variant else None))
    layout.write_manifest(manifest.data, manifest.descriptor.media_type)
    index = Index((manifest.descriptor,)).blob()
    layout.write_manifest(index.data, index.descriptor.media_type, tag)
    return f"oci:{path}:{tag}"


def embedded_site(workdir: Path, stack: ExitStack, say: Callable[[str], None], repository: str) -> Site:
    """An image layout for the registry and a minimal base image; the agent runs in a thread of this process."""
    from edge_runtime.agent.config import device_platform

    platform = device_platform()
    base = minimal_base_image(workdir / "base-layout", platform)
    say(f"minimal base image {base} ({platform}; services run on this machine's Python)")
    images = workdir / "images"
    Layout(images, create=True)
    say(f"image repository: OCI layout {images} (instead of a registry)")

    def start_agent(settings: AgentSettings) -> AgentThread:
        return _start_agent(settings, Layout(images), workdir / "device", stack, say)

    return Site(
        base_image=base,
        repository=f"oci:{images}",
        registry_url=EMBEDDED_URL,
        agent_repository=repository,
        start_agent=start_agent,
        containerd_socket="",
        namespace=NAMESPACE,
    )


def _start_agent(
    settings: AgentSettings, layout: Layout, root: Path, stack: ExitStack, say: Callable[[str], None]
) -> AgentThread:
    from edge_runtime.agent.canary import HttpProber
    from edge_runtime.agent.cli import build_trust
    from edge_runtime.agent.config import AgentConfig
    from edge_runtime.agent.policy import NoDowngrade
    from edge_runtime.agent.reconcile import Reconciler
    from edge_runtime.agent.source import RegistrySource
    from edge_runtime.agent.state import StateStore

    config = AgentConfig(
        registry_url=settings.registry_url,
        repository=settings.repository,
        channel=settings.channel,
        poll_interval_s=settings.poll_interval_s,
        backoff_base_s=1.0,
        backoff_max_s=5.0,
        namespace=settings.namespace,
        public_port=settings.public_port,
        private_ports=settings.private_ports,
        service_host="127.0.0.1",
        drain_s=2,
        switch_grace_s=1,
        stop_timeout_s=10,
        probation_s=settings.probation_s,
        ready_timeout_s=90,
        health_timeout_s=2,
        health_interval_s=0.5,
        unhealthy_after=2,
        state_dir=settings.state_dir,
        handover="none",
        trust_metadata_url=settings.trust_url,
        trusted_root=settings.trusted_root or Path("/nonexistent"),
        model=settings.model,
        insecure=not settings.trust_url,
        device_id="demo-device-1",
    )
    source = RegistrySource(LayoutClient(layout), settings.repository, settings.channel)
    runtime = ProcessRuntime(source.client, root)
    switch = ProxySwitch(settings.public_port).start()
    stack.callback(switch.remove)
    stack.callback(runtime.stop_all)
    stack.callback(say, "stopping the services and the port forwarder")
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
    # The agent's log goes to a file, as it would on a device, not into the demo's progress lines; the
    # loggers are put back as they were when the demo ends (it may run inside another program).
    stack.callback(quiet_agent_logs(root / "agent.log"))
    agent = AgentThread(reconciler, settings.state_dir)
    stack.callback(agent.stop)
    stack.callback(say, "stopping the agent (it finishes its current step)")
    return agent.start()
