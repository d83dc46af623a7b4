"""The fleet's TUF repository: creation, four-eyes approvals, freshness, rotation and revocation.

Each published file is checked with python-tuf's own verification, as a device would.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from registry.tuf import keys
from registry.tuf.errors import ApprovalError, ThresholdNotMet, TrustRepositoryError
from registry.tuf.repository import PENDING, FleetRepository, RoleKeys, create
from registry.tuf.store import DirectoryStore
from tests.registry.tuf.fleet import Fleet, forge_pending, image, make_fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return make_fleet(tmp_path / "repo")


def verified(fleet: Fleet) -> tuple[Root, Timestamp, Snapshot, Targets]:
    """Load the published metadata and check every signature threshold and cross-reference, like a device."""
    root = fleet.repo.root()
    root.signed.verify_delegate("root", root.signed_bytes, root.signatures)
    ts_bytes = fleet.store.read("timestamp.json")
    ts = Metadata[Timestamp].from_bytes(ts_bytes)
    root.signed.verify_delegate("timestamp", ts.signed_bytes, ts.signatures)
    snap_bytes = fleet.store.read(f"{ts.signed.snapshot_meta.version}.snapshot.json")
    ts.signed.snapshot_meta.verify_length_and_hashes(snap_bytes)
    snap = Metadata[Snapshot].from_bytes(snap_bytes)
    root.signed.verify_delegate("snapshot", snap.signed_bytes, snap.signatures)
    meta = snap.signed.meta["targets.json"]
    targets_bytes = fleet.store.read(f"{meta.version}.targets.json")
    meta.verify_length_and_hashes(targets_bytes)
    targets = Metadata[Targets].from_bytes(targets_bytes)
    root.signed.verify_delegate("targets", targets.signed_bytes, targets.signatures)
    return root.signed, ts.signed, snap.signed, targets.signed


def test_create_publishes_an_empty_verified_repository_with_thresholds(fleet: Fleet) -> None:
    root, ts, snap, targets = verified(fleet)
    assert root.version == 1
    assert root.consistent_snapshot
    assert {r: root.roles[r].threshold for r in root.roles} == {
        "root": 2,
        "targets": 2,
        "snapshot": 1,
        "timestamp": 1,
    }
    assert len(root.roles["targets"].keyids) == 3
    assert targets.targets == {}
    assert ts.version == 1
    assert snap.version == 1
    assert fleet.store.read("root.json") == fleet.store.read("1.root.json")
    assert ts.expires == fleet.clock() + timedelta(days=1)  # short: a frozen repository shows within a day
    assert not any(n.endswith(".key") for n in fleet.store.names())  # no private key ever reaches the store


def test_create_refuses_fewer_root_signers_than_the_threshold(tmp_path: Path) -> None:
    root_keys = [keys.generate() for _ in range(3)]
    other = keys.generate()
    store = DirectoryStore(tmp_path / "repo")
    with pytest.raises(ThresholdNotMet, match="signed by 1 of the 2 root keys"):
        create(
            store,
            root=RoleKeys([k.public_key for k in root_keys], threshold=2),
            targets=RoleKeys([other.public_key]),
            snapshot=RoleKeys([other.public_key]),
            timestamp=RoleKeys([other.public_key]),
            root_signers=root_keys[:1],
            targets_signers=[other],
            snapshot_signer=other,
            timestamp_signer=other,
        )
    assert store.names() == []


def test_a_threshold_above_the_number_of_keys_is_refused() -> None:
    with pytest.raises(ThresholdNotMet, match="threshold 3 is more than the 2 distinct keys"):
        RoleKeys([keys.generate().public_key, keys.generate().public_key], threshold=3)


def test_create_refuses_to_overwrite_a_repository(fleet: Fleet) -> None:
    with pytest.raises(TrustRepositoryError, match="already holds a repository"):
        make_fleet(fleet.path)


def test_one_approver_leaves_the_approval_pending_and_unpublished(fleet: Fleet) -> None:
    status = fleet.repo.propose(image(7), fleet.targets_keys[0])
    assert status.state == "pending"
    assert status.missing == 1
    assert status.threshold == 2
    assert status.signed_by == (fleet.targets_keys[0].public_key.keyid,)
    _, ts, _, targets = verified(fleet)
    assert targets.targets == {}
    assert ts.version == 1
    assert fleet.repo.pending() == status
    assert fleet.repo.approvals() == []


def test_the_second_approver_publishes_it(fleet: Fleet) -> None:
    fleet.repo.propose(image(7), fleet.targets_keys[0])
    status = fleet.repo.approve_pending(fleet.targets_keys[2])
    assert status.state == "approved"
    assert status.missing == 0
    assert status.approval == image(7)
    _, ts, snap, targets = verified(fleet)
    target = targets.targets["production/pump-anomaly/7"]
    assert target.hashes == {"sha256": image(7).sha256}
    assert target.length == image(7).length
    assert target.custom == {
        "channel": "production",
        "model": "pump-anomaly",
        "version": 7,
        "base_digest": image(7).base_digest,
    }
    assert (targets.version, snap.version, ts.version) == (2, 2, 2)
    assert not fleet.store.exists(PENDING)
    assert fleet.repo.approvals() == [image(7)]


def test_the_same_approver_twice_is_not_four_eyes(fleet: Fleet) -> None:
    fleet.repo.propose(image(7), fleet.targets_keys[0])
    with pytest.raises(ApprovalError, match="a second, different approver must sign"):
        fleet.repo.approve_pending(fleet.targets_keys[0])
    assert fleet.repo.approvals() == []


def test_a_key_that_is_no_targets_key_cannot_approve(fleet: Fleet) -> None:
    with pytest.raises(ApprovalError, match="is not a targets key"):
        fleet.repo.propose(image(7), fleet.root_keys[0])
    fleet.repo.propose(image(7), fleet.targets_keys[0])
    with pytest.raises(ApprovalError, match="is not a targets key"):
        fleet.repo.approve_pending(fleet.snapshot_key)


def test_approved_versions_are_immutable(fleet: Fleet) -> None:
    fleet.approve(image(7))
    assert fleet.repo.propose(image(7), fleet.targets_keys[0]).approval == image(7)  # idempotent
    with pytest.raises(ApprovalError, match="approved versions are immutable"):
        fleet.repo.propose(image(7, tag="other bytes"), fleet.targets_keys[0])


def test_a_new_version_is_staged_only_where_rollouts_move_devices_from_an_earlier_one(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path / "waves")
    assert not fleet.repo.stages("production", "pump-anomaly", 7), "a model's first version: nothing to fall back to"
    fleet.approve(image(7))
    assert fleet.repo.stages("production", "pump-anomaly", 8)
    assert not fleet.repo.stages("staging", "pump-anomaly", 8), "another channel has no version yet"
    assert not fleet.repo.stages("production", "other-model", 8)
    # Approved again with a different staged flag: the same image, reported as published, not a conflict.
    assert fleet.repo.propose(image(7, staged=True), fleet.targets_keys[0]).approval == image(7)
    plain = make_fleet(tmp_path / "plain", rollouts=False)
    plain.approve(image(7))
    assert not plain.repo.stages("production", "pump-anomaly", 8), "no rollouts role: no rollout could ever move it"


def test_one_pending_approval_at_a_time(fleet: Fleet) -> None:
    fleet.repo.propose(image(7), fleet.targets_keys[0])
    with pytest.raises(ApprovalError, match="waiting for 1 more signature"):
        fleet.repo.propose(image(8), fleet.targets_keys[1])
    fleet.repo.discard_pending()
    assert fleet.approve(image(8)).state == "approved"


def test_approve_pending_without_one_says_so(fleet: Fleet) -> None:
    with pytest.raises(ApprovalError, match="no pending approval"):
        fleet.repo.approve_pending(fleet.targets_keys[1])


def test_refresh_re_signs_the_timestamp_with_a_short_expiry(fleet: Fleet) -> None:
    fleet.clock.advance(hours=20)
    expires = fleet.repo.refresh()
    _, ts, snap, _ = verified(fleet)
    assert expires == ts.expires == fleet.clock() + timedelta(days=1)
    assert ts.version == 2
    assert snap.version == 1


def test_refresh_re_signs_the_snapshot_before_it_expires(fleet: Fleet) -> None:
    fleet.clock.advance(days=6, hours=12)
    fleet.repo.refresh()
    _, ts, snap, _ = verified(fleet)
    assert snap.version == 2
    assert snap.expires == fleet.clock() + timedelta(days=7)
    assert ts.snapshot_meta.version == 2


def test_refresh_works_from_a_fresh_handle_holding_only_online_keys(fleet: Fleet) -> None:
    """What the periodic command does: open the store with the online keys only."""
    repo = FleetRepository(fleet.store, snapshot_signer=fleet.snapshot_key, timestamp_signer=fleet.timestamp_key)
    repo.refresh()
    assert verified(fleet)[1].version == 2


def test_root_rotation_is_signed_by_old_and_new_keys(fleet: Fleet) -> None:
    new_key = keys.generate("ed25519")
    old = fleet.root_keys[0]
    version = fleet.repo.rotate(
        "root",
        add=[new_key.public_key],
        remove=[old.public_key.keyid],
        root_signers=[*fleet.root_keys[:2], new_key],
    )
    assert version == 2
    v1 = Metadata[Root].from_bytes(fleet.store.read("1.root.json")).signed
    v2 = Metadata[Root].from_bytes(fleet.store.read("2.root.json"))
    v1.verify_delegate("root", v2.signed_bytes, v2.signatures)  # the chain a device walks
    v2.signed.verify_delegate("root", v2.signed_bytes, v2.signatures)
    assert old.public_key.keyid not in v2.signed.roles["root"].keyids
    assert fleet.store.read("root.json") == fleet.store.read("2.root.json")


def test_rotation_without_the_old_threshold_writes_nothing(fleet: Fleet) -> None:
    new_keys = [keys.generate() for _ in range(2)]
    with pytest.raises(ThresholdNotMet, match="by the keys of v1"):
        fleet.repo.rotate(
            "root",
            add=[k.public_key for k in new_keys],
            remove=[k.public_key.keyid for k in fleet.root_keys],
            root_signers=[*new_keys, fleet.root_keys[0]],
        )
    assert not fleet.store.exists("2.root.json")


def test_revoking_a_targets_key_re_signs_the_approvals_with_the_others(fleet: Fleet) -> None:
    fleet.approve(image(7))
    leaked = fleet.targets_keys[0]
    fleet.repo.revoke(
        "targets", leaked.public_key.keyid, root_signers=fleet.root_keys[:2], role_signers=fleet.targets_keys[1:]
    )
    root, _, _, targets = verified(fleet)
    assert leaked.public_key.keyid not in root.roles["targets"].keyids
    assert set(fleet.repo.targets().signatures) == {k.public_key.keyid for k in fleet.targets_keys[1:]}
    assert list(targets.targets) == ["production/pump-anomaly/7"]
    with pytest.raises(ApprovalError, match="is not a targets key of root v2"):
        fleet.repo.propose(image(8), leaked)


def test_revoking_below_the_threshold_is_refused(fleet: Fleet) -> None:
    fleet.repo.revoke(
        "targets",
        fleet.targets_keys[0].public_key.keyid,
        root_signers=fleet.root_keys[:2],
        role_signers=fleet.targets_keys[1:],
    )
    with pytest.raises(ThresholdNotMet, match="threshold 2 is more than the 1 distinct keys"):
        fleet.repo.revoke(
            "targets",
            fleet.targets_keys[1].public_key.keyid,
            root_signers=fleet.root_keys[:2],
            role_signers=fleet.targets_keys[2:],
        )
    assert not fleet.store.exists("3.root.json")


def test_rotating_the_timestamp_key_switches_the_online_signer(fleet: Fleet) -> None:
    new_ts = keys.generate()
    fleet.repo.rotate(
        "timestamp",
        add=[new_ts.public_key],
        remove=[fleet.timestamp_key.public_key.keyid],
        root_signers=fleet.root_keys[:2],
        role_signers=[new_ts],
    )
    fleet.repo.refresh()
    root, ts, _, _ = verified(fleet)
    assert root.roles["timestamp"].keyids == [new_ts.public_key.keyid]
    assert list(fleet.repo.timestamp().signatures) == [new_ts.public_key.keyid]
    assert ts.version == 3


def test_rotating_targets_discards_a_pending_approval(fleet: Fleet) -> None:
    fleet.repo.propose(image(7), fleet.targets_keys[0])
    fleet.repo.rotate("targets", threshold=1, root_signers=fleet.root_keys[:2], role_signers=fleet.targets_keys[:1])
    assert fleet.repo.pending() is None
    assert fleet.repo.propose(image(7), fleet.targets_keys[2]).state == "approved"  # threshold now 1


def test_renewing_targets_extends_their_expiry_and_needs_the_threshold(fleet: Fleet) -> None:
    fleet.approve(image(7))
    fleet.clock.advance(days=80)
    with pytest.raises(ThresholdNotMet, match="signed by 1 of the 2 targets keys"):
        fleet.repo.renew_targets(fleet.targets_keys[:1])
    expires = fleet.repo.renew_targets(fleet.targets_keys[1:])
    _, _, _, targets = verified(fleet)
    assert expires == targets.expires == fleet.clock() + timedelta(days=90)
    assert targets.version == 3
    assert fleet.repo.approvals() == [image(7)]


def test_proposing_an_approved_version_again_reports_that_approval(fleet: Fleet) -> None:
    fleet.approve(image(7))
    fleet.approve(image(8))
    status = fleet.repo.propose(image(7), fleet.targets_keys[2])
    assert status.state == "approved"
    assert status.approval == image(7)


def test_a_pending_approval_that_also_changes_another_target_is_refused(tmp_path: Path) -> None:
    """The second approver signs the whole file: one stolen key must not slip a second change past them."""

    from tuf.api.metadata import Metadata

    from registry.tuf.errors import ApprovalError
    from registry.tuf.repository import PENDING

    fleet = make_fleet(tmp_path / "repo")
    fleet.approve(image(8))
    evil = image(8, tag="attacker")
    fleet.repo.propose(image(9), fleet.targets_keys[0])
    pending: Metadata = Metadata.from_bytes(fleet.store.read(PENDING))
    forge_pending(fleet, pending.signed, evil)
    with pytest.raises(ApprovalError, match="changes 1 targets"):
        fleet.repo.approve_pending(fleet.targets_keys[1])
    assert [a.digest for a in fleet.repo.approvals()] == [image(8).digest]
