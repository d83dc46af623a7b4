"""Read a fleet's device messages from the broker into a :class:`FleetSnapshot`.

:func:`collect` subscribes as the controller to ``otaml/<fleet>/devices/+/+`` and gathers the retained burst the
broker sends after the subscription (every device's ``state``, ``availability`` and ``field``) plus any live
``events`` seen meanwhile, until no message came for ``quiet_s`` (bounded by ``timeout_s``). It holds no state of
its own: the broker's retained messages are the fleet's state.

Device messages are untrusted input. :class:`FleetCollector` (pure, fed one message at a time) keeps only what
follows the contract (:mod:`edge_runtime.fleet.messages`) and counts everything else by reason, keeping a few
samples to show:

=====================  ====================================================================================
reason                 the message
=====================  ====================================================================================
``oversized``          is larger than ``MAX_MESSAGE_BYTES``
``malformed``          is not the document its topic says (not JSON, wrong field types, bad availability)
``unknown-topic``      is on a topic that is not ``otaml/<fleet>/devices/<id>/<kind>`` of this fleet
``device-mismatch``    names another device than the one whose topic it is on
``unknown-device``     comes from a device not in ``known_devices`` (when the caller gives that list)
=====================  ====================================================================================
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.errors import InputError, OtamlError, TemporaryError
from edge_runtime.fleet.messages import (
    MAX_MESSAGE_BYTES,
    DeviceEvent,
    DeviceState,
    MalformedMessage,
    fleet_filter,
    parse_event,
    parse_state,
    split_topic,
    strict_json,
)
from edge_runtime.fleet.reporter import stop_network

log = logging.getLogger("otaml.fleet")

REASONS = ("oversized", "malformed", "unknown-topic", "device-mismatch", "unknown-device")
MAX_SAMPLES = 20  # rejected messages kept to show (all are counted)
MAX_EVENTS_PER_DEVICE = 20


class BrokerUnavailable(TemporaryError):
    """The broker cannot be reached, or did not answer in time."""

    reason = "broker-unavailable"


class BrokerRefused(OtamlError):
    """The broker refused the controller's connection (credentials) or its subscription (ACL)."""

    reason = "broker-refused"


@dataclass
class DeviceView:
    """What the broker holds about one device. ``online`` is ``None`` when no availability was seen."""

    device_id: str
    state: DeviceState | None = None
    online: bool | None = None
    field_summary: dict[str, Any] | None = None
    field_bytes: int = 0
    events: list[DeviceEvent] = field(default_factory=list)


@dataclass(frozen=True)
class Rejected:
    topic: str
    reason: str
    detail: str


@dataclass
class FleetSnapshot:
    """Every device of one fleet as the broker holds it, and the messages that were refused (by reason)."""

    fleet: str
    collected_at: float
    devices: dict[str, DeviceView] = field(default_factory=dict)
    rejected: Counter[str] = field(default_factory=Counter)
    rejected_samples: list[Rejected] = field(default_factory=list)
    messages: int = 0
    complete: bool = True  # False: the timeout ended the collection before the broker went quiet


class FleetCollector:
    """Folds device messages into a :class:`FleetSnapshot`; never raises on a message."""

    def __init__(
        self, fleet: str, clock: Callable[[], float] = time.time, known_devices: Collection[str] | None = None
    ) -> None:
        self.snapshot = FleetSnapshot(fleet=fleet, collected_at=clock())
        self.known_devices = frozenset(known_devices) if known_devices is not None else None

    def feed(self, topic: str, payload: bytes) -> None:
        snap = self.snapshot
        snap.messages += 1
        try:
            self._fold(topic, bytes(payload))
        except _Refused as exc:
            self._reject(topic, exc.reason, exc.detail)
        except Exception as exc:  # a message no check foresaw: counted, never a crash of the reader
            self._reject(topic, "malformed", f"unreadable: {exc!r}")

    def _reject(self, topic: str, reason: str, detail: str) -> None:
        snap = self.snapshot
        snap.rejected[reason] += 1
        if len(snap.rejected_samples) < MAX_SAMPLES:
            snap.rejected_samples.append(Rejected(topic[:200], reason, detail[:300]))

    def _fold(self, topic: str, payload: bytes) -> None:
        try:
            fleet, device_id, kind = split_topic(topic)
        except MalformedMessage as exc:
            raise _Refused("unknown-topic", str(exc)) from None
        if fleet != self.snapshot.fleet:
            raise _Refused("unknown-topic", f"topic of fleet {fleet!r}, not {self.snapshot.fleet!r}")
        if self.known_devices is not None and device_id not in self.known_devices:
            raise _Refused("unknown-device", f"device {device_id!r} is not one of the fleet's known devices")
        if len(payload) > MAX_MESSAGE_BYTES:
            raise _Refused("oversized", f"{len(payload)} bytes, over the {MAX_MESSAGE_BYTES}-byte cap")
        if kind == "state":
            state = _parse(parse_state, payload)
            _same_device(device_id, state.device_id)
            self._device(device_id).state = state
        elif kind == "events":
            event = _parse(parse_event, payload)
            _same_device(device_id, event.device_id)
            events = self._device(device_id).events
            events.append(event)
            del events[:-MAX_EVENTS_PER_DEVICE]
        elif kind == "availability":
            if payload not in (b"online", b"offline"):
                raise _Refused("malformed", f"availability {payload[:40]!r} is neither 'online' nor 'offline'")
            self._device(device_id).online = payload == b"online"
        else:  # field: a compact JSON object
            try:
                doc = strict_json(payload)
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                raise _Refused("malformed", f"field summary is not JSON: {exc!r}"[:300]) from None
            if not isinstance(doc, dict):
                raise _Refused("malformed", f"field summary is a JSON {type(doc).__name__}, not an object")
            view = self._device(device_id)
            view.field_summary, view.field_bytes = doc, len(payload)

    def _device(self, device_id: str) -> DeviceView:
        return self.snapshot.devices.setdefault(device_id, DeviceView(device_id))


