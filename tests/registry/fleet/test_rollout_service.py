"""The controller's shell over the real TUF repository: start, step, pause/resume/abort, races between controllers.

Real repository files and locks; the fleet's states come from an in-memory or file source (the I/O seam).
"""

from __future__ import annotations

import json
import multiprocessing
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from edge_runtime.fleet.messages import DeviceState
from edge_runtime.fleet.rollout import RolloutRecord
from registry.fleet.rollout import (
    FileStateSource,
    FleetStateError,
    ObservedDevice,
    RolloutInputError,
    RolloutService,
    SnapshotStateSource,
    StaticStateSource,
    TufRecordStore,
)
from registry.tuf import keys
from registry.tuf.errors import RolloutConflict
from registry.tuf.repository import FleetRepository
from registry.tuf.store import DirectoryStore
from tests.edge_runtime.trust.fakes import provision
from tests.registry.tuf.fleet import Fleet, image, make_fleet

MODEL, CHANNEL = "pump-anomaly", "production"
DEVICES = [f"dev-{i:02d}" for i in range(40)]


class Clock:
    def __init__(self, at: float = 1_000_000.0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    """v7 runs on every device (v6 before it, v7 approved all at once); v8 is approved as `otaml promote` approves
    a version while another runs: staged for a rollout."""
    fleet = make_fleet(tmp_path / "repo")
    fleet.approve(image(6))
    fleet.approve(image(7))
    fleet.approve(image(8, staged=fleet.repo.stages(CHANNEL, MODEL, 8)))
    return fleet


def store_of(fleet: Fleet) -> TufRecordStore:
    """A controller's own handle on the repository (its own store object, so its own lock descriptor)."""
    repo = FleetRepository(
        DirectoryStore(fleet.path), snapshot_signer=fleet.snapshot_key, timestamp_signer=fleet.timestamp_key
    )
    return TufRecordStore(repo, fleet.rollouts_key)


def reports(record: RolloutRecord, *, bad: bool = False) -> list[ObservedDevice]:
    """What devices report after acting on ``record`` (each decides with the device-side rule)."""
    out = []
    for d in DEVICES:
        version = record.version_for(d, {})
        failed = bad and version == record.version
        state = DeviceState(
            device_id=d,
            model=MODEL,
            version=record.stable_version if failed else version,
            last_outcome="rolled_back" if failed else "updated",
            last_reason="golden-mismatch" if failed else "",
            rollout_id=record.rollout_id,
            health="ok",
            last_seen=1.0,
        )
        out.append(ObservedDevice(state, True))
    return out


def test_start_takes_the_version_devices_run_as_stable(fleet: Fleet) -> None:
    assert [(a.version, a.staged) for a in store_of(fleet).approvals(CHANNEL, MODEL)] == [
        (6, False),
        (7, False),
        (8, True),
    ]
    clock = Clock()
    service = RolloutService(store_of(fleet), clock=clock)
    record = service.start(MODEL, 8, channel=CHANNEL, waves=(10, 100), soak_s=60)
    assert (record.version, record.stable_version, record.wave, record.state) == (8, 7, 0, "running")
    assert record.started_at == record.wave_started_at == clock.at
    assert fleet.repo.rollout_record(CHANNEL, MODEL) == record
    assert provision(fleet.path.parent, fleet).client.rollout(CHANNEL, MODEL) == record  # what devices read


def test_start_refuses_unapproved_versions_and_a_second_moving_rollout(fleet: Fleet) -> None:
    service = RolloutService(store_of(fleet), clock=Clock())
    with pytest.raises(
        RolloutInputError, match=r"v9 is not approved for channel 'production' \(approved: v6, v7, v8\)"
    ):
        service.start(MODEL, 9, channel=CHANNEL, waves=(100,))
    for below in (6, 7):  # devices run v7: a rollout only moves them forward
        with pytest.raises(RolloutInputError, match=f"v{below} is not above the stable v7"):
            service.start(MODEL, below, channel=CHANNEL, waves=(100,))
    with pytest.raises(RolloutInputError, match="not approved for channel 'staging'"):
        service.start(MODEL, 8, channel="staging", waves=(100,))
    service.start(MODEL, 8, channel=CHANNEL, waves=(100,))
    with pytest.raises(RolloutInputError, match="is running; let it complete, or abort it"):
        service.start(MODEL, 8, channel=CHANNEL, waves=(100,))
    service.abort(MODEL, channel=CHANNEL)
    with pytest.raises(RolloutInputError, match=r"waves \[50, 10\] must be increasing"):
        service.start(MODEL, 8, channel=CHANNEL, waves=(50, 10))
    with pytest.raises(RolloutInputError, match="max failure rate 2"):
        service.start(MODEL, 8, channel=CHANNEL, waves=(100,), max_failure_rate=2)


def test_a_good_rollout_advances_wave_by_wave_after_each_soak(fleet: Fleet) -> None:
    clock = Clock()
    states = StaticStateSource()
    service = RolloutService(store_of(fleet), states, clock=clock)
    record = service.start(MODEL, 8, channel=CHANNEL, waves=(10, 50, 100), soak_s=300)
    seen = []
    for _ in range(10):
        current = fleet.repo.rollout_record(CHANNEL, MODEL)
        assert current is not None
        states.items = reports(current)
        clock.at += 200
        [result] = service.step() or [None]  # type: ignore[list-item]
        if result is None:
            break
        seen.append((result.decision.action, result.decision.record.percent))
    assert seen == [("wait", 10), ("advance", 50), ("wait", 50), ("advance", 100), ("wait", 100), ("advance", 100)]
    final = fleet.repo.rollout_record(CHANNEL, MODEL)
    assert final is not None
    assert final.state == "completed"
    assert final.rollout_id == record.rollout_id
    # The next rollout's stable version is the completed one.
    fleet.approve(image(9))
    assert service.start(MODEL, 9, channel=CHANNEL, waves=(100,)).stable_version == 8


def test_a_bad_rollout_halts_in_its_first_wave_and_devices_read_the_signed_halt(fleet: Fleet) -> None:
    clock = Clock()
    states = StaticStateSource()
    service = RolloutService(store_of(fleet), states, clock=clock)
    record = service.start(MODEL, 8, channel=CHANNEL, waves=(25, 100), soak_s=60)
    states.items = reports(record, bad=True)
    [result] = service.step()
    assert result.published
    assert result.decision.action == "halt"
    halted = provision(fleet.path.parent, fleet).client.rollout(CHANNEL, MODEL)
    assert halted is not None
    assert halted.state == "halted"
    assert "(rolled_back:golden-mismatch)" in halted.reason
    assert all(halted.version_for(d, {}) == 7 for d in DEVICES)
    assert service.step() == []  # nothing moving any more
    # After a halt, a new rollout still falls back to the halted one's stable version.
    fleet.approve(image(9))
    assert service.start(MODEL, 9, channel=CHANNEL, waves=(100,)).stable_version == 7


def test_pause_resume_abort_are_signed_and_checked(fleet: Fleet) -> None:
    clock = Clock()
    states = StaticStateSource()
    service = RolloutService(store_of(fleet), states, clock=clock)
    with pytest.raises(RolloutInputError, match="no rollout of 'pump-anomaly' on channel 'production' to pause"):
        service.pause(MODEL, channel=CHANNEL)
    record = service.start(MODEL, 8, channel=CHANNEL, waves=(10, 100), soak_s=0)
    paused = service.pause(MODEL, channel=CHANNEL)
    assert paused.state == "paused"
    states.items = reports(paused)
    clock.at += 1000
    [result] = service.step()
    assert result.decision.action == "hold"
    assert not result.published
    with pytest.raises(RolloutInputError, match="is paused; only a running rollout can be paused"):
        service.pause(MODEL, channel=CHANNEL)
    resumed = service.resume(MODEL, channel=CHANNEL)
    assert resumed.state == "running"
    assert resumed.wave_started_at == clock.at
    aborted = service.abort(MODEL, channel=CHANNEL, why="wrong threshold")
    assert aborted.state == "aborted"
    assert aborted.reason == "aborted by an operator in wave 1/2: wrong threshold"
    assert fleet.repo.rollout_record(CHANNEL, MODEL) == aborted
    assert aborted.version_for("dev-00", {}) == record.stable_version
    with pytest.raises(RolloutInputError, match="is aborted"):
        service.resume(MODEL, channel=CHANNEL)


def test_a_step_without_a_state_source_says_what_it_needs(fleet: Fleet) -> None:
    service = RolloutService(store_of(fleet), clock=Clock())
    service.start(MODEL, 8, channel=CHANNEL, waves=(100,))
    with pytest.raises(RolloutInputError, match="needs the fleet's states"):
        service.step()


def test_a_read_only_store_cannot_publish(fleet: Fleet) -> None:
    service = RolloutService(TufRecordStore(FleetRepository.read_only(fleet.store), None), clock=Clock())
    with pytest.raises(RolloutInputError, match="needs the controller's rollouts key"):
        service.start(MODEL, 8, channel=CHANNEL, waves=(100,))


def test_a_step_re_signs_the_records_before_they_expire(fleet: Fleet) -> None:
    store = store_of(fleet)
    rollouts = fleet.repo.rollouts()
    assert rollouts is not None
    expires = rollouts.signed.expires.timestamp()
    service = RolloutService(store, StaticStateSource(), clock=Clock(expires - 86400 * 20))
    service.step()
    assert fleet.repo.rollouts().signed.version == rollouts.signed.version  # type: ignore[union-attr]
    service = RolloutService(store, StaticStateSource(), clock=Clock(expires - 86400 * 10))
    service.step()
    renewed = fleet.repo.rollouts()
    assert renewed is not None
    assert renewed.signed.version == rollouts.signed.version + 1


class BarrierSource:
    """Both controllers have read the record before either publishes: the race, made certain."""

    def __init__(self, barrier: threading.Barrier, devices: list[ObservedDevice]) -> None:
        self.barrier = barrier
        self.items = devices

    def devices(self) -> list[ObservedDevice]:
        self.barrier.wait(timeout=60)
        return self.items


def test_two_controllers_stepping_at_once_advance_the_wave_once(fleet: Fleet) -> None:
    clock = Clock()
    first = RolloutService(store_of(fleet), clock=clock)
    record = first.start(MODEL, 8, channel=CHANNEL, waves=(10, 50, 100), soak_s=0)
    barrier = threading.Barrier(2)
    results: list[object] = []
    errors: list[BaseException] = []

    def controller() -> None:
        try:
            service = RolloutService(store_of(fleet), BarrierSource(barrier, reports(record)), clock=clock)
            results.extend(service.step())
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=controller) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    published = [r for r in results if r.published]  # type: ignore[attr-defined]
    conflicts = [r for r in results if r.conflict]  # type: ignore[attr-defined]
    assert len(published) == 1
    assert len(conflicts) == 1
    assert "changed since it was read" in conflicts[0].conflict  # type: ignore[attr-defined]
    now = fleet.repo.rollout_record(CHANNEL, MODEL)
    assert now is not None
    assert now.wave == 1  # advanced once, not twice
    assert provision(fleet.path.parent, fleet).client.rollout(CHANNEL, MODEL) == now  # the repository verifies


