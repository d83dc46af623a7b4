"""The agent's TOML configuration (see deploy/agent.example.toml for every key and its default).

Every bad value is reported with its key and value, e.g.
``Config 'service.cpus' has value 'lots'. Not a number; expected e.g. 0.25.``
"""

from __future__ import annotations

import platform as _platform
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.errors import InputError
from edge_runtime.fleet.messages import check_id
from edge_runtime.fleet.settings import FleetSettings, fleet_settings

# containerd's identifier rule for namespaces.
_NAMESPACE = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")


class ConfigError(InputError):
    """The agent configuration file is missing, malformed or has an invalid value."""


_MACHINE_TO_PLATFORM = {
    "x86_64": "linux/amd64",
    "amd64": "linux/amd64",
    "aarch64": "linux/arm64",
    "arm64": "linux/arm64",
    "armv7l": "linux/arm/v7",
}


def device_platform() -> str:
    """The OCI platform of this machine, e.g. ``linux/arm64`` on a Raspberry Pi 4."""
    machine = _platform.machine().lower()
    return _MACHINE_TO_PLATFORM.get(machine, f"linux/{machine}")


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs; build it with :func:`load_config` or :meth:`from_mapping`."""

    registry_url: str
    repository: str
    channel: str = "production"
    registry_timeout_s: float = 10.0
    token_hosts: tuple[str, ...] = ()  # hosts besides the registry's own that may issue its auth tokens
    poll_interval_s: float = 30.0
    poll_jitter: float = 0.2
    backoff_base_s: float = 2.0
    backoff_max_s: float = 300.0
    containerd_socket: str = "/run/containerd/containerd.sock"
    namespace: str = "otaml"
    ctr_path: str = "ctr"
    platform: str = field(default_factory=device_platform)
    public_port: int = 8080
    private_ports: tuple[int, int] = (18081, 18082)
    service_host: str = "0.0.0.0"
    memory_mb: int = 100
    cpus: float = 0.25
    service_env: Mapping[str, str] = field(default_factory=dict)
    drain_s: float = 5.0
    switch_grace_s: float = 1.0
    stop_timeout_s: float = 15.0
    probation_s: float = 60.0
    ready_timeout_s: float = 60.0
    health_timeout_s: float = 2.0
    health_interval_s: float = 2.0
    unhealthy_after: int = 3
    warm_rollback: str = "auto"  # "auto" | "on" | "off": keep the previous container running through probation
    # Pull the candidate of a running rollout before this device's wave, so the switch at wave time takes seconds.
    # Off by default: every device of the fleet would pull at the rollout's start, not wave by wave.
    prefetch: bool = False
    warm_min_available_mb: int = 256
    state_dir: Path = Path("/var/lib/otaml-agent")
    metrics_textfile: Path | None = None
    handover: str = "iptables"
    # Trust (TUF): where the fleet's metadata is, the root the device was provisioned with, which model it runs.
    trust_metadata_url: str = ""
    trusted_root: Path = Path("/etc/otaml/root.json")
    trust_metadata_dir: Path | None = None
    model: str = ""
    insecure: bool = False  # accept any image from the channel tag: explicit, and reported loudly
    device_id: str = field(default_factory=_platform.node)
    groups: Mapping[str, str] = field(default_factory=dict)
    fleet: FleetSettings | None = None  # [fleet]: report to the fleet's MQTT broker (optional)
    field_interval_s: float = 300.0  # how often the serving model's field summary is published

    @property
    def tuf_dir(self) -> Path:
        """The device's TUF metadata (its anti-rollback state): never cleared by any recovery path."""
        return self.trust_metadata_dir or self.state_dir / "tuf"

    @property
    def channel_ref(self) -> str:
        return f"{self.repository}:{self.channel}"

    @property
    def registry_host(self) -> str:
        """``host:port`` of the registry, as containerd names images (``host:port/repo@digest``)."""
        return self.registry_url.split("://", 1)[-1].rstrip("/")

    @property
    def plain_http(self) -> bool:
        return self.registry_url.startswith("http://")

    @property
    def metrics_path(self) -> Path:
        return self.metrics_textfile or self.state_dir / "agent.prom"

    def image_ref(self, digest: str) -> str:
        """The containerd image name for ``digest`` in this repository."""
        return f"{self.registry_host}/{self.repository}@{digest}"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "agent config") -> AgentConfig:
        """Validate a decoded TOML document."""
        r = _Reader(data, where)
        url = r.string("registry", "url")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"Config 'registry.url' has value {url!r}. Use http://host:port or https://host.")
        ports = r.get("service", "private_ports", [18081, 18082])
        if (
            not isinstance(ports, list)
            or len(ports) != 2
            or not all(isinstance(p, int) and 0 < p < 65536 for p in ports)
            or ports[0] == ports[1]
        ):
            raise ConfigError(
                f"Config 'service.private_ports' has value {ports!r}. Give two different ports, e.g. [18081, 18082]."
            )
        public = r.port("service", "public_port", 8080)
        if public in ports:
            raise ConfigError(f"Config 'service.public_port' ({public}) must differ from service.private_ports.")
        env = r.get("service", "env", {})
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ConfigError(f"Config 'service.env' has value {env!r}. Use a table of strings.")
        handover = r.string("agent", "handover", "iptables")
        if handover not in ("iptables", "none"):
            raise ConfigError(f"Config 'agent.handover' has value {handover!r}. Use 'iptables' (or 'none' in tests).")
        namespace = r.string("containerd", "namespace", "otaml")
        if not _NAMESPACE.fullmatch(namespace):
            raise ConfigError(
                f"Config 'containerd.namespace' has value {namespace!r}. Use letters and digits joined by . _ or -."
            )
        textfile = r.get("agent", "metrics_textfile", "")
        if "verification" in data:
            raise ConfigError(
                f"{where}: the [verification] section (one cosign key) is replaced by [trust]: the device now follows "
                "the fleet's TUF repository. Set [trust] metadata_url, trusted_root and model (see "
                "deploy/agent.example.toml), and remove [verification]."
            )
        insecure = r.flag("trust", "insecure")
        metadata_url = r.string("trust", "metadata_url", "")
        if not insecure and not metadata_url:
            raise ConfigError(
                f"{where}: missing 'trust.metadata_url'. The agent runs only images the fleet's TUF repository "
                "approves: set [trust] metadata_url (the served metadata directory, e.g. https://mlops/otaml/), "
                "trusted_root and model. To accept any image from the channel tag instead (development only), "
                "set [trust] insecure = true explicitly; status and metrics then report the device as insecure."
            )
        if metadata_url and not metadata_url.startswith(("http://", "https://")):
            raise ConfigError(f"Config 'trust.metadata_url' has value {metadata_url!r}. Use an http(s) URL.")
        model = r.string("trust", "model", "")
        if metadata_url and not model:
            raise ConfigError(f"{where}: missing 'trust.model': the registered model name this device runs.")
        groups = r.get("device", "groups", {})
        if not isinstance(groups, dict) or not all(isinstance(v, str) for v in groups.values()):
            raise ConfigError(
                f"Config 'device.groups' has value {groups!r}. Use a table of strings, e.g. hw = \"pi4\"."
            )
        tuf_dir = r.string("trust", "metadata_dir", "")
        device_id = r.string("device", "id", "") or _platform.node() or "device"
        try:
            check_id("device id", device_id)
        except InputError:
            raise ConfigError(
                f"Config 'device.id' has value {device_id!r}. Use letters, digits, '.', '_' or '-' (max 64)."
            ) from None
        fleet = fleet_settings(data, where, device_id=device_id, groups=dict(groups))
        return cls(
            registry_url=url.rstrip("/"),
            repository=r.string("registry", "repository"),
            channel=r.string("registry", "channel", "production"),
            registry_timeout_s=r.number("registry", "timeout_s", 10.0),
            token_hosts=_hosts(r.get("registry", "token_hosts", [])),
            poll_interval_s=r.number("poll", "interval_s", 30.0),
            poll_jitter=r.number("poll", "jitter", 0.2, upper=1.0, zero_ok=True),
            backoff_base_s=r.number("poll", "backoff_base_s", 2.0),
            backoff_max_s=r.number("poll", "backoff_max_s", 300.0),
            containerd_socket=r.string("containerd", "socket", "/run/containerd/containerd.sock"),
            namespace=namespace,
            ctr_path=r.string("containerd", "ctr", "ctr"),
            platform=r.string("containerd", "platform", "") or device_platform(),
            public_port=public,
            private_ports=(ports[0], ports[1]),
            service_host=r.string("service", "host", "0.0.0.0"),
            memory_mb=int(r.number("service", "memory_mb", 100)),
            cpus=r.number("service", "cpus", 0.25),
            service_env=_service_env(env, fleet),
            drain_s=r.number("service", "drain_s", 5.0, zero_ok=True),
            switch_grace_s=r.number("service", "switch_grace_s", 1.0, zero_ok=True),
            stop_timeout_s=r.number("service", "stop_timeout_s", 15.0),
            probation_s=r.number("update", "probation_s", 60.0, zero_ok=True),
            ready_timeout_s=r.number("update", "ready_timeout_s", 60.0),
            health_timeout_s=r.number("update", "health_timeout_s", 2.0),
            health_interval_s=r.number("update", "health_interval_s", 2.0),
            unhealthy_after=int(r.number("update", "unhealthy_after", 3)),
            warm_rollback=r.warm("update", "warm_rollback"),
            prefetch=r.flag("update", "prefetch"),
            warm_min_available_mb=int(r.number("update", "warm_min_available_mb", 256, zero_ok=True)),
            state_dir=Path(r.string("agent", "state_dir", "/var/lib/otaml-agent")),
            metrics_textfile=Path(textfile) if textfile else None,
            handover=handover,
            trust_metadata_url=metadata_url,
            trusted_root=Path(r.string("trust", "trusted_root", "/etc/otaml/root.json")),
            trust_metadata_dir=Path(tuf_dir) if tuf_dir else None,
            model=model,
            insecure=insecure,
            device_id=device_id,
            groups=dict(groups),
            fleet=fleet,
            field_interval_s=r.number("agent", "field_interval_s", 300.0),
        )


