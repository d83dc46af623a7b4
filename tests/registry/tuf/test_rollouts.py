"""The rollouts role on the MLOps side: delegated to the controller's key, limited to rollouts/*/*, compare-and-swap."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edge_runtime.fleet.rollout import RolloutRecord
from registry.tuf import keys
from registry.tuf.errors import ApprovalError, MetadataMissing, RolloutConflict, ThresholdNotMet
from registry.tuf.repository import ROLLOUTS, RoleKeys
from tests.registry.tuf.fleet import Fleet, image, make_fleet


def record(**changes: object) -> RolloutRecord:
    base = RolloutRecord(
        rollout_id="pump-anomaly-v7-1",
        model="pump-anomaly",
        channel="production",
        version=7,
        stable_version=6,
        waves=(1, 10, 50, 100),
        soak_s=600.0,
        started_at=1000.0,
        wave_started_at=1000.0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return make_fleet(tmp_path / "repo")


def rollouts_key(fleet: Fleet) -> keys.CryptoSigner:
    if fleet.rollouts_key is None:
        raise AssertionError("the test fleet has a rollouts key")
    return fleet.rollouts_key


def test_create_delegates_only_rollouts_paths_to_the_controller_key(fleet: Fleet) -> None:
    delegations = fleet.repo.targets().signed.delegations
    assert delegations is not None
    assert delegations.roles is not None
    role = delegations.roles[ROLLOUTS]
    assert role.paths == ["rollouts/*/*"]
    assert role.terminating
    assert role.threshold == 1
    assert role.keyids == [rollouts_key(fleet).public_key.keyid]
    assert role.is_delegated_path("rollouts/production/pump-anomaly")
    for path in ("production/pump-anomaly/7", "rollouts/production", "rollouts/production/pump-anomaly/7"):
        assert not role.is_delegated_path(path)
    assert fleet.repo.rollout_records() == []
    assert "1.rollouts.json" in fleet.store.names()


def test_a_published_record_is_read_back_and_each_publication_is_a_new_version(fleet: Fleet) -> None:
    first = record()
    v1 = fleet.repo.publish_rollout(first, rollouts_key(fleet), expected=None)
    advanced = first.advanced(now=2000.0)
    v2 = fleet.repo.publish_rollout(advanced, rollouts_key(fleet), expected=first)
    assert v2 == v1 + 1
    assert fleet.repo.rollout_record("production", "pump-anomaly") == advanced
    other = record(rollout_id="bearing-v2-1", model="bearing-wear", version=2, stable_version=1)
    fleet.repo.publish_rollout(other, rollouts_key(fleet))
    assert fleet.repo.rollout_records() == [other, advanced]
    assert fleet.repo.rollout_record("staging", "pump-anomaly") is None


def test_approving_an_image_keeps_the_rollout_records_in_the_snapshot(fleet: Fleet) -> None:
    fleet.repo.publish_rollout(record(), rollouts_key(fleet))
    fleet.approve(image(7))
    fleet.repo.refresh()
    fleet.repo.renew_targets(fleet.targets_keys[:2])
    assert fleet.repo.rollout_record("production", "pump-anomaly") == record()
    assert set(fleet.repo.snapshot().signed.meta) == {"targets.json", "rollouts.json"}


def test_a_key_other_than_the_rollouts_key_cannot_publish_a_record(fleet: Fleet) -> None:
    before = fleet.store.names()
    for key in (fleet.targets_keys[0], fleet.snapshot_key, keys.generate()):
        with pytest.raises(ApprovalError, match="not the rollouts key"):
            fleet.repo.publish_rollout(record(), key)
    assert fleet.store.names() == before


def test_a_stale_expected_record_is_a_conflict_and_writes_nothing(fleet: Fleet) -> None:
    fleet.repo.publish_rollout(record(), rollouts_key(fleet), expected=None)
    before = fleet.store.names()
    with pytest.raises(RolloutConflict, match="changed since it was read"):
        fleet.repo.publish_rollout(record(state="paused"), rollouts_key(fleet), expected=None)
    with pytest.raises(RolloutConflict):
        fleet.repo.publish_rollout(record(state="paused"), rollouts_key(fleet), expected=record(wave=1))
    assert fleet.store.names() == before
    assert fleet.repo.rollout_record("production", "pump-anomaly") == record()


def test_an_existing_repository_gains_the_rollouts_role_with_a_threshold_of_targets_keys(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path / "repo", rollouts=False)
    fleet.approve(image(6))
    controller = keys.generate()
    with pytest.raises(MetadataMissing, match="no rollouts role"):
        fleet.repo.publish_rollout(record(), controller)
    assert fleet.repo.rollouts() is None
    assert fleet.repo.rollout_records() == []
    with pytest.raises(ThresholdNotMet):
        fleet.repo.delegate_rollouts(
            RoleKeys([controller.public_key]), targets_signers=fleet.targets_keys[:1], rollouts_signer=controller
        )
    assert fleet.repo.rollouts() is None
    fleet.repo.delegate_rollouts(
        RoleKeys([controller.public_key]), targets_signers=fleet.targets_keys[1:], rollouts_signer=controller
    )
    fleet.repo.publish_rollout(record(), controller)
    assert fleet.repo.rollout_record("production", "pump-anomaly") == record()
    assert [a.version for a in fleet.repo.approvals()] == [6]


def test_a_new_rollouts_key_re_signs_the_records_and_the_old_key_is_refused(fleet: Fleet) -> None:
    fleet.repo.publish_rollout(record(), rollouts_key(fleet))
    new = keys.generate()
    fleet.repo.delegate_rollouts(
        RoleKeys([new.public_key]), targets_signers=fleet.targets_keys[:2], rollouts_signer=new
    )
    assert fleet.repo.rollout_record("production", "pump-anomaly") == record()
    with pytest.raises(ApprovalError, match="not the rollouts key"):
        fleet.repo.publish_rollout(record(state="paused"), rollouts_key(fleet))
    fleet.repo.publish_rollout(record(state="paused"), new)
    delegations = fleet.repo.targets().signed.delegations
    assert delegations is not None
    assert set(delegations.keys) == {new.public_key.keyid}


def test_the_delegation_waits_for_a_pending_approval(fleet: Fleet) -> None:
    fleet.repo.propose(image(7), fleet.targets_keys[0])
    with pytest.raises(ApprovalError, match="approval is pending"):
        fleet.repo.delegate_rollouts(
            RoleKeys([rollouts_key(fleet).public_key]),
            targets_signers=fleet.targets_keys[1:],
            rollouts_signer=rollouts_key(fleet),
        )
    assert fleet.repo.pending() is not None


def test_renewing_the_rollouts_role_extends_its_expiry_only(fleet: Fleet) -> None:
    fleet.repo.publish_rollout(record(), rollouts_key(fleet))
    before = fleet.repo.rollouts()
    assert before is not None
    fleet.clock.advance(days=20)
    expires = fleet.repo.renew_rollouts(rollouts_key(fleet))
    after = fleet.repo.rollouts()
    assert after is not None
    assert after.signed.version == before.signed.version + 1
    assert expires == after.signed.expires > before.signed.expires
    assert after.signed.targets == before.signed.targets
