"""Topics and documents of the fleet channel (MQTT). The contract between devices and ``registry.fleet``.

Each device owns ``otaml/<fleet>/devices/<device-id>/``:

=================  ========  ==========================================================================
topic suffix       retained  payload
=================  ========  ==========================================================================
``state``          yes       :class:`DeviceState` as JSON (the device shadow), republished on change
``availability``   yes       ``online`` / ``offline`` (the Last Will sets ``offline``)
``events``         no        :class:`DeviceEvent` as JSON: update outcomes, anomaly events
``field``          yes       the compact field summary of the serving model (≤ 1 kB)
=================  ========  ==========================================================================

Documents are parsed with :func:`parse_state` / :func:`parse_event`; anything else a broker hands over
(oversized, not JSON, wrong types, a topic that names another device) raises :class:`MalformedMessage`,
which readers count and show, never crash on. Pure code: no paho import.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from edge_runtime.errors import InputError

SCHEMA = 1
MAX_MESSAGE_BYTES = 4096  # every fleet document; a device's state is ~500 bytes
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KINDS = ("state", "availability", "events", "field")


class MalformedMessage(InputError):
    """A fleet message that is not what the contract says (size, JSON, fields, topic)."""


def check_id(kind: str, value: str) -> str:
    """A fleet or device id: letters, digits, ``.``, ``_``, ``-`` (max 64; no MQTT wildcards or ``/``)."""
    if not isinstance(value, str) or not ID_RE.match(value):
        raise InputError(f"{kind} {value!r} is not a valid id: use letters, digits, '.', '_' or '-' (max 64)")
    return value


def device_topic(fleet: str, device_id: str, kind: str) -> str:
    """``otaml/<fleet>/devices/<device-id>/<kind>``."""
    if kind not in KINDS:
        raise InputError(f"topic kind {kind!r} is not one of {', '.join(KINDS)}")
    return f"otaml/{check_id('fleet', fleet)}/devices/{check_id('device id', device_id)}/{kind}"


def fleet_filter(fleet: str, kind: str = "+") -> str:
    """The subscription filter for every device's ``kind`` topic (``+`` for all kinds)."""
    return f"otaml/{check_id('fleet', fleet)}/devices/+/{kind}"


