"""Rendering a snapshot: devices, counts per version, failures with reasons, offline devices, refused messages."""

from __future__ import annotations

import json

from edge_runtime.fleet.messages import DeviceEvent, DeviceState
from registry.fleet.collect import FleetCollector, FleetSnapshot
from registry.fleet.status import render, summarize

NOW = 1_800_000_000.0


def snapshot() -> FleetSnapshot:
    collector = FleetCollector("plant", clock=lambda: NOW)
    common = {"model": "pump", "phase": "serving"}
    states = [
        DeviceState("pi-1", {"hw": "pi4"}, version=3, last_outcome="updated", health="ok", last_seen=NOW - 5, **common),
        DeviceState(
            "pi-2",
            {"hw": "pi3"},
            version=2,
            last_outcome="rolled_back",
            last_reason="unhealthy",
            last_seen=NOW - 600,
            **common,
        ),
        DeviceState("pi-3", {"hw": "pi4"}, version=3, health="unhealthy", last_seen=NOW - 30, **common),
    ]
    for s in states:
        collector.feed(f"otaml/plant/devices/{s.device_id}/state", s.to_json())
        collector.feed(f"otaml/plant/devices/{s.device_id}/availability", b"online")
    collector.feed("otaml/plant/devices/pi-2/availability", b"offline")
    refused = DeviceEvent("pi-1", "update", NOW - 100, outcome="refused", reason="not-approved", version=4)
    collector.feed("otaml/plant/devices/pi-1/events", refused.to_json())
    collector.feed("otaml/plant/devices/pi-4/availability", b"online")
    collector.feed("otaml/plant/devices/pi-4/state", b"garbage")
    return collector.snapshot


def test_summary_counts_versions_failures_and_offline() -> None:
    doc = summarize(snapshot(), NOW)
    json.dumps(doc)  # JSON-ready
    assert [d["device_id"] for d in doc["devices"]] == ["pi-1", "pi-2", "pi-3", "pi-4"]
    assert doc["versions"] == [
        {"model": "pump", "version": 2, "devices": 1},
        {"model": "pump", "version": 3, "devices": 2},
    ]
    assert [(f["device_id"], f["outcome"], f["reason"], f["source"]) for f in doc["failures"]] == [
        ("pi-1", "refused", "not-approved", "event"),
        ("pi-2", "rolled_back", "unhealthy", "state"),
        ("pi-3", "unhealthy", "unhealthy", "state"),
    ]
    assert doc["offline"] == ["pi-2"]
    assert doc["no_state"] == ["pi-4"]
    assert doc["rejected"] == {"malformed": 1}
    assert doc["devices"][1]["last_seen_age_s"] == 600.0


def test_table_names_every_device_failure_and_refusal() -> None:
    text = render(snapshot(), NOW)
    lines = text.splitlines()
    assert lines[0] == "fleet plant: 4 devices"
    assert lines[1].split() == [
        "DEVICE",
        "ONLINE",
        "MODEL",
        "VERSION",
        "PHASE",
        "HEALTH",
        "LAST",
        "OUTCOME",
        "LAST",
        "SEEN",
        "GROUPS",
    ]
    row = next(line for line in lines if line.startswith("pi-2"))
    assert row.split() == [
        "pi-2",
        "OFFLINE",
        "pump",
        "v2",
        "serving",
        "unknown",
        "rolled_back(unhealthy)",
        "10m",
        "ago",
        "hw=pi3",
    ]
    assert "versions: pump v2: 1, pump v3: 2" in lines
    assert "  pi-1: refused v4 (not-approved)" in lines
    assert "offline: pi-2" in lines
    assert "refused device messages: 1 (malformed: 1)" in lines


def test_control_characters_from_a_device_never_reach_the_terminal() -> None:
    collector = FleetCollector("plant", clock=lambda: NOW)
    hostile = DeviceState(
        "pi-1",
        {"hw": "pi4\x1b[2J"},
        model="pump\x07",
        version=3,
        last_outcome="refused",
        last_reason="\x1b[2J\x1b[31mPWNED\x1b[0m\nfake line",
        last_seen=NOW,
    )
    collector.feed("otaml/plant/devices/pi-1/state", hostile.to_json())
    text = render(collector.snapshot, NOW)
    assert all(c.isprintable() for line in text.splitlines() for c in line)
    assert "refused(\\x1b[2J\\x1b[31mPWNED\\x1b[0m\\nfake line)" in text
    assert not any(line.startswith("fake line") for line in text.splitlines())  # no line of its own
    assert "pump\\x07" in text
