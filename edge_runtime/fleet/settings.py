"""The device's fleet-channel settings: the ``[fleet]`` table of the agent's TOML configuration.

::

    [fleet]
    broker_host = "mqtt.example.org"
    broker_port = 8883                  # default 1883, 8883 with tls_ca
    fleet = "plant-3"
    device_id = "pi-0042"               # default: the caller's (the agent's [device] id, else the hostname)
    username = "pi-0042"                # default: the device id (the broker's ACL keys on it)
    password_file = "/etc/otaml/mqtt.password"
    tls_ca = "/etc/otaml/mqtt-ca.pem"   # optional: TLS to the broker, verified against this CA
    keepalive_s = 300                   # a silent device is marked offline after 1.5 × this
    heartbeat_s = 900                   # an unchanged state is republished (last_seen) this often
    max_events = 100                    # events kept while the broker is away; the oldest are dropped

    [fleet.groups]                      # default: the caller's (the agent's [device] groups)
    hw = "pi4"
    site = "plant-3"

No ``[fleet]`` table: the device does not report (:func:`fleet_settings` returns ``None``). Every bad value is
reported with its key, e.g. ``Config 'fleet.broker_port' has value 0. Not a valid port; expected 1..65535.``
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.errors import InputError
from edge_runtime.fleet.messages import check_id


class FleetConfigError(InputError):
    """The ``[fleet]`` configuration is malformed, or its password file cannot be read."""


@dataclass(frozen=True)
class FleetSettings:
    """Where and as whom the device reports; build it with :func:`fleet_settings`."""

    device_id: str
    fleet: str = "default"
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    groups: Mapping[str, str] = field(default_factory=dict)
    username: str = ""
    password_file: Path | None = None
    tls_ca: Path | None = None
    keepalive_s: int = 300
    heartbeat_s: float = 900.0
    max_events: int = 100
    reconnect_min_s: int = 1
    reconnect_max_s: int = 120
    # Opt-in: anomaly events carry the raw readings the model saw for them (docs/field.md, "what leaves the
    # device"); the agent turns the service's capture on (OTAML_CAPTURE_WINDOWS) with it.
    capture_windows: bool = False

    @property
    def user(self) -> str:
        return self.username or self.device_id

    def password(self) -> str | None:
        """The password from ``password_file`` (first line, stripped); ``None`` without one."""
        if self.password_file is None:
            return None
        try:
            text = self.password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise FleetConfigError(
                f"Config 'fleet.password_file' is {str(self.password_file)!r}, which cannot be read: {exc.strerror}. "
                "Create it (mode 0600) with the device's broker password."
            ) from exc
        lines = text.splitlines()
        if not lines or not lines[0].strip():
            raise FleetConfigError(
                f"Config 'fleet.password_file' {str(self.password_file)!r} is empty. "
                "Put the password on its first line."
            )
        return lines[0].strip()


def fleet_settings(
    data: Mapping[str, Any],
    where: str = "agent config",
    *,
    device_id: str | None = None,
    groups: Mapping[str, str] | None = None,
) -> FleetSettings | None:
    """The ``[fleet]`` table of a decoded agent configuration, validated; ``None`` when there is none.

    ``device_id`` and ``groups`` are the defaults for the keys of the same name (the agent passes its own)."""
    if "fleet" not in data:
        return None
    table = data["fleet"]
    if not isinstance(table, Mapping):
        raise FleetConfigError(f"{where}: 'fleet' must be a table ([fleet]), got {table!r}.")
    known = {f for f in FleetSettings.__dataclass_fields__} - {"reconnect_min_s", "reconnect_max_s"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise FleetConfigError(f"{where}: unknown key 'fleet.{unknown[0]}'. Known keys: {', '.join(sorted(known))}.")
    device_id = _string(table, "device_id", device_id or None)
    fleet = _string(table, "fleet", "default")
    for key, value in (("device_id", device_id), ("fleet", fleet)):
        try:
            check_id(key, value)
        except InputError:
            raise FleetConfigError(
                f"Config 'fleet.{key}' has value {value!r}. Use letters, digits, '.', '_' or '-' (max 64)."
            ) from None
    tls_ca = _string(table, "tls_ca", "")
    password_file = _string(table, "password_file", "")
    groups = table.get("groups", groups or {})
    if (
        not isinstance(groups, Mapping)
        or len(groups) > 16
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in groups.items())
    ):
        raise FleetConfigError(
            f"Config 'fleet.groups' has value {groups!r}. Use a table of at most 16 strings, e.g. "
            '[fleet.groups] hw = "pi4".'
        )
    return FleetSettings(
        device_id=device_id,
        fleet=fleet,
        broker_host=_string(table, "broker_host", "127.0.0.1"),
        broker_port=_port(table, "broker_port", 8883 if tls_ca else 1883),
        groups=dict(groups),
        username=_string(table, "username", ""),
        password_file=Path(password_file) if password_file else None,
        tls_ca=Path(tls_ca) if tls_ca else None,
        keepalive_s=int(_number(table, "keepalive_s", 300, lower=5)),
        heartbeat_s=_number(table, "heartbeat_s", 900.0, lower=1),
        max_events=int(_number(table, "max_events", 100, lower=1)),
        capture_windows=_flag(table, "capture_windows"),
    )


def _flag(table: Mapping[str, Any], key: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise FleetConfigError(f"Config 'fleet.{key}' has value {value!r}. Use true or false.")
    return value


def _string(table: Mapping[str, Any], key: str, default: str | None) -> str:
    if key not in table:
        if default is None:
            raise FleetConfigError(f"Config is missing 'fleet.{key}'. Add it under [fleet].")
        return default
    value = table[key]
    if not isinstance(value, str) or (default is None and not value):
        raise FleetConfigError(f"Config 'fleet.{key}' has value {value!r}. Not a (non-empty) string.")
    return value


def _port(table: Mapping[str, Any], key: str, default: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise FleetConfigError(f"Config 'fleet.{key}' has value {value!r}. Not a valid port; expected 1..65535.")
    return value


def _number(table: Mapping[str, Any], key: str, default: float, lower: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FleetConfigError(f"Config 'fleet.{key}' has value {value!r}. Not a number; expected e.g. {default}.")
    if value < lower:
        raise FleetConfigError(f"Config 'fleet.{key}' has value {value!r}. Out of range; expected ≥ {lower:g}.")
    return float(value)
