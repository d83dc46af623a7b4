"""ML-aware rollout health: a wave halts when the candidate model misbehaves in the field, containers healthy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_runtime.fleet.messages import DeviceState
from edge_runtime.fleet.rollout import RolloutRecord, bucket
from registry.fleet.model_health import ModelHealthConfigError, ModelHealthLimits, assess
from registry.fleet.rollout import ObservedDevice, judge

NOW = 1_000_000.0
RECORD = RolloutRecord(
    rollout_id="r-model",
    model="pump",
    channel="production",
    version=3,
    stable_version=2,
    waves=(20, 100),
    wave=0,
    soak_s=60,
    started_at=NOW - 600,
    wave_started_at=NOW - 600,
)
FLEET = [f"dev-{i:03d}" for i in range(100)]
IN_WAVE = [d for d in FLEET if bucket(d, RECORD.rollout_id) < 20]
OUTSIDE = [d for d in FLEET if bucket(d, RECORD.rollout_id) >= 20]
LIMITS = ModelHealthLimits()


def summary(version: int, ratio: float, readings: int = 1000, psi: dict[str, float] | None = None) -> dict[str, Any]:
    return {"version": version, "window": readings, "readings": readings, "anomaly_ratio": ratio, "psi": psi or {}}


def fleet(candidate: dict[str, Any] | None, stable: dict[str, Any] | None) -> list[ObservedDevice]:
    """Every device healthy on its version (the candidate in the wave, stable outside) with the given summaries."""
    out = []
    for device_id in FLEET:
        on_candidate = device_id in IN_WAVE
        state = DeviceState(
            device_id,
            model="pump",
            version=3 if on_candidate else 2,
            phase="serving",
            health="ok",
            last_outcome="updated",
            rollout_id=RECORD.rollout_id,
        )
        out.append(ObservedDevice(state, True, candidate if on_candidate else stable))
    return out


def test_a_candidate_that_alarms_on_everything_is_halted_while_its_containers_are_healthy() -> None:
    devices = fleet(summary(3, 0.93), summary(2, 0.02))
    assert judge(RECORD, devices, NOW).action == "advance", "without model limits the containers alone look fine"
    decision = judge(RECORD, devices, NOW, LIMITS)
    assert decision.action == "halt"
    assert decision.record.state == "halted"
    assert "flags 93.0% of readings" in decision.reason
    assert "2.0% for v2" in decision.reason
    assert {f.code for f in decision.failures} == {"model-anomaly-ratio"}
    assert {f.device_id for f in decision.failures} <= set(IN_WAVE)


def test_a_ratio_within_the_factor_of_the_stable_version_passes() -> None:
    assert judge(RECORD, fleet(summary(3, 0.05), summary(2, 0.02)), NOW, LIMITS).action == "advance"
    # The floor: a stable version that never alarms does not turn the candidate's rare alarm into a halt.
    assert judge(RECORD, fleet(summary(3, 0.02), summary(2, 0.0)), NOW, LIMITS).action == "advance"


def test_one_device_claiming_a_huge_window_does_not_outweigh_the_stable_fleet() -> None:
    """A device outside the wave that reports every reading anomalous over a billion readings (a bug, or a lie)
    weighs one field window, so the stable baseline stays what the rest of the fleet sees."""
    devices = fleet(summary(3, 0.93), summary(2, 0.02))
    liar = next(i for i, d in enumerate(devices) if d.state.device_id in OUTSIDE)
    devices[liar] = ObservedDevice(devices[liar].state, True, summary(2, 1.0, readings=10**9))
    decision = judge(RECORD, devices, NOW, LIMITS)
    assert decision.action == "halt", decision.reason
    assert {f.code for f in decision.failures} == {"model-anomaly-ratio"}


def test_without_stable_devices_reporting_an_absolute_cap_applies() -> None:
    devices = [(d, {}, summary(3, 0.8)) for d in IN_WAVE]
    verdict = assess(RECORD, devices, LIMITS)
    assert verdict is not None
    assert verdict.code == "model-anomaly-ratio"
    assert "no device on v2 reports" in verdict.reason
    assert assess(RECORD, [(d, {}, summary(3, 0.3)) for d in IN_WAVE], LIMITS) is None


def test_inputs_drifting_from_the_candidates_training_data_only_halt() -> None:
    drifted = summary(3, 0.02, psi={"temperature": 1.4, "pressure": 0.05})
    verdict = assess(
        RECORD,
        [(d, {}, drifted) for d in IN_WAVE] + [(d, {}, summary(2, 0.02, psi={"temperature": 0.1})) for d in OUTSIDE],
        LIMITS,
    )
    assert verdict is not None
    assert verdict.code == "model-drift"
    assert "temperature 1.40" in verdict.reason
    assert "pressure" not in verdict.reason
    # When the stable version's devices see the same drift, it is the field, not the candidate: no halt here.
    both = [(d, {}, drifted) for d in IN_WAVE] + [(d, {}, summary(2, 0.02, psi={"temperature": 1.2})) for d in OUTSIDE]
    assert assess(RECORD, both, LIMITS) is None


def test_too_few_readings_and_malformed_summaries_do_not_count() -> None:
    few = [(d, {}, summary(3, 0.99, readings=50)) for d in IN_WAVE]
    assert assess(RECORD, few, LIMITS) is None
    junk: list[Any] = [
        "x",
        None,
        7,
        {"version": "three"},
        summary(3, float("nan")),
        summary(3, 2.0),
        summary(3, 0.9, psi={"t": -1}),
    ]
    devices = [(IN_WAVE[i % len(IN_WAVE)], {}, j) for i, j in enumerate(junk)]
    assert assess(RECORD, devices, LIMITS) is None
    # judge never raises on them either
    states = fleet(None, None)
    states = [ObservedDevice(d.state, d.online, junk[i % len(junk)]) for i, d in enumerate(states)]
    assert judge(RECORD, states, NOW, LIMITS).action == "advance"


def test_limits_come_from_the_rollout_section_of_the_gates_file(tmp_path: Path) -> None:
    assert ModelHealthLimits.from_gates(Path("registry/gates.toml")) == ModelHealthLimits()
    gates = tmp_path / "gates.toml"
    gates.write_text("[rollout]\nanomaly_ratio_factor = 2\nmin_readings = 50\n")
    limits = ModelHealthLimits.from_gates(gates)
    assert (limits.anomaly_ratio_factor, limits.min_readings) == (2.0, 50)
    gates.write_text("[rollout]\nfactor = 2\n")
    with pytest.raises(ModelHealthConfigError, match="unknown key"):
        ModelHealthLimits.from_gates(gates)
    gates.write_text("[rollout]\nmax_psi = -1\n")
    with pytest.raises(ModelHealthConfigError, match=r"rollout\.max_psi"):
        ModelHealthLimits.from_gates(gates)
