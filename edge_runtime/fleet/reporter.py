"""The device's MQTT client: it publishes the device's state, events and field summary to the fleet broker.

``Reporter(settings).start()`` connects in paho's own network thread (``connect_async`` + ``loop_start``) as the
device's user, with a Last Will that sets ``availability`` to ``offline`` (retained); on every connect it
publishes ``online``, then the latest state and field summary (the broker may have lost them) and the events kept
while it was away. What the agent calls never blocks on the network and never raises because of the broker:

- :meth:`Reporter.publish_state` stamps ``last_seen`` and publishes a retained state only when it changed, or
  when ``heartbeat_s`` has passed (a heartbeat thread refreshes an unchanged state on its own), so an idle device
  sends a few messages an hour (docs/fleet.md has the measured bytes).
- :meth:`Reporter.publish_event` (QoS 1) and :meth:`Reporter.publish_field` (retained, only when it changed).
- Broker down or unreachable: paho reconnects with back-off (``reconnect_min_s`` doubling up to
  ``reconnect_max_s``); meanwhile the reporter keeps the latest state and field summary and at most
  ``max_events`` events (the oldest are dropped and counted), and sends them when the broker is back.

:meth:`Reporter.stats` tells what happened (sent, deduplicated, kept, dropped). Documents larger than the
contract's cap are not sent (counted as ``rejected``): the broker and the controller would refuse them anyway.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from edge_runtime.fleet.messages import MAX_MESSAGE_BYTES, DeviceEvent, DeviceState, device_topic
from edge_runtime.fleet.settings import FleetConfigError, FleetSettings

log = logging.getLogger("otaml.fleet")

ONLINE = b"online"
OFFLINE = b"offline"
QOS = 1  # every fleet message: at least once; the retained ones are idempotent


@dataclasses.dataclass(frozen=True)
class ReporterStats:
    """What the reporter did so far (``published`` counts messages handed to a live connection)."""

    connected: bool
    connects: int
    published: int
    payload_bytes: int
    deduplicated: int
    state_pending: bool
    events_pending: int
    events_dropped: int
    rejected: int
    last_refusal: str


def stop_network(client: Any, timeout_s: float = 5.0) -> bool:
    """Disconnect ``client`` and stop its network thread, waiting at most ``timeout_s``; ``False`` when the thread
    did not stop in time (it is a daemon: it never holds the process). paho's ``loop_stop`` waits without a bound."""
    client.disconnect()
    stopper = threading.Thread(target=client.loop_stop, name="mqtt-stop", daemon=True)
    stopper.start()
    stopper.join(timeout_s)
    if stopper.is_alive():
        log.warning("the MQTT network thread did not stop within %.0f s; left to end with the process", timeout_s)
        return False
    return True


def paho_client(settings: FleetSettings) -> Any:
    """The paho client a :class:`Reporter` uses (MQTT 3.1.1, client id = username, clean session)."""
    return mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=settings.user,
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )


