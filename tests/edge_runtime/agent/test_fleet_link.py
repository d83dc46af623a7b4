"""The agent's link to the fleet: what each step publishes (the reporter is faked here; the real one, on a real
Mosquitto, is exercised in tests/edge_runtime/fleet and by the fleet bench)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_runtime.agent.fleet_link import FleetLink
from edge_runtime.fleet.messages import MAX_MESSAGE_BYTES, DeviceEvent, DeviceState

from .fakes import Behaviour, World


class Published:
    def __init__(self) -> None:
        self.states: list[DeviceState] = []
        self.events: list[DeviceEvent] = []
        self.fields: list[bytes] = []

    def publish_state(self, state: DeviceState) -> bool:
        self.states.append(state)
        return True

    def publish_event(self, event: DeviceEvent) -> bool:
        self.events.append(event)
        return True

    def publish_field(self, summary: bytes) -> bool:
        self.fields.append(summary)
        return True


def test_each_step_publishes_the_shadow_and_changes_publish_events(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.publish("1")
    agent = world.agent()
    out = Published()
    fetched: list[int] = []

    def fetch(port: int) -> bytes:
        fetched.append(port)
        return b'{"version":1}'

    now = [1000.0]
    link = FleetLink(
        agent,
        out,
        anomaly_fetch=lambda port: {"seq": 0, "events": []},
        device_id="pump-7",
        groups={"hw": "pi4"},
        model="pump",
        field_interval_s=60,
        clock=lambda: now[0],
        field_fetch=fetch,
    )
    link(agent.recover())
    link(agent.reconcile())
    state = out.states[-1]
    assert (state.device_id, state.version, state.phase, state.health) == ("pump-7", 1, "serving", "ok")
    assert state.groups == {"hw": "pi4"}
    assert state.trust == "insecure"  # the fakes run without [trust]: the fleet sees it
    assert [e.outcome for e in out.events] == ["recovered", "updated"]
    assert out.fields == [b'{"version":1}']
    # A quiet step: a state (deduplicated by the reporter), no event, no field fetch inside the interval.
    now[0] += 10
    link(agent.reconcile())
    assert [e.outcome for e in out.events] == ["recovered", "updated"]
    assert len(fetched) == 1
    # A failed canary: an event with its reason code, and the device still serving v1.
    world.publish("2", Behaviour(score_offset=0.5))
    link(agent.reconcile())
    event: Any = out.events[-1]
    assert (event.outcome, event.reason, event.version) == ("rolled_back", "golden-mismatch", 2)
    assert out.states[-1].version == 1
    assert out.states[-1].blocked


def test_an_update_reports_each_phase_as_it_enters_it_with_a_started_event(tmp_path: Path) -> None:
    """A device that dies mid-update must be judged by the phase it died in: each phase reaches the broker at once,
    its health unknown until the step ends (the controller waits for it), and pulling sends ``started``."""
    world = World(tmp_path)
    world.publish("1")
    agent = world.agent()
    out = Published()
    link = FleetLink(
        agent, out, device_id="pump-7", groups={}, model="pump", anomaly_fetch=lambda port: {"seq": 0, "events": []}
    )
    agent.on_phase = link.phase_changed
    link(agent.recover())
    link(agent.reconcile())
    world.publish("2")
    before = len(out.states)
    link(agent.reconcile())
    during = out.states[before:-1]
    assert [(s.phase, s.version, s.health) for s in during] == [
        ("pulling", 1, "unknown"),
        ("canary", 1, "unknown"),
        ("handover", 1, "unknown"),
        ("probation", 2, "unknown"),  # the candidate serves now, not yet judged healthy
    ]
    assert {s.rollout_id for s in during} == {agent.state.rollout_id}
    assert (out.states[-1].phase, out.states[-1].version, out.states[-1].health) == ("serving", 2, "ok")
    assert [(e.outcome, e.version) for e in out.events][-2:] == [("started", 2), ("updated", 2)]

    def broken() -> None:
        raise OSError("the broker client is gone")

    agent.on_phase = broken  # reporting never stops an update
    world.publish("3")
    assert agent.reconcile().outcome == "updated"


def test_a_failing_field_fetch_never_stops_the_link(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.publish("1")
    agent = world.agent()
    out = Published()

    def broken(port: int) -> bytes:
        raise ConnectionRefusedError("nothing listens")

    link = FleetLink(agent, out, device_id="d", groups={}, model="pump", field_fetch=broken, anomaly_fetch=broken)
    agent.recover()
    link(agent.reconcile())
    assert out.states[-1].version == 1
    assert out.fields == []


def test_new_anomalies_become_events_once_and_rate_limited(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.publish("1")
    agent = world.agent()
    out = Published()
    log: dict[str, Any] = {"seq": 0, "events": []}
    now = [5000.0]

    def add(n: int) -> None:
        for _ in range(n):
            log["seq"] += 1
            log["events"].append({"seq": log["seq"], "stream": "pump-3", "at": now[0], "score": 0.9, "threshold": 0.5})
        del log["events"][:-64]

    link = FleetLink(
        agent, out, device_id="d", groups={}, model="pump", field_fetch=lambda port: None,
        anomaly_fetch=lambda port: log, anomaly_burst=5, anomaly_per_hour=8, clock=lambda: now[0],
    )  # fmt: skip
    agent.recover()
    link(agent.reconcile())
    add(3)
    link(agent.reconcile())
    anomalies = [e for e in out.events if e.kind == "anomaly"]
    assert [e.detail["seq"] for e in anomalies] == [1, 2, 3]
    assert anomalies[0].detail["stream"] == "pump-3"
    assert anomalies[0].version == 1
    link(agent.reconcile())  # nothing new: nothing published again
    assert len([e for e in out.events if e.kind == "anomaly"]) == 3
    add(10)  # a burst: 5 per step at most, and 8 an hour in all
    link(agent.reconcile())
    anomalies = [e for e in out.events if e.kind == "anomaly"]
    assert len(anomalies) == 8
    assert link.anomalies_suppressed == 5  # over the step's burst
    add(2)  # the hour's budget (8) is spent: held back too
    link(agent.reconcile())
    assert len([e for e in out.events if e.kind == "anomaly"]) == 8
    assert link.anomalies_suppressed == 7
    now[0] += 3600  # the budget refills; the next event says how many were held back
    add(1)
    link(agent.reconcile())
    last = [e for e in out.events if e.kind == "anomaly"][-1]
    assert last.detail["seq"] == 16
    assert last.detail["suppressed_before"] == 7


def _linked_on_v1(tmp_path: Path) -> tuple[World, Any, Published, FleetLink]:
    """A device serving v1 whose fleet link publishes into ``Published``."""
    world = World(tmp_path)
    world.publish("1")
    agent = world.agent()
    out = Published()
    link = FleetLink(
        agent, out, device_id="d", groups={}, model="pump", field_fetch=lambda p: None,
        anomaly_fetch=lambda p: None,
    )  # fmt: skip
    agent.recover()
    link(agent.reconcile())
    return world, agent, out, link


def test_a_rollback_stays_the_last_outcome_through_the_quiet_steps_after_it(tmp_path: Path) -> None:
    world, agent, out, link = _linked_on_v1(tmp_path)
    world.publish("2", Behaviour(score_offset=0.5))
    link(agent.reconcile())
    skipped = agent.reconcile()
    link(skipped)
    assert skipped.outcome == "skipped"
    assert (out.states[-1].last_outcome, out.states[-1].last_reason) == ("rolled_back", "golden-mismatch")


def test_captured_windows_leave_the_device_only_when_the_agent_opts_in(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.publish("1")
    small = [[1.5, 2.5, 3.5]] * 16
    huge = [[1.234567] * 8] * 64  # over one fleet message
    log = {
        "seq": 2,
        "events": [
            {"seq": 1, "stream": "s", "at": 1.0, "score": 0.9, "threshold": 0.5, "window": small},
            {"seq": 2, "stream": "s", "at": 2.0, "score": 0.9, "threshold": 0.5, "window": huge},
        ],
    }

    def windows(capture: bool) -> list[Any]:
        agent = world.agent()
        out = Published()
        link = FleetLink(
            agent, out, device_id="d", groups={}, model="pump", field_fetch=lambda port: None,
            anomaly_fetch=lambda port: log, capture_windows=capture,
        )  # fmt: skip
        agent.recover()
        link(agent.reconcile())
        events = [e for e in out.events if e.kind == "anomaly"]
        assert all(len(e.to_json()) <= MAX_MESSAGE_BYTES for e in events)
        return [e.detail.get("window") for e in events]

    assert windows(capture=False) == [None, None]  # the service captured them; the agent keeps them
    assert windows(capture=True) == [small, "oversized"]


def test_the_last_outcome_names_the_rollout_it_happened_in(tmp_path: Path) -> None:
    """A rollback in one rollout, then the device follows another: the shadow still shows the rollback, under
    the rollout it happened in, so the new rollout's controller does not count it against its own wave."""
    world, agent, out, link = _linked_on_v1(tmp_path)
    agent.state.rollout_id = "pump-v2-1"  # what a signed rollout record sets during a step
    world.publish("2", Behaviour(score_offset=0.5))
    link(agent.reconcile())
    assert (out.states[-1].last_outcome, out.states[-1].outcome_rollout_id) == ("rolled_back", "pump-v2-1")
    agent.state.rollout_id = "pump-v3-1"  # the next rollout, before this device acts in it
    link(agent.reconcile())
    last = out.states[-1]
    assert (last.rollout_id, last.last_outcome, last.outcome_rollout_id) == ("pump-v3-1", "rolled_back", "pump-v2-1")
