"""Folding device messages into a snapshot: what follows the contract is kept, everything else counted by reason."""

from __future__ import annotations

import json

import pytest

from edge_runtime.fleet.messages import MAX_MESSAGE_BYTES, DeviceEvent, DeviceState
from registry.fleet.collect import MAX_EVENTS_PER_DEVICE, MAX_SAMPLES, FleetCollector


def feed(*messages: tuple[str, bytes]) -> FleetCollector:
    collector = FleetCollector("f")
    for topic, payload in messages:
        collector.feed(topic, payload)
    return collector


def test_keeps_state_availability_field_and_events() -> None:
    snap = feed(
        ("otaml/f/devices/pi-1/state", DeviceState("pi-1", model="pump", version=3).to_json()),
        ("otaml/f/devices/pi-1/availability", b"offline"),
        ("otaml/f/devices/pi-1/field", b'{"anomaly_ratio":0.1}'),
        ("otaml/f/devices/pi-1/events", DeviceEvent("pi-1", "update", 1.0, outcome="refused", reason="x").to_json()),
        ("otaml/f/devices/pi-2/availability", b"online"),
    ).snapshot
    one = snap.devices["pi-1"]
    assert one.state is not None
    assert (one.state.version, one.online, one.field_summary) == (3, False, {"anomaly_ratio": 0.1})
    assert [e.outcome for e in one.events] == ["refused"]
    assert snap.devices["pi-2"].online is True
    assert snap.devices["pi-2"].state is None
    assert (snap.messages, sum(snap.rejected.values())) == (5, 0)


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("otaml/f/devices/pi-1/state", b"{not json", "malformed"),
        ("otaml/f/devices/pi-1/state", b'{"device_id": "pi-1", "version": "three"}', "malformed"),
        ("otaml/f/devices/pi-1/state", b"[1, 2]", "malformed"),
        ("otaml/f/devices/pi-1/state", b"\xff\xfe", "malformed"),
        ("otaml/f/devices/pi-1/availability", b"maybe", "malformed"),
        ("otaml/f/devices/pi-1/field", b"[]", "malformed"),
        ("otaml/f/devices/pi-1/state", b"[" * 1500 + b"]" * 1500, "malformed"),  # too deep for the parser
        ("otaml/f/devices/pi-1/field", b"[" * 1500 + b"]" * 1500, "malformed"),
        # Python's json takes NaN and Infinity; JSON (and `otaml fleet status --json`'s readers) does not.
        ("otaml/f/devices/pi-1/state", b'{"device_id": "pi-1", "last_seen": NaN}', "malformed"),
        ("otaml/f/devices/pi-1/events", b'{"device_id": "pi-1", "kind": "update", "at": Infinity}', "malformed"),
        ("otaml/f/devices/pi-1/field", b'{"anomaly_ratio": -Infinity}', "malformed"),
        ("otaml/f/devices/pi-1/events", b'{"device_id": "pi-1", "kind": 3}', "malformed"),
        ("otaml/f/devices/pi-1/state", b"{" + b" " * MAX_MESSAGE_BYTES + b"}", "oversized"),
        ("otaml/f/devices/pi-1/state", DeviceState("pi-2").to_json(), "device-mismatch"),
        ("otaml/f/devices/pi-1/events", DeviceEvent("pi-2", "update", 1.0).to_json(), "device-mismatch"),
        ("otaml/f/devices/pi-1/shadow", b"{}", "unknown-topic"),
        ("otaml/g/devices/pi-1/state", DeviceState("pi-1").to_json(), "unknown-topic"),
        ("otaml/f/devices/pi 1/state", b"{}", "unknown-topic"),
        ("elsewhere", b"", "unknown-topic"),
    ],
)
def test_refuses_and_counts_what_breaks_the_contract(topic: str, payload: bytes, reason: str) -> None:
    snap = feed((topic, payload)).snapshot
    assert dict(snap.rejected) == {reason: 1}
    assert [s.reason for s in snap.rejected_samples] == [reason]
    assert all(view.state is None and not view.events for view in snap.devices.values())


def test_a_refused_message_leaves_the_device_as_it_was() -> None:
    good = DeviceState("pi-1", version=3).to_json()
    forged = json.dumps({"device_id": "pi-1", "version": "666"}).encode()
    snap = feed(("otaml/f/devices/pi-1/state", good), ("otaml/f/devices/pi-1/state", forged)).snapshot
    state = snap.devices["pi-1"].state
    assert state is not None
    assert state.version == 3


def test_samples_and_events_are_bounded() -> None:
    messages = [("otaml/f/devices/pi-1/state", b"x")] * (MAX_SAMPLES + 5)
    messages += [
        ("otaml/f/devices/pi-1/events", DeviceEvent("pi-1", "update", float(i), version=i).to_json())
        for i in range(MAX_EVENTS_PER_DEVICE + 3)
    ]
    snap = feed(*messages).snapshot
    assert snap.rejected["malformed"] == MAX_SAMPLES + 5
    assert len(snap.rejected_samples) == MAX_SAMPLES
    events = snap.devices["pi-1"].events
    assert [e.version for e in events] == list(range(3, MAX_EVENTS_PER_DEVICE + 3))


def test_devices_outside_the_known_list_are_counted_not_kept() -> None:
    collector = FleetCollector("f", known_devices=["pi-1"])
    collector.feed("otaml/f/devices/pi-1/state", DeviceState("pi-1", version=1).to_json())
    collector.feed("otaml/f/devices/pi-9/state", DeviceState("pi-9", version=1).to_json())
    collector.feed("otaml/f/devices/pi-9/availability", b"online")
    snap = collector.snapshot
    assert list(snap.devices) == ["pi-1"]
    assert dict(snap.rejected) == {"unknown-device": 2}