class Reporter:
    """The device's side of the fleet channel. ``client_factory`` is the I/O seam (tests pass a fake)."""

    def __init__(
        self,
        settings: FleetSettings,
        *,
        clock: Callable[[], float] = time.time,
        client_factory: Callable[[FleetSettings], Any] = paho_client,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._client_factory = client_factory
        self._client: Any = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self._connected = False
        self._connects = 0
        self._published = 0
        self._payload_bytes = 0
        self._deduplicated = 0
        self._rejected = 0
        self._last_refusal = ""
        self._state: DeviceState | None = None
        self._state_key = b""
        self._state_sent_at = float("-inf")
        self._state_pending = False
        self._field: bytes | None = None
        self._events: deque[bytes] = deque()
        self._events_dropped = 0
        self._started = False

    def topic(self, kind: str) -> str:
        return device_topic(self.settings.fleet, self.settings.device_id, kind)

    # -- life cycle -------------------------------------------------------------------------------------------

    def start(self) -> Reporter:
        """Configure the client and start connecting in the background; returns at once.

        Raises :class:`~edge_runtime.fleet.settings.FleetConfigError` only for a password or CA file that cannot
        be read (a configuration error); the broker's absence is never an error here.
        """
        with self._lock:
            if self._started or self._closed.is_set():
                # A second client would take over the first one's session (same client id) and each would keep
                # pushing the other off the broker, both calling back into this reporter.
                raise RuntimeError("this reporter is already started (or closed); use either start() or `with`, once")
            self._started = True
        settings = self.settings
        password = settings.password()
        client = self._client_factory(settings)
        client.username_pw_set(settings.user, password)
        client.will_set(self.topic("availability"), OFFLINE, qos=QOS, retain=True)
        if settings.tls_ca is not None:
            try:
                client.tls_set(ca_certs=str(settings.tls_ca))
            except (OSError, ValueError) as exc:
                raise FleetConfigError(
                    f"Config 'fleet.tls_ca' is {str(settings.tls_ca)!r}, which is not a readable CA file: {exc}. "
                    "Give the PEM file of the CA that signed the broker's certificate."
                ) from exc
        client.reconnect_delay_set(min_delay=settings.reconnect_min_s, max_delay=settings.reconnect_max_s)
        # paho keeps QoS 1 messages that were in flight when a connection dropped; bound that queue too.
        client.max_queued_messages_set(settings.max_events + 10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self._client = client
        client.connect_async(settings.broker_host, settings.broker_port, keepalive=settings.keepalive_s)
        client.loop_start()
        self._heartbeat_thread = threading.Thread(target=self._heartbeat_loop, name="fleet-heartbeat", daemon=True)
        self._heartbeat_thread.start()
        return self

    def close(self, timeout_s: float = 2.0) -> None:
        """Say ``offline`` (when connected, waiting at most ``timeout_s``), disconnect and stop the threads."""
        self._closed.set()
        client = self._client
        if client is None:
            return
        info = None
        with self._lock:
            if self._connected:
                info = client.publish(self.topic("availability"), OFFLINE, qos=QOS, retain=True)
        if info is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout_s)
        stop_network(client, timeout_s)
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout_s)
        self._client = None

    def __enter__(self) -> Reporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the agent calls -----------------------------------------------------------------------------------

    def publish_state(self, state: DeviceState) -> bool:
        """Report ``state`` (device id, groups and ``last_seen`` filled in here). Returns ``False`` when it equals
        the last one reported less than ``heartbeat_s`` ago (nothing sent), ``True`` when sent or kept to send."""
        now = self._clock()
        stamped = dataclasses.replace(
            state,
            device_id=self.settings.device_id,
            groups=dict(state.groups) or dict(self.settings.groups),
            last_seen=now,
        )
        key = dataclasses.replace(stamped, last_seen=0.0).to_json()
        with self._lock:
            fresh = now - self._state_sent_at < self.settings.heartbeat_s
            if key == self._state_key and (self._state_pending or fresh):
                self._deduplicated += 1
                return False
            self._state, self._state_key = stamped, key
            self._send_state(now)
            return True

    def publish_event(self, event: DeviceEvent) -> bool:
        """Send ``event`` (QoS 1), or keep it until the broker is back; ``False`` if it is over the size cap."""
        payload = dataclasses.replace(event, device_id=self.settings.device_id).to_json()
        if len(payload) > MAX_MESSAGE_BYTES:
            log.warning("fleet event of %d bytes not sent: over the %d-byte cap", len(payload), MAX_MESSAGE_BYTES)
            with self._lock:
                self._rejected += 1
            return False
        with self._lock:
            if len(self._events) >= self.settings.max_events:
                self._events.popleft()
                self._events_dropped += 1
            self._events.append(payload)
            self._flush_events()
        return True

    def publish_field(self, summary: bytes) -> bool:
        """Publish the compact field summary (retained); ``False`` if it is over the size cap or the same as the
        last one (the broker still holds that)."""
        if len(summary) > MAX_MESSAGE_BYTES:
            log.warning("field summary of %d bytes not sent: over the %d-byte cap", len(summary), MAX_MESSAGE_BYTES)
            with self._lock:
                self._rejected += 1
            return False
        with self._lock:
            if self._field == summary:
                self._deduplicated += 1
                return False
            self._field = bytes(summary)
            self._send("field", self._field, retain=True)  # kept: sent again on every connect
        return True

    def heartbeat(self) -> bool:
        """Republish the last state with a fresh ``last_seen`` if ``heartbeat_s`` has passed since it was sent, and
        send any events still kept (the heartbeat thread calls this every ``heartbeat_s / 4``, at most 60 s)."""
        now = self._clock()
        with self._lock:
            self._flush_events()  # events paho's bounded queue could not take at reconnect
            if self._state is None or not self._connected or now - self._state_sent_at < self.settings.heartbeat_s:
                return False
            self._send_state(now)
            return True

    def stats(self) -> ReporterStats:
        with self._lock:
            return ReporterStats(
                connected=self._connected,
                connects=self._connects,
                published=self._published,
                payload_bytes=self._payload_bytes,
                deduplicated=self._deduplicated,
                state_pending=self._state_pending,
                events_pending=len(self._events),
                events_dropped=self._events_dropped,
                rejected=self._rejected,
                last_refusal=self._last_refusal,
            )

    # -- internals (callers hold self._lock) --------------------------------------------------------------------

    def _send(self, kind: str, payload: bytes, retain: bool) -> bool:
        if not self._connected or self._client is None:
            return False
        info = self._client.publish(self.topic(kind), payload, qos=QOS, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        self._published += 1
        self._payload_bytes += len(payload)
        return True

    def _send_state(self, now: float) -> None:
        if self._state is None:
            return
        self._state = dataclasses.replace(self._state, last_seen=now)
        sent = self._send("state", self._state.to_json(), retain=True)
        self._state_pending = not sent
        if sent:
            self._state_sent_at = now

    def _flush_events(self) -> None:
        while self._events and self._send("events", self._events[0], retain=False):
            self._events.popleft()

    def _flush(self) -> None:
        self._send("availability", ONLINE, retain=True)
        self._send_state(self._clock())
        if self._field is not None:
            self._send("field", self._field, retain=True)  # kept: sent again on every connect
        self._flush_events()

    # -- paho callbacks (its network thread) --------------------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            # Wrong credentials, not authorised, server unavailable: paho retries with back-off.
            with self._lock:
                self._last_refusal = str(reason_code)
            log.warning(
                "fleet broker %s:%d refused %r: %s",
                self.settings.broker_host,
                self.settings.broker_port,
                self.settings.user,
                reason_code,
            )
            return
        with self._lock:
            self._connected = True
            self._connects += 1
            self._last_refusal = ""
            self._flush()
        log.info("fleet broker %s:%d connected", self.settings.broker_host, self.settings.broker_port)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._lock:
            was = self._connected
            self._connected = False
        if was and not self._closed.is_set():
            log.warning("fleet broker connection lost (%s); reconnecting with back-off", reason_code)

    def _heartbeat_loop(self) -> None:
        period = min(max(self.settings.heartbeat_s / 4, 0.05), 60.0)
        while not self._closed.wait(period):
            try:
                self.heartbeat()
            except Exception:  # the heartbeat must never die; the next tick tries again
                log.exception("fleet heartbeat failed")