def _count_up(repo_dir: str, keys_dir: str, times: int) -> None:
    """A controller process: read-modify-publish ``times`` increments of the reason counter, retrying conflicts."""
    repo = FleetRepository(
        DirectoryStore(repo_dir),
        snapshot_signer=keys.load_signer(Path(keys_dir) / "snapshot.key"),
        timestamp_signer=keys.load_signer(Path(keys_dir) / "timestamp.key"),
    )
    signer = keys.load_signer(Path(keys_dir) / "rollouts.key")
    done = 0
    while done < times:
        current = repo.rollout_record(CHANNEL, MODEL)
        assert current is not None
        try:
            repo.publish_rollout(replace(current, reason=str(int(current.reason) + 1)), signer, expected=current)
        except RolloutConflict:
            continue
        done += 1


def test_controller_processes_racing_lose_no_update_and_leave_verifiable_metadata(fleet: Fleet, tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    for name, key in (("snapshot", fleet.snapshot_key), ("timestamp", fleet.timestamp_key)):
        keys.write(key, keys_dir, name)
    assert fleet.rollouts_key is not None
    keys.write(fleet.rollouts_key, keys_dir, "rollouts")
    start = RolloutRecord(
        rollout_id="count", model=MODEL, channel=CHANNEL, version=8, stable_version=7, waves=(100,), reason="0"
    )
    fleet.repo.publish_rollout(start, fleet.rollouts_key)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_count_up, args=(str(fleet.path), str(keys_dir), 8)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    final = provision(tmp_path, fleet).client.rollout(CHANNEL, MODEL)
    assert final is not None
    assert final.reason == "24"  # 3 x 8 increments, none lost
    rollouts = fleet.repo.rollouts()
    assert rollouts is not None
    assert rollouts.signed.version == 1 + 1 + 24


def test_the_file_state_source_parses_like_the_broker_and_counts_bad_entries(tmp_path: Path) -> None:
    path = tmp_path / "states.json"
    good = DeviceState(device_id="dev-01", model=MODEL, version=8, health="ok")
    entries: list[object] = [
        {"state": json.loads(good.to_json()), "availability": "online"},
        {"state": {"device_id": "dev-02", "version": "8"}, "availability": "online"},
        {"state": {"device_id": "dev-03"}, "availability": "maybe"},
        {"state": {"device_id": "x" * 5000}},
        [1, 2],
    ]
    path.write_text(json.dumps({"devices": entries}))
    source = FileStateSource(path)
    assert source.devices() == [ObservedDevice(good, True)]
    assert len(source.malformed) == 4
    assert source.malformed[0].startswith("#1: state message: field 'version'")
    for body in ("not json", "[]", '{"devices": 3}'):
        path.write_text(body)
        with pytest.raises(FleetStateError, match=str(path)):
            source.devices()
    with pytest.raises(FleetStateError, match="cannot be read"):
        FileStateSource(tmp_path / "missing.json").devices()


def test_the_snapshot_source_reads_the_collector_shape_and_notes_what_is_missing() -> None:
    """The shape of registry.fleet.collect.FleetSnapshot: devices by id with state and online, refusals by reason."""

    @dataclass
    class View:
        state: DeviceState | None
        online: bool | None

    @dataclass
    class Snapshot:
        devices: dict[str, View]
        rejected: dict[str, int]

    on = DeviceState(device_id="on", model=MODEL, version=8)
    unknown = DeviceState(device_id="unknown", model=MODEL, version=8)
    snapshot = Snapshot(
        {"on": View(on, True), "unknown": View(unknown, None), "ghost": View(None, False)}, {"malformed": 3}
    )
    calls: list[int] = []

    def fetch() -> Snapshot:
        calls.append(1)
        return snapshot

    source = SnapshotStateSource(fetch)
    assert source.devices() == [ObservedDevice(on, True), ObservedDevice(unknown, False)]
    assert source.malformed == [
        "unknown: no availability message (counted offline)",
        "ghost: no state message",
        "broker messages refused (malformed): 3",
    ]
    source.devices()
    assert len(calls) == 2  # read afresh at every step: the controller keeps nothing
    with pytest.raises(FleetStateError, match="no device map"):
        SnapshotStateSource(lambda: None).devices()


def test_a_snapshot_cut_short_by_the_timeout_judges_nobody_and_keeps_the_records_fresh(fleet: Fleet) -> None:
    """Part of the fleet is not the fleet: a device whose availability had not arrived would count as offline."""

    @dataclass
    class View:
        state: DeviceState
        online: bool | None

    @dataclass
    class Snapshot:
        devices: dict[str, View]
        complete: bool

    clock = Clock()
    states = StaticStateSource()
    service = RolloutService(store_of(fleet), states, clock=clock)
    record = service.start(MODEL, 8, channel=CHANNEL, waves=(25, 100), soak_s=60)
    healthy = reports(record)
    # The last device's availability message had not arrived when the collection timed out.
    views = {o.state.device_id: View(o.state, True) for o in healthy}
    views[DEVICES[-1]] = View(healthy[-1].state, None)
    cut = Snapshot(views, complete=False)
    service.states = SnapshotStateSource(lambda: cut)
    clock.at += 61
    rollouts = fleet.repo.rollouts()
    assert rollouts is not None
    clock.at = rollouts.signed.expires.timestamp() - 86400  # also due for re-signing
    with pytest.raises(FleetStateError, match="raise the broker timeout"):
        service.step()
    kept = provision(fleet.path.parent, fleet).client.rollout(CHANNEL, MODEL)
    assert kept is not None
    assert (kept.state, kept.wave) == ("running", 0)  # neither halted nor advanced
    renewed = fleet.repo.rollouts()
    assert renewed is not None
    assert renewed.signed.version > rollouts.signed.version  # re-signed all the same
    # The whole fleet, once it arrives, is judged as usual.
    cut.complete = True
    views[DEVICES[-1]].online = True
    [result] = service.step()
    assert result.decision.action == "advance"


def test_with_the_fleet_known_the_first_wave_holds_a_device_of_every_hardware_class(fleet: Fleet) -> None:
    """A first wave with no device of a class would advance after its soak and hand a fault that only that class
    shows to the next, larger wave: start picks a rollout id whose first wave holds each class."""
    from edge_runtime.fleet.rollout import bucket

    devices = [f"pi-{i}" for i in range(12)]
    classes = {d: ("pi4" if i % 2 else "x86") for i, d in enumerate(devices)}
    states = StaticStateSource()
    states.items = [
        ObservedDevice(DeviceState(device_id=d, model=MODEL, version=7, groups={"hw": classes[d]}), True)
        for d in devices
    ]
    states.items.append(ObservedDevice(DeviceState(device_id="other", model="another-model", version=1), True))
    clock = Clock()
    blind = RolloutService(store_of(fleet), None, clock=clock).start(MODEL, 8, channel=CHANNEL, waves=(5, 100))
    in_blind = {classes[d] for d in devices if bucket(d, blind.rollout_id) < 5}
    RolloutService(store_of(fleet), None, clock=clock).abort(MODEL, channel=CHANNEL)
    seen = RolloutService(store_of(fleet), states, clock=clock).start(MODEL, 8, channel=CHANNEL, waves=(5, 100))
    assert {classes[d] for d in devices if bucket(d, seen.rollout_id) < 5} == {"pi4", "x86"}
    assert in_blind != {"pi4", "x86"}, "this clock's plain id must leave a class out, or the test shows nothing"
    assert seen.rollout_id.startswith(blind.rollout_id + "-")  # the same id with a suffix
    # Each device still decides by its own bucket: exactly the first-wave devices get the candidate.
    assert [d for d in devices if seen.version_for(d, {"hw": classes[d]}) == 8] == [
        d for d in devices if bucket(d, seen.rollout_id) < 5
    ]