def split_topic(topic: str) -> tuple[str, str, str]:
    """``otaml/<fleet>/devices/<id>/<kind>`` -> (fleet, device id, kind); :class:`MalformedMessage` otherwise."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "otaml" or parts[2] != "devices" or parts[4] not in KINDS:
        raise MalformedMessage(f"topic {topic[:200]!r} is not otaml/<fleet>/devices/<id>/<kind>")
    try:
        check_id("fleet", parts[1])
        check_id("device id", parts[3])
    except InputError as exc:
        raise MalformedMessage(f"topic {topic[:200]!r}: {exc}") from exc
    return parts[1], parts[3], parts[4]


@dataclass(frozen=True)
class DeviceState:
    """The retained device shadow. ``phase`` is the agent's phase (``serving``, ``waiting``, ``pulling``,
    ``canary``, ``probation``...); ``trust`` is the last metadata refresh (``ok``, a reason code such as
    ``stale-metadata``, or ``insecure``); ``last_outcome`` and ``last_reason`` are the last update step's outcome
    and reason code; ``health`` is ``ok`` / ``degraded`` / ``unhealthy`` / ``unknown``; times are Unix seconds."""

    device_id: str
    groups: Mapping[str, str] = field(default_factory=dict)  # e.g. {"hw": "pi4", "site": "plant-3"}
    model: str = ""
    version: int = 0  # 0: nothing serving yet
    digest: str = ""
    phase: str = "starting"
    trust: str = ""
    last_outcome: str = ""
    last_reason: str = ""
    rollout_id: str = ""  # the rollout whose decision the device last acted on
    # The rollout under which last_outcome happened ("": rollout_id's, as older agents mean): a failure in an
    # earlier rollout is not the current one's.
    outcome_rollout_id: str = ""
    blocked: tuple[str, ...] = ()
    health: str = "unknown"
    last_seen: float = 0.0
    schema: int = SCHEMA

    def to_json(self) -> bytes:
        doc = asdict(self)
        doc["groups"] = dict(self.groups)
        doc["blocked"] = list(self.blocked)
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class DeviceEvent:
    """One event: ``kind`` is ``update`` (``outcome`` started/updated/rolled_back/refused/error with ``reason``)
    or ``anomaly`` (``detail`` holds stream, time, score, threshold)."""

    device_id: str
    kind: str
    at: float
    outcome: str = ""
    reason: str = ""
    version: int = 0
    detail: Mapping[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA

    def to_json(self) -> bytes:
        doc = asdict(self)
        doc["detail"] = dict(self.detail)
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def strict_json(payload: bytes | str) -> Any:
    """``json.loads`` refusing ``NaN`` and ``Infinity`` (Python accepts them; JSON has no such numbers)."""
    return json.loads(payload, parse_constant=_no_constant)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _load(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"message of {len(payload)} bytes is larger than the {MAX_MESSAGE_BYTES}-byte cap")
    try:
        doc = strict_json(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedMessage(f"message is not JSON: {exc}") from exc
    except RecursionError:  # a few kilobytes of nested brackets
        raise MalformedMessage("message nests JSON arrays or objects too deeply") from None
    if not isinstance(doc, dict):
        raise MalformedMessage(f"message is a JSON {type(doc).__name__}, not an object")
    return doc


def _field(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = doc.get(key, default)
    if isinstance(value, bool) and kind is not bool:
        raise MalformedMessage(f"field {key!r} is a boolean, expected {kind}")
    if not isinstance(value, kind):
        raise MalformedMessage(f"field {key!r} has value {str(value)[:80]!r} of type {type(value).__name__}")
    return value


def _str_map(doc: Mapping[str, Any], key: str) -> dict[str, str]:
    value = _field(doc, key, dict, {})
    if len(value) > 16 or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise MalformedMessage(f"field {key!r} must map at most 16 strings to strings")
    return value


def parse_state(payload: bytes, *, device_id: str | None = None) -> DeviceState:
    """A :class:`DeviceState` from a message; ``device_id`` (from the topic) must match the document's."""
    doc = _load(payload)
    try:
        state = DeviceState(
            device_id=check_id("device id", _field(doc, "device_id", str, "")),
            groups=_str_map(doc, "groups"),
            model=_field(doc, "model", str, ""),
            version=_field(doc, "version", int, 0),
            digest=_field(doc, "digest", str, ""),
            phase=_field(doc, "phase", str, "starting"),
            trust=_field(doc, "trust", str, ""),
            last_outcome=_field(doc, "last_outcome", str, ""),
            last_reason=_field(doc, "last_reason", str, ""),
            rollout_id=_field(doc, "rollout_id", str, ""),
            outcome_rollout_id=_field(doc, "outcome_rollout_id", str, ""),
            blocked=tuple(_field(doc, "blocked", list, [])),
            health=_field(doc, "health", str, "unknown"),
            last_seen=float(_field(doc, "last_seen", (int, float), 0.0)),
            schema=_field(doc, "schema", int, SCHEMA),
        )
    except InputError as exc:
        raise MalformedMessage(f"state message: {exc}") from exc
    if not all(isinstance(d, str) for d in state.blocked):
        raise MalformedMessage("state message: 'blocked' must be a list of digests")
    if device_id is not None and state.device_id != device_id:
        raise MalformedMessage(f"state message on device {device_id!r}'s topic names device {state.device_id!r}")
    return state


def parse_event(payload: bytes, *, device_id: str | None = None) -> DeviceEvent:
    """A :class:`DeviceEvent` from a message; ``device_id`` (from the topic) must match the document's."""
    doc = _load(payload)
    try:
        event = DeviceEvent(
            device_id=check_id("device id", _field(doc, "device_id", str, "")),
            kind=_field(doc, "kind", str, ""),
            at=float(_field(doc, "at", (int, float), 0.0)),
            outcome=_field(doc, "outcome", str, ""),
            reason=_field(doc, "reason", str, ""),
            version=_field(doc, "version", int, 0),
            detail=_field(doc, "detail", dict, {}),
            schema=_field(doc, "schema", int, SCHEMA),
        )
    except InputError as exc:
        raise MalformedMessage(f"event message: {exc}") from exc
    if device_id is not None and event.device_id != device_id:
        raise MalformedMessage(f"event message on device {device_id!r}'s topic names device {event.device_id!r}")
    return event
