"""The device's MQTT reporter: what it sends, when, and what it keeps while the broker is away.

Unit tests drive it through a fake paho client (the I/O seam); the ``integration`` tests run it against a real
Mosquitto (``mqtt_broker``) with the fleet's ACL: retained state for late subscribers, the Last Will of a killed
device, a broker outage and its return on the same port.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from edge_runtime.fleet.messages import DeviceEvent, DeviceState, device_topic, parse_event, parse_state
from edge_runtime.fleet.reporter import OFFLINE, ONLINE, Reporter, stop_network
from edge_runtime.fleet.settings import FleetConfigError, FleetSettings
from otaml.localstack import LocalBroker, missing_tools, write_tls
from registry.fleet.collect import collect
from tests.conftest import require

REPO = Path(__file__).resolve().parents[3]


# -- the seam: a fake paho client --------------------------------------------------------------------------------


@dataclass
class Info:
    rc: int

    def wait_for_publish(self, timeout: float) -> None:
        pass


@dataclass
class FakeClient:
    connected: bool = False
    published: list[tuple[str, bytes, int, bool]] = field(default_factory=list)
    calls: dict[str, Any] = field(default_factory=dict)
    on_connect: Any = None
    on_disconnect: Any = None

    def username_pw_set(self, user: str, password: str | None) -> None:
        self.calls["auth"] = (user, password)

    def will_set(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.calls["will"] = (topic, payload, qos, retain)

    def tls_set(self, ca_certs: str) -> None:
        self.calls["tls"] = ca_certs

    def reconnect_delay_set(self, min_delay: int, max_delay: int) -> None:
        self.calls["backoff"] = (min_delay, max_delay)

    def max_queued_messages_set(self, n: int) -> None:
        self.calls["queue"] = n

    def connect_async(self, host: str, port: int, keepalive: int) -> None:
        self.calls["connect"] = (host, port, keepalive)

    def loop_start(self) -> None:
        pass

    def loop_stop(self) -> None:
        self.calls["stopped"] = True

    def disconnect(self) -> None:
        self.connected = False

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> Info:
        if not self.connected:
            return Info(mqtt.MQTT_ERR_NO_CONN)
        self.published.append((topic, payload, qos, retain))
        return Info(mqtt.MQTT_ERR_SUCCESS)

    # what the broker does
    def accept(self) -> None:
        self.connected = True
        self.on_connect(self, None, None, ReasonCode(mqtt.PacketTypes.CONNACK, identifier=0), None)

    def drop(self) -> None:
        self.connected = False
        self.on_disconnect(self, None, None, ReasonCode(mqtt.PacketTypes.DISCONNECT, identifier=0x80), None)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


SETTINGS = FleetSettings(device_id="pi-a", fleet="f", groups={"hw": "pi4"}, heartbeat_s=900, max_events=3)


@pytest.fixture
def fake() -> Iterator[tuple[Reporter, FakeClient, Clock]]:
    client, clock = FakeClient(), Clock()
    reporter = Reporter(SETTINGS, clock=clock, client_factory=lambda s: client).start()
    yield reporter, client, clock
    reporter.close()


def topics(client: FakeClient) -> list[str]:
    return [t.rsplit("/", 1)[1] for t, *_ in client.published]


def test_a_second_start_is_refused_and_a_closed_reporter_stops_its_loop(
    fake: tuple[Reporter, FakeClient, Clock],
) -> None:
    # A second client would share the first one's client id: the broker would keep switching between them.
    reporter, client, _ = fake
    with pytest.raises(RuntimeError, match="already started"):
        reporter.start()
    with pytest.raises(RuntimeError, match="already started"):
        reporter.__enter__()
    client.accept()
    reporter.close()
    assert client.calls["stopped"] is True
    assert not client.connected


class StuckLoop(FakeClient):
    release = threading.Event()

    def loop_stop(self) -> None:
        self.release.wait(30)


def test_a_network_thread_that_does_not_stop_is_left_behind_in_bounded_time() -> None:
    client = StuckLoop()
    client.connected = True
    started = time.monotonic()
    assert stop_network(client, timeout_s=0.2) is False
    assert time.monotonic() - started < 10  # not the 30 s the loop would hold a caller
    StuckLoop.release.set()
    assert not client.connected  # disconnected first
    assert stop_network(FakeClient(), timeout_s=5) is True


def test_configures_will_credentials_and_backoff(fake: tuple[Reporter, FakeClient, Clock]) -> None:
    _, client, _ = fake
    assert client.calls["will"] == ("otaml/f/devices/pi-a/availability", OFFLINE, 1, True)
    assert client.calls["auth"] == ("pi-a", None)
    assert client.calls["connect"] == ("127.0.0.1", 1883, 300)
    assert client.calls["backoff"] == (1, 120)
    assert "tls" not in client.calls


def test_keeps_latest_state_and_bounded_events_until_connected(fake: tuple[Reporter, FakeClient, Clock]) -> None:
    reporter, client, _ = fake
    assert reporter.publish_state(DeviceState("ignored", version=1))
    assert reporter.publish_state(DeviceState("ignored", version=2))
    for i in range(5):
        assert reporter.publish_event(DeviceEvent("pi-a", "update", float(i), outcome="updated", version=i))
    reporter.publish_field(b'{"anomaly_ratio":0.0}')
    stats = reporter.stats()
    assert (stats.state_pending, stats.events_pending, stats.events_dropped) == (True, 3, 2)
    assert client.published == []

    client.accept()
    assert topics(client) == ["availability", "state", "field", "events", "events", "events"]
    assert client.published[0][1:] == (ONLINE, 1, True)
    state = parse_state(client.published[1][1], device_id="pi-a")
    assert (state.version, dict(state.groups)) == (2, {"hw": "pi4"})  # the latest only, groups from the settings
    assert [parse_event(p).version for _, p, *_ in client.published[3:]] == [2, 3, 4]  # the oldest two dropped
    assert all(retain for _, _, _, retain in client.published[:3])
    assert not any(retain for _, _, _, retain in client.published[3:])
    assert reporter.stats().events_pending == 0


def test_unchanged_state_is_sent_again_only_after_the_heartbeat(fake: tuple[Reporter, FakeClient, Clock]) -> None:
    reporter, client, clock = fake
    client.accept()
    base = len(client.published)
    serving = DeviceState("pi-a", version=3, phase="serving")
    assert reporter.publish_state(serving)
    clock.now += 60
    assert not reporter.publish_state(serving)  # same content a minute later: nothing on the wire
    assert not reporter.heartbeat()
    assert len(client.published) == base + 1
    assert reporter.publish_state(DeviceState("pi-a", version=3, phase="updating"))  # a change goes at once
    assert len(client.published) == base + 2
    clock.now += 900
    assert reporter.heartbeat()  # the heartbeat refreshes last_seen of the unchanged state
    assert parse_state(client.published[-1][1]).last_seen == clock.now
    assert reporter.stats().deduplicated == 1


def test_an_unchanged_field_summary_is_not_sent_again(fake: tuple[Reporter, FakeClient, Clock]) -> None:
    reporter, client, _ = fake
    client.accept()
    assert reporter.publish_field(b'{"anomaly_ratio":0.1}')
    assert not reporter.publish_field(b'{"anomaly_ratio":0.1}')
    assert reporter.publish_field(b'{"anomaly_ratio":0.2}')
    assert [p for t, p, *_ in client.published if t.endswith("/field")] == [
        b'{"anomaly_ratio":0.1}',
        b'{"anomaly_ratio":0.2}',
    ]


def test_a_dropped_connection_keeps_what_could_not_be_sent(fake: tuple[Reporter, FakeClient, Clock]) -> None:
    reporter, client, _ = fake
    client.accept()
    client.drop()
    reporter.publish_event(DeviceEvent("pi-a", "update", 1.0, outcome="rolled_back", reason="unhealthy"))
    reporter.publish_state(DeviceState("pi-a", version=4))
    assert reporter.stats().events_pending == 1
    client.accept()
    assert topics(client)[-3:] == ["availability", "state", "events"]
    sent = [parse_event(p) for t, p, *_ in client.published if t.endswith("/events")]
    assert [(e.outcome, e.reason) for e in sent] == [("rolled_back", "unhealthy")]
    assert parse_state([p for t, p, *_ in client.published if t.endswith("/state")][-1]).version == 4
    assert reporter.stats().connects == 2


def test_oversized_documents_are_counted_not_sent_or_raised(fake: tuple[Reporter, FakeClient, Clock]) -> None:
    reporter, client, _ = fake
    client.accept()
    base = len(client.published)
    assert not reporter.publish_event(DeviceEvent("pi-a", "anomaly", 1.0, detail={"x": "y" * 5000}))
    assert not reporter.publish_field(b"z" * 5000)
    assert len(client.published) == base
    assert reporter.stats().rejected == 2


def test_a_refusal_is_recorded_and_nothing_is_sent(fake: tuple[Reporter, FakeClient, Clock]) -> None:
    reporter, client, _ = fake
    reporter.publish_state(DeviceState("pi-a"))
    client.on_connect(client, None, None, ReasonCode(mqtt.PacketTypes.CONNACK, identifier=0x87), None)
    stats = reporter.stats()
    assert (stats.connected, stats.state_pending) == (False, True)
    assert "authori" in stats.last_refusal.lower()


def test_an_unreadable_ca_file_is_a_configuration_error(tmp_path: Path) -> None:
    settings = FleetSettings(device_id="pi-a", tls_ca=tmp_path / "missing-ca.pem")
    with pytest.raises(FleetConfigError, match=r"'fleet.tls_ca' is .*missing-ca.pem.*not a readable CA file"):
        Reporter(settings).start()  # the real paho client: it loads the CA before any network


# -- the real broker ---------------------------------------------------------------------------------------------


def device_settings(broker: LocalBroker, device: str, **extra: Any) -> FleetSettings:
    assert broker.instance is not None
    return FleetSettings(
        device_id=device,
        fleet="f",
        broker_port=broker.instance.port,
        password_file=broker.password_file(device),
        groups={"hw": "pi4"},
        **extra,
    )


def wait_for(predicate: Any, what: str, bound_s: float = 30.0) -> None:
    """Wait for a condition that must happen; the bound only stops a broken test from hanging."""
    deadline = time.monotonic() + bound_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


class Watcher:
    """A controller subscribed to the whole fleet, recording every message it receives."""

    def __init__(self, broker: LocalBroker) -> None:
        assert broker.instance is not None
        self.messages: list[tuple[str, bytes, bool]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch-{os.getpid()}")
        self.client.username_pw_set("controller", broker.password("controller"))
        self.client.on_connect = lambda c, *a: c.subscribe("otaml/f/#", qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload, m.retain))
        self.client.connect(broker.instance.host, broker.instance.port)
        self.client.loop_start()
        wait_for(self.subscribed.is_set, "the controller's subscription")

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in list(self.messages) if t == topic]

    def close(self) -> None:
        stop_network(self.client)


@pytest.mark.integration
def test_late_subscriber_sees_retained_state_field_and_online(mqtt_broker: LocalBroker) -> None:
    with Reporter(device_settings(mqtt_broker, "pi-a")) as reporter:
        reporter.publish_state(DeviceState("pi-a", model="pump", version=3, phase="serving", health="ok"))
        reporter.publish_field(b'{"anomaly_ratio":0.02}')
        wait_for(lambda: reporter.stats().published >= 3, "state, field and online published")
        assert mqtt_broker.instance is not None
        snap = collect(
            mqtt_broker.instance.host, mqtt_broker.instance.port, "f", password=mqtt_broker.password("controller")
        )
    view = snap.devices["pi-a"]
    assert view.state is not None
    assert (view.state.model, view.state.version, view.state.health, view.online) == ("pump", 3, "ok", True)
    assert view.field_summary == {"anomaly_ratio": 0.02}
    assert sum(snap.rejected.values()) == 0


@pytest.mark.integration
def test_a_device_cannot_write_another_devices_topics(mqtt_broker: LocalBroker) -> None:
    assert mqtt_broker.instance is not None
    watcher = Watcher(mqtt_broker)
    try:
        with Reporter(device_settings(mqtt_broker, "pi-b")) as b:
            b.publish_state(DeviceState("pi-b", version=7, phase="serving"))
            b_state = device_topic("f", "pi-b", "state")
            wait_for(lambda: watcher.on(b_state), "pi-b's own state")
            # pi-a, with its own valid credentials, writes on pi-b's topics, then a marker on its own topic.
            forger = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pi-a")
            forger.username_pw_set("pi-a", mqtt_broker.password("pi-a"))
            forger.connect(mqtt_broker.instance.host, mqtt_broker.instance.port)
            forger.loop_start()
            forged = DeviceState("pi-b", version=666, phase="serving").to_json()
            for kind, payload in (("state", forged), ("availability", b"offline"), ("events", forged)):
                forger.publish(
                    device_topic("f", "pi-b", kind), payload, qos=1, retain=kind != "events"
                ).wait_for_publish(10)
            # Below its own topics it writes nothing either (no retained sub-topics for every reader to download).
            forger.publish(device_topic("f", "pi-a", "state") + "/junk", b"{}", qos=1, retain=True).wait_for_publish(10)
            marker = device_topic("f", "pi-a", "events")
            forger.publish(marker, DeviceEvent("pi-a", "update", 1.0).to_json(), qos=1).wait_for_publish(10)
            # One connection's messages arrive in order: once the marker is here, the forgeries would be too.
            wait_for(lambda: watcher.on(marker), "pi-a's marker on its own topic")
            stop_network(forger)
            on_b = [(t, p) for t, p, _ in watcher.messages if "/devices/pi-b/" in t]
            assert [t.rsplit("/", 1)[1] for t, _ in on_b] == ["availability", "state"], on_b
            assert on_b[0][1] == b"online"
            assert parse_state(on_b[1][1]).version == 7
            snap = collect(
                mqtt_broker.instance.host, mqtt_broker.instance.port, "f", password=mqtt_broker.password("controller")
            )
            state = snap.devices["pi-b"].state
            assert state is not None
            assert (state.version, snap.devices["pi-b"].online) == (7, True)
            assert not [t for t, _, _ in watcher.messages if t.endswith("/junk")]  # the marker came after it
            # A message far over the fleet's 4,096-byte cap never reaches the broker's store (max_packet_size).
            big = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pi-a-big")
            big.username_pw_set("pi-a", mqtt_broker.password("pi-a"))
            big.connect(mqtt_broker.instance.host, mqtt_broker.instance.port)
            big.loop_start()
            with contextlib.suppress(Exception):  # the broker drops the connection instead of acknowledging
                big.publish(device_topic("f", "pi-a", "state"), b" " * 20_000, qos=1, retain=True).wait_for_publish(3)
            stop_network(big)
            snap = collect(
                mqtt_broker.instance.host, mqtt_broker.instance.port, "f", password=mqtt_broker.password("controller")
            )
            assert "oversized" not in snap.rejected, snap.rejected_samples
    finally:
        watcher.close()


KILLABLE_DEVICE = """
import sys, time
from pathlib import Path
from edge_runtime.fleet.messages import DeviceState
from edge_runtime.fleet.reporter import Reporter
from edge_runtime.fleet.settings import FleetConfigError, FleetSettings
settings = FleetSettings(device_id="pi-c", fleet="f", broker_port=int(sys.argv[1]), password_file=Path(sys.argv[2]))
reporter = Reporter(settings).start()
reporter.publish_state(DeviceState("pi-c", version=2, phase="serving"))
while not reporter.stats().published >= 2:
    time.sleep(0.02)