class _Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _parse(parser: Callable[[bytes], Any], payload: bytes) -> Any:
    try:
        return parser(payload)
    except MalformedMessage as exc:
        raise _Refused("malformed", str(exc)) from None


def _same_device(topic_device: str, document_device: str) -> None:
    if topic_device != document_device:
        raise _Refused(
            "device-mismatch", f"message on device {topic_device!r}'s topic names device {document_device!r}"
        )


def paho_client(client_id: str) -> Any:
    import paho.mqtt.client as mqtt

    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)


@contextlib.contextmanager
def subscription(
    host: str,
    port: int,
    topic: str,
    on_message: Callable[[str, bytes], None],
    *,
    username: str = "controller",
    password: str | None = None,
    tls_ca: Path | None = None,
    timeout_s: float = 10.0,
    client_factory: Callable[[str], Any] = paho_client,
) -> Iterator[None]:
    """Connect as ``username``, subscribe to ``topic`` (QoS 1) and call ``on_message(topic, payload)`` from the
    network thread for every message until the ``with`` block ends; entered once the broker acknowledged the
    subscription.

    Raises :class:`BrokerUnavailable` (cannot connect, no answer within ``timeout_s``), :class:`BrokerRefused`, or
    :class:`~edge_runtime.errors.InputError` for a CA file that cannot be used.
    """
    subscribed = threading.Event()
    refused: list[str] = []

    def on_connect(client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            refused.append(f"the broker refused user {username!r}: {reason_code}")
            subscribed.set()
            return
        client.subscribe(topic, qos=1)

    def on_subscribe(client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        if any(code.is_failure for code in reason_codes):
            refused.append(f"the broker refused user {username!r} a subscription to {topic!r}")
        subscribed.set()

    # A fresh client id per run: two status or controller runs at once never push each other off the broker.
    client = client_factory(f"{username}-{os.getpid()}-{secrets.token_hex(3)}")
    client.username_pw_set(username, password)
    if tls_ca is not None:
        try:
            client.tls_set(ca_certs=str(tls_ca))
        except (OSError, ValueError) as exc:
            raise InputError(
                f"the CA file {str(tls_ca)!r} cannot be used: {exc}. Pass the PEM file of the broker's CA (--tls-ca)."
            ) from exc
    client.on_connect, client.on_subscribe = on_connect, on_subscribe

    def deliver(client: Any, userdata: Any, message: Any) -> None:
        # An exception here would end paho's network thread, and with it the subscription, silently.
        try:
            on_message(message.topic, message.payload)
        except Exception:
            log.exception("a message on %r could not be handled; the subscription goes on", message.topic[:200])

    client.on_message = deliver
    try:
        client.connect(host, port, keepalive=max(int(timeout_s) * 2, 10))
    except (OSError, ValueError) as exc:
        raise BrokerUnavailable(
            f"cannot connect to the MQTT broker at {host}:{port}: {exc}. Is it running? Pass --broker host:port."
        ) from exc
    client.loop_start()
    try:
        if not subscribed.wait(timeout_s):
            raise BrokerUnavailable(f"the MQTT broker at {host}:{port} did not answer within {timeout_s:g} s")
        if refused:
            raise BrokerRefused(f"{refused[0]}. Check the controller's username, password and the broker's ACL.")
        yield
    finally:
        stop_network(client)


def collect(
    host: str,
    port: int,
    fleet: str,
    *,
    username: str = "controller",
    password: str | None = None,
    tls_ca: Path | None = None,
    known_devices: Collection[str] | None = None,
    quiet_s: float = 0.5,
    timeout_s: float = 10.0,
    client_factory: Callable[[str], Any] = paho_client,
) -> FleetSnapshot:
    """Subscribe to ``fleet``'s device topics on ``host:port`` and return what the broker holds (only the devices
    of ``known_devices`` when given; the others are counted as ``unknown-device``).

    Raises what :func:`subscription` raises.
    """
    collector = FleetCollector(fleet, known_devices=known_devices)
    lock = threading.Lock()
    last = [time.monotonic()]

    def on_message(topic: str, payload: bytes) -> None:
        with lock:
            collector.feed(topic, payload)
            last[0] = time.monotonic()

    deadline = time.monotonic() + timeout_s
    with subscription(
        host,
        port,
        fleet_filter(fleet),
        on_message,
        username=username,
        password=password,
        tls_ca=tls_ca,
        timeout_s=timeout_s,
        client_factory=client_factory,
    ):
        with lock:
            last[0] = time.monotonic()
        while True:
            now = time.monotonic()
            with lock:
                quiet = now - last[0]
            if quiet >= quiet_s:
                break
            if now >= deadline:
                collector.snapshot.complete = False
                break
            time.sleep(min(quiet_s - quiet, deadline - now) + 0.01)
    with lock:
        return collector.snapshot
