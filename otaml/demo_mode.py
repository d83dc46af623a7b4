"""Which way ``otaml demo`` runs: ``real`` (containerd, docker-registry, iptables) or ``embedded`` (no daemons).

:func:`probe_host` gathers the facts (pure data), :func:`choose_mode` decides and says why, so the decision
is tested without touching the machine.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass

from edge_runtime.errors import InputError

MODES = ("auto", "real", "embedded")
# What the real mode runs: a private containerd and registry, the base image build, the agent's redirect.
REAL_TOOLS = (
    "containerd",
    "ctr",
    "runc",
    "docker-registry",
    "buildah",
    "mmdebstrap",
    "skopeo",
    "qemu-aarch64-static",
    "iptables",
    "iptables-restore",
)
HOW = "run `sudo scripts/host-deps.sh` (Debian/Ubuntu) or `make demo`, which installs them first"


@dataclass(frozen=True)
class HostFacts:
    system: str
    root: bool
    missing: tuple[str, ...]
    iptables_nat: bool


@dataclass(frozen=True)
class ModeChoice:
    mode: str
    reason: str


def probe_host() -> HostFacts:
    """Look at this machine: OS, root, the real mode's tools, and whether the ``nat`` table can be read."""
    missing = tuple(t for t in REAL_TOOLS if shutil.which(t) is None)
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    nat = False
    if root and "iptables" not in missing:
        try:
            done = subprocess.run(["iptables", "-w", "-t", "nat", "-S", "OUTPUT"], capture_output=True, timeout=10)
            nat = done.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            nat = False
    return HostFacts(system=platform.system(), root=root, missing=missing, iptables_nat=nat)


def real_mode_problems(facts: HostFacts) -> list[str]:
    """Why the real mode cannot run here (empty when it can)."""
    problems = []
    if facts.system != "Linux":
        problems.append(f"not Linux ({facts.system})")
    if not facts.root:
        problems.append("not root (containerd, buildah and iptables need it)")
    if facts.missing:
        problems.append("missing " + ", ".join(facts.missing))
    elif facts.root and not facts.iptables_nat:
        problems.append("the iptables nat table is not usable (no CAP_NET_ADMIN or no nat module)")
    return problems


def choose_mode(requested: str, facts: HostFacts) -> ModeChoice:
    """``auto`` picks real when everything is there, else embedded; ``real`` fails loudly when it cannot run."""
    if requested not in MODES:
        raise InputError(f"--mode {requested!r} is not one of {list(MODES)}.")
    if requested == "embedded":
        return ModeChoice("embedded", "asked for with --mode embedded")
    problems = real_mode_problems(facts)
    if not problems:
        return ModeChoice("real", "root on Linux with containerd, runc, docker-registry, buildah and iptables")
    if requested == "real":
        raise InputError(f"--mode real cannot run here: {'; '.join(problems)}. To fix: {HOW}.")
    return ModeChoice("embedded", f"real mode unavailable: {'; '.join(problems)} (to get it: {HOW})")
