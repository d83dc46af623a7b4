"""Captured anomaly windows: what ``CaptureWriter`` keeps from device events, and what it counts instead."""

from __future__ import annotations

import io
import json

from edge_runtime.fleet.messages import DeviceEvent, DeviceState, device_topic
from registry.field.capture import CaptureWriter

WINDOW = [[60.1, 0.5, 3.0], [61.4, 0.52, 3.1]]


def anomaly(device: str, window: object = None, **extra: object) -> bytes:
    detail = {"stream": "pump-3", "at": 10.5, "score": 0.9, "threshold": 0.4, "seq": 7, **extra}
    if window is not None:
        detail["window"] = window
    return DeviceEvent(device, "anomaly", 11.0, version=3, detail=detail).to_json()


def test_windows_are_written_one_line_each_and_everything_else_is_counted() -> None:
    out = io.StringIO()
    writer = CaptureWriter("f", out)
    events = device_topic("f", "pi-a", "events")
    assert writer.feed(events, anomaly("pi-a", WINDOW))
    assert writer.feed(device_topic("f", "pi-b", "events"), anomaly("pi-b", WINDOW))
    assert not writer.feed(events, anomaly("pi-a", WINDOW))  # delivered twice (MQTT QoS 1): written once
    assert not writer.feed(events, anomaly("pi-a"))  # capture off on that device
    assert not writer.feed(events, anomaly("pi-a", "oversized"))
    for bad in ([[1.0, 2.0], [3.0]], [["x"]], [[float("inf")]], [], "junk", [[True]], [[10**400]]):
        assert not writer.feed(events, anomaly("pi-a", bad)), bad
    assert not writer.feed(events, b"{not json")
    assert not writer.feed(events, b"[" * 2000 + b"]" * 2000)  # nested too deep for the JSON parser
    for detail in ({"stream": {"x": 1}}, {"score": "high"}, {"seq": -1}, {"stream": ""}):
        assert not writer.feed(events, anomaly("pi-a", WINDOW, **detail)), detail
    assert not writer.feed(device_topic("f", "pi-b", "events"), anomaly("pi-a", WINDOW))  # another device's topic
    # Not anomaly events, or not this fleet's: ignored, not counted.
    assert not writer.feed(events, DeviceEvent("pi-a", "update", 1.0, outcome="updated").to_json())
    assert not writer.feed(device_topic("f", "pi-a", "state"), DeviceState("pi-a").to_json())
    assert not writer.feed(device_topic("g", "pi-a", "events"), anomaly("pi-a", WINDOW))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["device_id"] for line in lines] == ["pi-a", "pi-b"]
    assert lines[0] == {
        "device_id": "pi-a",
        "version": 3,
        "seq": 7,
        "at": 10.5,
        "stream": "pump-3",
        "score": 0.9,
        "threshold": 0.4,
        "window": WINDOW,
    }
    stats = writer.stats
    assert (stats.windows, len(stats.devices)) == (2, 2)
    assert dict(stats.skipped) == {"duplicate": 1, "no-window": 1, "oversized": 1, "malformed": 14}
    assert stats.line() == "2 windows from 2 devices (skipped: 1 duplicate, 14 malformed, 1 no-window, 1 oversized)"
