"""The demo's real infrastructure: a private docker-registry and containerd, the base runtime image, the agent.

Everything lives under the work directory and is registered on the caller's ExitStack, so it is torn down
in reverse order (agent, its containers and kernel redirect, containerd, registry) whatever happens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from otaml.demo_device import NAMESPACE, AgentProcess, AgentSettings, Site
from otaml.localstack import LocalContainerd, LocalRegistry, build_runtime_image


def _remove_redirect(public_port: int) -> None:
    from edge_runtime.agent.handover import HandoverError, IptablesRedirect

    # Nothing set up, or iptables gone: nothing to remove.
    with contextlib.suppress(HandoverError):
        IptablesRedirect(public_port).remove()


def real_site(workdir: Path, stack: ExitStack, say: Callable[[str], None], repository: str) -> Site:
    """Start the registry and containerd, push the base image; everything stops when ``stack`` closes."""
    say("starting a private docker-registry")
    address = stack.enter_context(LocalRegistry(workdir / "registry"))
    stack.callback(say, "stopping the registry")  # callbacks run last-in first-out: this one before the stop
    say(f"  registry at {address} (storage {workdir / 'registry' / 'storage'})")
    say("starting a private containerd")
    ctrd = stack.enter_context(LocalContainerd(workdir / "containerd", NAMESPACE))
    stack.callback(say, "removing the service containers and stopping containerd")
    say(f"  containerd at {ctrd.socket}, namespace {ctrd.namespace}")
    base = f"{address}/otaml/runtime:base"
    log = workdir / "build-runtime.log"
    say(
        f"building the base runtime image and pushing it to {base} (waiting for images/build-runtime.sh; cached "
        f"under ~/.cache/otaml: seconds when cached, ~10-15 min the first time on a machine; log {log})"
    )
    build_runtime_image(push=base, log=log)

    def start_agent(settings: AgentSettings) -> AgentProcess:
        config = workdir / "agent.toml"
        config.write_text(settings.toml())
        # Registered before starting, so a failed start still removes the redirect and containers.
        stack.callback(_remove_redirect, settings.public_port)
        stack.callback(say, f"removing the iptables redirect of port {settings.public_port}")
        agent = AgentProcess(config, settings.state_dir, workdir / "agent.log")
        stack.callback(agent.stop)
        stack.callback(say, "stopping the agent (SIGTERM: it finishes its current step)")
        return agent.start()

    return Site(
        base_image=base,
        repository=f"{address}/{repository}",
        registry_url=f"http://{address}",
        agent_repository=repository,
        start_agent=start_agent,
        containerd_socket=ctrd.socket,
        namespace=ctrd.namespace,
    )
