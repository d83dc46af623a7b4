"""The rollout record and the device's own wave decision (pure code)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

from edge_runtime.errors import InputError
from edge_runtime.fleet.rollout import RolloutRecord, bucket, canonical_json, target_path

RECORD = RolloutRecord(
    rollout_id="pump-anomaly-v8-1",
    model="pump-anomaly",
    channel="production",
    version=8,
    stable_version=7,
    waves=(1, 10, 50, 100),
    max_failure_rate=0.05,
    soak_s=600.0,
    started_at=1000.0,
    wave_started_at=1000.0,
)


def test_buckets_are_uniform_stable_and_differ_per_rollout() -> None:
    devices = [f"dev-{i:05d}" for i in range(10_000)]
    first = [bucket(d, "r1") for d in devices]
    assert first == [bucket(d, "r1") for d in devices]
    assert all(0 <= b < 100 for b in first)
    assert 900 <= sum(b < 10 for b in first) <= 1100  # 10 % of 10,000, within about 3 sigma
    other = [bucket(d, "r2") for d in devices]
    assert sum(a < 10 and b < 10 for a, b in zip(first, other, strict=True)) < 200  # not the same 10 %


def test_the_wave_widens_and_halted_or_aborted_records_send_everyone_back() -> None:
    devices = [f"dev-{i:04d}" for i in range(1000)]
    counts = []
    previous: set[str] = set()
    for wave in range(4):
        record = replace(RECORD, wave=wave)
        on_candidate = {d for d in devices if record.version_for(d, {}) == 8}
        counts.append(len(on_candidate))
        assert previous <= on_candidate  # a wave only adds devices
        previous = on_candidate
    assert counts[-1] == 1000
    assert counts[0] < counts[1] < counts[2] < 1000
    for state in ("halted", "aborted"):
        assert {replace(RECORD, wave=3, state=state).version_for(d, {}) for d in devices} == {7}
    assert replace(RECORD, state="completed").percent == 100


def test_a_group_selector_keeps_everyone_else_on_the_stable_version() -> None:
    record = replace(RECORD, waves=(100,), group={"hw": "pi4"})
    assert record.version_for("a", {"hw": "pi4", "site": "x"}) == 8
    assert record.version_for("a", {"hw": "pi3"}) == 7
    assert record.version_for("a", {}) == 7


def test_advancing_opens_the_next_wave_then_completes() -> None:
    record = replace(RECORD, wave=2).advanced(5000.0)
    assert (record.wave, record.state, record.wave_started_at) == (3, "running", 5000.0)
    assert record.advanced(6000.0).state == "completed"


def test_the_signed_form_has_no_floats_and_round_trips_exactly() -> None:
    record = replace(RECORD, soak_s=90.7, started_at=1000.9, max_failure_rate=0.1)
    assert record.soak_s == 90.0  # whole seconds, so what is read back equals what was published
    doc = record.to_dict()
    assert not any(isinstance(v, float) for v in doc.values())
    assert doc["max_failure_rate"] == "0.1"
    assert RolloutRecord.from_dict(json.loads(json.dumps(doc))) == record
    data = canonical_json(doc)
    assert RolloutRecord.from_target(record.target_path, len(data), {"sha256": hashlib.sha256(data).hexdigest()}, doc)


def test_from_target_checks_the_hash_and_the_path() -> None:
    doc = RECORD.to_dict()
    data = canonical_json(doc)
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(InputError, match="signed length/sha256"):
        RolloutRecord.from_target(RECORD.target_path, len(data), {"sha256": "0" * 64}, doc)
    with pytest.raises(InputError, match="holds the record of 'rollouts/production/pump-anomaly'"):
        RolloutRecord.from_target("rollouts/staging/pump-anomaly", len(data), {"sha256": sha}, doc)
    with pytest.raises(InputError, match="no record"):
        RolloutRecord.from_target(RECORD.target_path, 2, {"sha256": sha}, [1])
    assert target_path("production", "pump-anomaly") == "rollouts/production/pump-anomaly"
    with pytest.raises(InputError):
        target_path("a/b", "m")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("waves", [10, 50]),
        ("waves", [50, 10, 100]),
        ("waves", []),
        ("wave", 7),
        ("wave", True),
        ("state", "exploded"),
        ("version", "8"),
        ("stable_version", 8),
        ("model", "../x"),
        ("channel", ""),
        ("max_failure_rate", "lots"),
        ("max_failure_rate", 1.5),
        ("soak_s", -1),
        ("soak_s", "10m"),
        ("started_at", float("nan")),
        ("rollout_id", "a b"),
        ("group", {"hw": 4}),
        ("reason", 5),
    ],
)
def test_from_dict_refuses_every_bad_field_with_input_error(field: str, value: object) -> None:
    doc = {**RECORD.to_dict(), field: value}
    with pytest.raises(InputError):
        RolloutRecord.from_dict(doc)


def test_from_dict_names_a_missing_field_and_refuses_non_objects() -> None:
    doc = RECORD.to_dict()
    del doc["version"]
    with pytest.raises(InputError, match="no field 'version'"):
        RolloutRecord.from_dict(doc)
    with pytest.raises(InputError, match="not an object"):
        RolloutRecord.from_dict([])
