"""The controller's pure judge: halt on the threshold, wait for soak and stragglers, advance, never crash."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.fleet.messages import DeviceState
from edge_runtime.fleet.rollout import RolloutRecord
from registry.fleet.rollout import ObservedDevice, judge

NOW = 1_000_000.0
RECORD = RolloutRecord(
    rollout_id="pump-anomaly-v8-abc",
    model="pump-anomaly",
    channel="production",
    version=8,
    stable_version=7,
    waves=(10, 50, 100),
    max_failure_rate=0.05,
    soak_s=600.0,
    started_at=NOW - 3600,
    wave_started_at=NOW - 3600,
)
FLEET = [f"dev-{i:03d}" for i in range(300)]


def in_wave(record: RolloutRecord = RECORD, groups: dict[str, str] | None = None) -> list[str]:
    """Devices the device-side rule puts in the current wave (what each device computes for itself)."""
    return [d for d in FLEET if record.version_for(d, groups or {}) == record.version]


def out_of_wave(record: RolloutRecord = RECORD) -> list[str]:
    return [d for d in FLEET if record.version_for(d, {}) == record.stable_version]


def device(
    device_id: str,
    *,
    version: int = 8,
    health: str = "ok",
    online: bool = True,
    outcome: str = "updated",
    reason: str = "",
    rollout_id: str = RECORD.rollout_id,
    outcome_rollout_id: str | None = None,  # default (""): the outcome happened in ``rollout_id``
    groups: dict[str, str] | None = None,
    model: str = "pump-anomaly",
) -> ObservedDevice:
    state = DeviceState(
        device_id=device_id,
        groups=groups or {},
        model=model,
        version=version,
        phase="serving",
        last_outcome=outcome,
        last_reason=reason,
        rollout_id=rollout_id,
        outcome_rollout_id=outcome_rollout_id or "",
        health=health,
        last_seen=NOW - 5,
    )
    return ObservedDevice(state, online)


def healthy_fleet(record: RolloutRecord = RECORD) -> list[ObservedDevice]:
    """Every device of the wave on the candidate and healthy; everyone else on the stable version."""
    wave = set(in_wave(record))
    return [device(d) if d in wave else device(d, version=7, outcome="", rollout_id="") for d in FLEET]


def test_the_wave_is_the_devices_own_decision_and_a_tenth_of_the_fleet() -> None:
    decision = judge(RECORD, healthy_fleet(), NOW)
    assert sorted(decision.in_wave) == in_wave()
    assert 15 <= len(decision.in_wave) <= 45  # 10 % of 300, give or take the hash
    assert set(decision.in_wave).isdisjoint(out_of_wave())


def test_a_healthy_soaked_wave_advances_to_the_next_percentage() -> None:
    decision = judge(RECORD, healthy_fleet(), NOW)
    assert decision.action == "advance"
    assert (decision.record.wave, decision.record.percent, decision.record.state) == (1, 50, "running")
    assert decision.record.wave_started_at == NOW
    assert "opened wave 2 (50%)" in decision.reason
    assert len(decision.healthy) == len(decision.in_wave)


def test_no_advance_before_the_soak_time() -> None:
    fresh = replace(RECORD, wave_started_at=NOW - 599)
    decision = judge(fresh, healthy_fleet(fresh), NOW)
    assert decision.action == "wait"
    assert decision.record == fresh
    assert "soaking, 599 s of 600 s" in decision.reason
    assert judge(fresh, healthy_fleet(fresh), NOW + 1).action == "advance"


def test_the_last_wave_completes_the_rollout() -> None:
    last = replace(RECORD, wave=2)
    decision = judge(last, healthy_fleet(last), NOW)
    assert decision.action == "advance"
    assert decision.record.state == "completed"
    assert decision.record.version_for("anyone", {}) == 8


def test_failures_above_the_threshold_halt_and_name_devices_and_reason_codes() -> None:
    fleet = healthy_fleet()
    wave = in_wave()
    bad = {wave[0]: "golden-mismatch", wave[1]: "canary-unhealthy"}
    fleet = [
        device(o.state.device_id, version=7, outcome="rolled_back", reason=bad[o.state.device_id])
        if o.state.device_id in bad
        else o
        for o in fleet
    ]
    decision = judge(RECORD, fleet, NOW)
    assert decision.action == "halt"
    halted = decision.record
    assert halted.state == "halted"
    assert halted.reason == decision.reason
    assert f"2 of {len(wave)} devices failed" in halted.reason
    assert f"{wave[0]} (rolled_back:golden-mismatch)" in halted.reason
    assert f"{wave[1]} (rolled_back:canary-unhealthy)" in halted.reason
    assert all(halted.version_for(d, {}) == 7 for d in FLEET)  # the signed act sends every device back


def test_failures_within_the_threshold_do_not_halt_nor_hold_the_wave() -> None:
    wide = replace(RECORD, max_failure_rate=0.25)
    wave = in_wave(wide)
    fleet = [
        device(o.state.device_id, version=7, outcome="refused", reason="not-approved")
        if o.state.device_id == wave[0]
        else o
        for o in healthy_fleet(wide)
    ]
    decision = judge(wide, fleet, NOW)
    assert decision.action == "advance"
    assert [str(f) for f in decision.failures] == [f"{wave[0]} (refused:not-approved)"]
    assert "1 failed (within the limit)" in decision.reason


def test_a_zero_threshold_halts_on_the_first_failure_and_none_never_halts() -> None:
    strict = replace(RECORD, max_failure_rate=0.0)
    assert judge(strict, healthy_fleet(strict), NOW).action == "advance"
    wave = in_wave(strict)
    fleet = [o for o in healthy_fleet(strict) if o.state.device_id != wave[0]] + [device(wave[0], health="unhealthy")]
    decision = judge(strict, fleet, NOW)
    assert decision.action == "halt"
    assert f"{wave[0]} (unhealthy)" in decision.reason


def test_offline_after_switching_is_a_failure_offline_before_is_not() -> None:
    wave = in_wave()
    switched, never = wave[0], wave[1]
    others = [o for o in healthy_fleet() if o.state.device_id not in (switched, never)]
    decision = judge(replace(RECORD, max_failure_rate=0.5), [*others, device(switched, online=False)], NOW)
    assert [str(f) for f in decision.failures] == [f"{switched} (offline-after-switch)"]
    decision = judge(RECORD, [*others, device(never, version=7, outcome="", online=False)], NOW)
    assert decision.failures == ()
    assert decision.offline == (never,)
    assert decision.action == "advance"  # an offline device that never switched does not hold the wave


def test_a_device_not_yet_on_the_candidate_holds_the_wave() -> None:
    wave = in_wave()
    fleet = [o for o in healthy_fleet() if o.state.device_id != wave[0]]
    fleet.append(device(wave[0], version=7, outcome="started"))
    decision = judge(RECORD, fleet, NOW)
    assert decision.action == "wait"
    assert decision.waiting == (wave[0],)
    assert f"1 of {len(wave)} devices not yet on v8 healthy: {wave[0]}" in decision.reason


def test_devices_joining_mid_rollout_are_judged_by_the_same_bucket_rule() -> None:
    second = replace(RECORD, wave=1)
    newcomers = [f"new-{i:03d}" for i in range(200)]
    joining_in = [d for d in newcomers if second.version_for(d, {}) == 8]
    joining_out = [d for d in newcomers if second.version_for(d, {}) == 7]
    assert joining_in
    assert joining_out
    fleet = healthy_fleet(second)
    # Newcomers outside the wave on the stable version, and broken ones outside: not the wave's business.
    fleet += [device(d, version=7, outcome="rolled_back", reason="x", rollout_id="") for d in joining_out]
    fleet += [device(d, version=7, outcome="") for d in joining_in]  # just booted, on stable, in the wave
    decision = judge(second, fleet, NOW)
    assert decision.action == "wait"
    assert set(decision.waiting) == set(joining_in)
    assert set(joining_out).isdisjoint(decision.in_wave)
    failing = [device(d, version=7, outcome="rolled_back", reason="oom") for d in joining_in]
    decision = judge(second, healthy_fleet(second) + failing, NOW)
    assert decision.action == "halt"
    assert f"{joining_in[0]} (rolled_back:oom)" in decision.reason


def test_an_outcome_of_another_rollout_does_not_count() -> None:
    wave = in_wave()
    fleet = [o for o in healthy_fleet() if o.state.device_id != wave[0]]
    fleet.append(device(wave[0], version=8, outcome="rolled_back", reason="old", rollout_id="pump-anomaly-v6-1"))
    assert judge(RECORD, fleet, NOW).action == "advance"


def test_a_failure_in_an_earlier_rollout_does_not_halt_the_device_s_new_one() -> None:
    """A device that rolled back the previous rollout's version follows this one now (its wave opened): until
    it acts, its last outcome is the old rollback, which must not count against this rollout."""
    wave = in_wave()
    fleet = [o for o in healthy_fleet() if o.state.device_id != wave[0]]
    stale = device(wave[0], version=7, outcome="rolled_back", reason="old", outcome_rollout_id="pump-anomaly-v6-1")
    decision = judge(RECORD, [*fleet, stale], NOW)
    assert decision.action == "wait"
    assert wave[0] in decision.waiting
    assert not decision.failures


def test_the_group_and_the_model_select_the_rollout_devices() -> None:
    pi4 = replace(RECORD, group={"hw": "pi4"})
    fleet = [device(d, version=7, outcome="", groups={"hw": "pi3"}) for d in FLEET]  # no pi4 at all
    fleet += [device("other-model", model="bearing-wear", outcome="error")]
    fleet += [device("staging-dev", groups={"hw": "pi4", "channel": "staging"}, outcome="error")]
    decision = judge(pi4, fleet, NOW)
    assert decision.in_wave == ()
    assert decision.action == "advance"  # an empty wave advances after its soak
    matching = [d for d in FLEET if pi4.version_for(d, {"hw": "pi4"}) == 8][:3]
    fleet += [device(d, groups={"hw": "pi4"}, outcome="error", reason="pull") for d in matching]
    assert judge(pi4, fleet, NOW).action == "halt"


def test_paused_holds_but_still_halts_and_finished_rollouts_hold() -> None:
    paused = replace(RECORD, state="paused")
    decision = judge(paused, healthy_fleet(), NOW)
    assert decision.action == "hold"
    assert "paused" in decision.reason
    wave = in_wave()
    broken = [device(d, health="unhealthy") for d in wave]
    assert judge(paused, broken, NOW).action == "halt"
    for state in ("completed", "halted", "aborted"):
        done = replace(RECORD, state=state, reason="why")
        decision = judge(done, broken, NOW)
        assert decision.action == "hold"
        assert decision.record == done
        assert decision.reason == f"rollout is {state}: why"


def test_malformed_reports_are_skipped_and_named_never_fatal() -> None:
    wave = in_wave()
    good = healthy_fleet()
    junk: list[Any] = [
        None,
        "dev-001",
        {"state": {}, "online": True},
        ObservedDevice(None, True),  # type: ignore[arg-type]
        ObservedDevice(DeviceState(device_id="../etc"), True),
        ObservedDevice(DeviceState(device_id=wave[0], version="8"), True),  # type: ignore[arg-type]
        ObservedDevice(DeviceState(device_id=wave[0], groups=None), True),  # type: ignore[arg-type]
        ObservedDevice(DeviceState(device_id=wave[0], health=None), True),  # type: ignore[arg-type]
        ObservedDevice(DeviceState(device_id=wave[0], last_seen=math.nan), True),
        ObservedDevice(DeviceState(device_id=wave[0]), "yes"),  # type: ignore[arg-type]
        ObservedDevice(DeviceState(device_id=7), True),  # type: ignore[arg-type]
    ]
    decision = judge(RECORD, junk + good, NOW)
    assert decision.action == "advance"
    assert len(decision.ignored) == len(junk)
    assert "#0: not a device report (NoneType)" in decision.ignored
    assert any("version '8' is not a number" in i for i in decision.ignored)


def test_the_newest_report_of_a_device_counts() -> None:
    wave = in_wave()
    old = device(wave[0], version=7, outcome="rolled_back", reason="stale")
    new = device(wave[0])
    old = ObservedDevice(replace(old.state, last_seen=NOW - 100), True)
    fleet = [o for o in healthy_fleet() if o.state.device_id != wave[0]]
    for order in ([old, new], [new, old]):
        decision = judge(replace(RECORD, max_failure_rate=0.0), fleet + order, NOW)
        assert decision.action == "advance"
        assert decision.ignored == (f"#{len(fleet) + 1}: {wave[0]} reported twice; the newer report counts",)


def test_an_iterator_that_fails_midway_judges_nobody() -> None:
    def broken() -> Any:
        yield from healthy_fleet()[:3]
        raise OSError("broker connection lost")

    decision = judge(RECORD, broken(), NOW)
    assert decision.action == "advance"  # empty wave: nothing known against it
    assert decision.ignored == ("device list unreadable: OSError",)


anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.binary(max_size=4))


@settings(max_examples=200, deadline=None)
@given(
    fields=st.fixed_dictionaries(
        {},
        optional={
            "groups": st.one_of(anything, st.dictionaries(st.text(max_size=4), anything, max_size=3)),
            "model": anything,
            "version": anything,
            "last_outcome": st.one_of(anything, st.sampled_from(["rolled_back", "refused", "error"])),
            "last_reason": anything,
            "rollout_id": anything,
            "health": anything,
            "last_seen": anything,
        },
    ),
    device_id=st.one_of(st.sampled_from(FLEET), anything),
    online=anything,
    now=st.floats(),
)
def test_no_report_crashes_the_judge(fields: dict[str, Any], device_id: Any, online: Any, now: float) -> None:
    state = DeviceState(device_id=device_id, **fields)
    decision = judge(RECORD, [ObservedDevice(state, online), *healthy_fleet()[:20]], now)
    assert decision.action in ("advance", "halt", "wait")
    assert decision.record.state in ("running", "completed", "halted")


def test_a_device_chosen_reason_code_enters_the_signed_halt_reason_short_and_plain() -> None:
    wave = in_wave()
    fleet = [o for o in healthy_fleet() if o.state.device_id not in wave[:3]]
    fleet += [device(d, version=7, outcome="error", reason="x" * 4000 + "\n<script>") for d in wave[:3]]
    decision = judge(RECORD, fleet, NOW)
    assert decision.action == "halt"
    assert f"{wave[0]} (error:{'x' * 48})" in decision.reason
    assert len(decision.record.reason) < 1000
    fleet = [o for o in fleet if o.state.device_id not in wave[:3]] + [device(wave[0], outcome="error", reason="")]
    assert f"{wave[0]} (error:unknown)" in judge(replace(RECORD, max_failure_rate=0.0), fleet, NOW).reason


def test_a_device_in_probation_is_waited_for_and_fails_the_wave_if_it_dies_there() -> None:
    """What the agent's phase report says mid-update: on the candidate, phase probation, health unknown."""
    from dataclasses import replace as _replace

    wave = in_wave()
    others = [o for o in healthy_fleet() if o.state.device_id != wave[0]]
    probation = _replace(device(wave[0], outcome="").state, phase="probation", health="unknown")
    decision = judge(RECORD, [*others, ObservedDevice(probation, True)], NOW)
    assert (decision.action, decision.waiting) == ("wait", (wave[0],))
    decision = judge(replace(RECORD, max_failure_rate=0.0), [*others, ObservedDevice(probation, False)], NOW)
    assert decision.action == "halt"
    assert [str(f) for f in decision.failures] == [f"{wave[0]} (offline-after-switch)"]


def test_devices_that_go_offline_mid_update_fail_the_wave_and_an_all_offline_wave_never_advances() -> None:
    from dataclasses import replace as _replace

    wave = set(in_wave())
    mid_update = [
        ObservedDevice(_replace(device(d, version=7).state, phase="canary"), False)
        if d in wave
        else device(d, version=7)
        for d in FLEET
    ]
    decision = judge(RECORD, mid_update, NOW)
    assert decision.action == "halt"
    assert {f.code for f in decision.failures} == {"offline-during-canary"}
    # Offline while still serving the stable version (never started): no failure, but nothing to advance on.
    gone = [device(d, version=7, online=False) if d in wave else device(d, version=7) for d in FLEET]
    assert judge(RECORD, gone, NOW).action == "wait"