print("reporting", flush=True)
time.sleep(600)
"""


@pytest.mark.integration
def test_the_last_will_marks_a_killed_device_offline(mqtt_broker: LocalBroker) -> None:
    assert mqtt_broker.instance is not None
    watcher = Watcher(mqtt_broker)
    availability = device_topic("f", "pi-c", "availability")
    device = subprocess.Popen(
        [sys.executable, "-c", KILLABLE_DEVICE, str(mqtt_broker.instance.port), str(mqtt_broker.password_file("pi-c"))],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert device.stdout is not None
        assert device.stdout.readline().strip() == "reporting"
        wait_for(lambda: watcher.on(availability) == [b"online"], "pi-c online")
        wait_for(lambda: watcher.on(device_topic("f", "pi-c", "state")), "pi-c's state at the broker")
        device.send_signal(signal.SIGKILL)  # no clean disconnect: the kernel closes its socket
        device.wait(30)
        wait_for(lambda: watcher.on(availability)[-1:] == [b"offline"], "the Last Will")
    finally:
        device.kill()
        device.wait()
        watcher.close()
    snap = collect(
        mqtt_broker.instance.host, mqtt_broker.instance.port, "f", password=mqtt_broker.password("controller")
    )
    view = snap.devices["pi-c"]
    assert view.online is False
    assert view.state is not None
    assert view.state.version == 2  # the last state stays, retained


@pytest.mark.integration
def test_broker_outage_keeps_a_bounded_backlog_and_flushes_on_return(mqtt_broker: LocalBroker) -> None:
    assert mqtt_broker.instance is not None
    # The device retries 3 s after the outage began: the watcher below subscribes long before it is back.
    settings = device_settings(mqtt_broker, "pi-a", max_events=10, reconnect_min_s=3)
    with Reporter(settings) as reporter:
        reporter.publish_state(DeviceState("pi-a", version=1, phase="serving"))
        wait_for(lambda: reporter.stats().published >= 2, "the first state")
        mqtt_broker.stop()
        wait_for(lambda: not reporter.stats().connected, "the reporter noticing the outage")
        for i in range(25):  # the agent keeps working: every call returns, nothing raises
            reporter.publish_event(DeviceEvent("pi-a", "update", float(i), outcome="updated", version=i))
        reporter.publish_state(DeviceState("pi-a", version=24, phase="serving", last_outcome="updated"))
        stats = reporter.stats()
        assert (stats.events_pending, stats.events_dropped, stats.state_pending) == (10, 15, True)

        mqtt_broker.start()  # same port, no persistence: the broker lost every retained message
        watcher = Watcher(mqtt_broker)
        try:
            events = device_topic("f", "pi-a", "events")
            wait_for(lambda: len(watcher.on(events)) == 10, "the ten kept events")
            assert [parse_event(p).version for p in watcher.on(events)] == list(range(15, 25))
            state = parse_state(watcher.on(device_topic("f", "pi-a", "state"))[-1])
            assert state.version == 24
            assert watcher.on(device_topic("f", "pi-a", "availability"))[-1] == b"online"
        finally:
            watcher.close()
        stats = reporter.stats()
        assert (stats.connects, stats.events_pending, stats.state_pending) == (2, 0, False)
    log = json.dumps(stats.__dict__)
    assert '"events_dropped": 15' in log


@pytest.mark.integration
def test_reports_over_tls_verified_against_the_ca(tmp_path: Path) -> None:
    require(not missing_tools(LocalBroker.TOOLS), "mosquitto (MQTT broker)", "apt-get install -y mosquitto")
    broker = LocalBroker(tmp_path / "mqtt-tls", devices=["pi-a"], tls=True)
    with broker as instance:
        settings = device_settings(broker, "pi-a", tls_ca=broker.ca_file)
        with Reporter(settings) as reporter:
            reporter.publish_state(DeviceState("pi-a", version=5, phase="serving"))
            wait_for(lambda: reporter.stats().published >= 2, "online and the state, over TLS")
        snap = collect(instance.host, instance.port, "f", password=broker.password("controller"), tls_ca=broker.ca_file)
        state = snap.devices["pi-a"].state
        assert state is not None
        assert state.version == 5
        # A CA that did not sign the broker's certificate: the handshake fails, nothing is sent.
        write_tls(tmp_path / "other-ca")
        with Reporter(device_settings(broker, "pi-a", tls_ca=tmp_path / "other-ca" / "ca.pem")) as stranger:
            stranger.publish_state(DeviceState("pi-a", version=6))
            wait_for(lambda: "alert unknown ca" in broker.log.read_text(), "the broker logging the refused handshake")
            stats = stranger.stats()
            assert (stats.connected, stats.connects, stats.published, stats.state_pending) == (False, 0, 0, True)
        snap = collect(instance.host, instance.port, "f", password=broker.password("controller"), tls_ca=broker.ca_file)
        state = snap.devices["pi-a"].state
        assert state is not None
        assert state.version == 5