def _hosts(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(h, str) and h and "/" not in h for h in value):
        raise ConfigError(
            f"Config 'registry.token_hosts' has value {value!r}. Use a list of host[:port] names, e.g. "
            '["auth.example.com"].'
        )
    return tuple(value)


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate the agent's TOML file."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"Agent config {file} does not exist. Copy deploy/agent.example.toml there and edit it."
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Agent config {file} is not valid TOML: {exc}.") from exc
    return AgentConfig.from_mapping(data, str(file))


class _Reader:
    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self.data = data
        self.where = where

    def get(self, section: str, key: str, default: Any = None) -> Any:
        table = self.data.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{self.where}: '{section}' must be a table ([{section}]), got {table!r}.")
        if key not in table:
            if default is None:
                raise ConfigError(f"{self.where}: missing '{section}.{key}'. Add it under [{section}].")
            return default
        return table[key]

    def string(self, section: str, key: str, default: str | None = None) -> str:
        value = self.get(section, key, default)
        if not isinstance(value, str):
            raise ConfigError(f"Config '{section}.{key}' has value {value!r}. Not a string.")
        return value

    def number(
        self, section: str, key: str, default: float, upper: float | None = None, zero_ok: bool = False
    ) -> float:
        value = self.get(section, key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"Config '{section}.{key}' has value {value!r}. Not a number; expected e.g. {default}.")
        if value < 0 or (value == 0 and not zero_ok) or (upper is not None and value > upper):
            bound = f"0..{upper}" if upper is not None else ("≥ 0" if zero_ok else "> 0")
            raise ConfigError(f"Config '{section}.{key}' has value {value!r}. Out of range; expected {bound}.")
        return float(value)

    def flag(self, section: str, key: str, default: bool = False) -> bool:
        value = self.get(section, key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"Config '{section}.{key}' has value {value!r}. Use true or false.")
        return value

    def warm(self, section: str, key: str) -> str:
        value = self.get(section, key, "auto")
        if value is True or value is False:
            return "on" if value else "off"
        if value not in ("auto", "on", "off"):
            raise ConfigError(
                f"Config '{section}.{key}' has value {value!r}. Use \"auto\" (keep the previous container warm "
                "when the device has the memory), true or false."
            )
        return str(value)

    def port(self, section: str, key: str, default: int) -> int:
        value = self.get(section, key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise ConfigError(f"Config '{section}.{key}' has value {value!r}. Not a valid port; expected 1..65535.")
        return value


def _service_env(env: Mapping[str, str], fleet: FleetSettings | None) -> dict[str, str]:
    """``[service] env``, with the service's window capture on when ``[fleet] capture_windows`` asks for it."""
    out = dict(env)
    if fleet is not None and fleet.capture_windows:
        out.setdefault("OTAML_CAPTURE_WINDOWS", "true")
    return out
