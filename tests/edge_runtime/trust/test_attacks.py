"""One test per TUF attack class, plus key rotation and pending approvals, against the device's trust client.

The repository is the real one (registry.tuf); only the HTTP transfer is faked (fakes.DirectoryFetcher).
Each attack asserts the typed refusal with its reason code, and that the device's trust is unchanged after it.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, TargetFile, Targets

from edge_runtime.trust.errors import (
    BadSignature,
    InconsistentMetadata,
    NotApproved,
    OversizedMetadata,
    RollbackRefused,
    StaleMetadata,
)
from edge_runtime.trust.limits import MetadataLimits
from registry.tuf import keys
from tests.edge_runtime.trust.fakes import Device, attacker_copy, provision
from tests.registry.tuf.fleet import Clock, Fleet, image, make_fleet

CHANNEL, MODEL = "production", "pump-anomaly"


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    fleet = make_fleet(tmp_path / "repo")
    fleet.approve(image(7))
    return fleet


@pytest.fixture
def device(tmp_path: Path, fleet: Fleet) -> Device:
    return provision(tmp_path, fleet)


def approved_version(device: Device, version: int) -> int:
    return device.client.approval(image(version).digest, channel=CHANNEL, model=MODEL).version


def forge_targets(repo_targets: Targets, evil: TargetFile, signers: list[object]) -> Metadata[Targets]:
    md = Metadata(copy.deepcopy(repo_targets))
    md.signed.version += 1
    md.signed.targets[evil.path] = evil
    for signer in signers:
        md.sign(signer, append=True)  # type: ignore[arg-type]
    return md


def evil_target(version: int = 9) -> TargetFile:
    evil = image(version, tag="attacker's image")
    return TargetFile(evil.length, {"sha256": evil.sha256}, evil.target_path, {"custom": evil.custom()})


# --- arbitrary software ----------------------------------------------------------------------------------------
def test_arbitrary_software_an_unlisted_digest_is_not_approved(device: Device) -> None:
    assert approved_version(device, 7) == 7
    evil = image(7, tag="attacker's image")
    with pytest.raises(NotApproved, match=r"not approved for channel 'production'.*approved there: v7=") as caught:
        device.client.approval(evil.digest, channel=CHANNEL, model=MODEL)
    assert caught.value.reason == "not-approved"


def test_arbitrary_software_an_approval_for_another_channel_or_model_does_not_count(
    device: Device, fleet: Fleet
) -> None:
    fleet.approve(image(3, channel="staging"))
    staging = image(3, channel="staging").digest
    with pytest.raises(NotApproved, match="approved only as staging/pump-anomaly/3"):
        device.client.approval(staging, channel=CHANNEL, model=MODEL)
    with pytest.raises(NotApproved):
        device.client.approval(image(7).digest, channel=CHANNEL, model="other-model")


def test_arbitrary_software_tampered_targets_metadata_is_refused(device: Device, fleet: Fleet) -> None:
    """No key at all: the attacker swaps the digest of approved v7 for its own image's in the served file."""
    name = f"{fleet.repo.targets().signed.version}.targets.json"
    evil = image(7, tag="attacker's image")
    tampered = fleet.store.read(name).replace(image(7).sha256.encode(), evil.sha256.encode())
    assert tampered != fleet.store.read(name)
    device.fetcher.overrides[name] = tampered  # same length, real signatures, other content
    with pytest.raises(InconsistentMetadata) as caught:
        device.client.approval(evil.digest, channel=CHANNEL, model=MODEL)
    assert caught.value.reason == "inconsistent-metadata"


def test_arbitrary_software_signed_by_a_key_the_fleet_does_not_trust_is_refused(
    device: Device, fleet: Fleet, tmp_path: Path
) -> None:
    """The attacker holds the online keys (snapshot, timestamp) and signs targets with a key of its own."""
    attacker = attacker_copy(fleet, tmp_path / "evil")
    own_key = keys.generate()
    attacker._publish(
        forge_targets(attacker.targets().signed, evil_target(), [own_key, keys.generate()]), attacker.snapshot()
    )
    device.fetcher.root = tmp_path / "evil"
    with pytest.raises(BadSignature, match="targets was signed by 0/2 keys") as caught:
        device.client.approval(image(9, tag="attacker's image").digest, channel=CHANNEL, model=MODEL)
    assert caught.value.reason == "bad-signature"


# --- rollback --------------------------------------------------------------------------------------------------
def test_rollback_to_an_older_validly_signed_publication_is_refused(device: Device, fleet: Fleet) -> None:
    """v8 is approved and seen; the registry then serves the whole older publication (where v8 does not exist)."""
    old_timestamp = fleet.store.read("timestamp.json")  # every file of the older publication is still served
    fleet.approve(image(8))
    assert approved_version(device, 8) == 8
    device.fetcher.overrides["timestamp.json"] = old_timestamp
    with pytest.raises(RollbackRefused) as caught:
        device.client.approval(image(7).digest, channel=CHANNEL, model=MODEL)
    assert caught.value.reason == "rollback"
    # the anti-rollback state is on disk: a restarted client refuses it just the same
    with pytest.raises(RollbackRefused):
        device.restarted().client.refresh()
    del device.fetcher.overrides["timestamp.json"]
    assert approved_version(device.restarted(), 8) == 8


# --- indefinite freeze -----------------------------------------------------------------------------------------
def test_indefinite_freeze_expired_metadata_is_refused_until_re_signed(tmp_path: Path) -> None:
    """The registry keeps serving metadata from two days ago: signed, consistent, and expired."""
    clock = Clock()
    clock.advance(days=-2)
    fleet = make_fleet(tmp_path / "repo", clock=clock)
    fleet.approve(image(7))
    device = provision(tmp_path, fleet)
    with pytest.raises(StaleMetadata, match=r"timestamp\.json is expired") as caught:
        device.client.approval(image(7).digest, channel=CHANNEL, model=MODEL)
    assert caught.value.reason == "stale-metadata"
    clock.advance(days=2)
    fleet.repo.refresh()  # what the periodic MLOps command does
    assert approved_version(device, 7) == 7


# --- endless data ----------------------------------------------------------------------------------------------
def test_endless_data_an_unbounded_body_is_cut_at_its_cap(device: Device) -> None:
    chunks_sent = 0

    def endless() -> itertools.repeat[bytes]:
        return itertools.repeat(b"{" * 4096)

    def counting() -> object:
        nonlocal chunks_sent
        for chunk in endless():
            chunks_sent += 1
            yield chunk

    device.fetcher.overrides["timestamp.json"] = counting()  # type: ignore[assignment]
    with pytest.raises(OversizedMetadata, match="larger than its cap of 16384 bytes") as caught:
        device.client.refresh()
    assert caught.value.reason == "oversized-metadata"
    assert chunks_sent <= 16384 // 4096 + 1  # stopped reading at the cap, not at the end of the stream


def test_endless_data_the_device_cap_holds_even_when_the_signed_length_is_larger(tmp_path: Path, fleet: Fleet) -> None:
    """The snapshot signs the targets file's true length; the device's own cap is lower and wins."""
    for version in range(8, 20):
        fleet.approve(image(version))
    targets_size = len(fleet.store.read(f"{fleet.repo.targets().signed.version}.targets.json"))
    device = provision(tmp_path, fleet, MetadataLimits(targets=targets_size - 1))
    with pytest.raises(OversizedMetadata, match=f"cap of {targets_size - 1} bytes"):
        device.client.refresh()
    assert approved_version(provision(tmp_path / "big", fleet), 19) == 19


# --- mix-and-match ---------------------------------------------------------------------------------------------
def test_mix_and_match_an_older_targets_file_under_the_current_snapshot_is_refused(
    device: Device, fleet: Fleet
) -> None:
    old_targets = fleet.store.read(f"{fleet.repo.targets().signed.version}.targets.json")  # approves only v7
    fleet.approve(image(8))
    current = f"{fleet.repo.targets().signed.version}.targets.json"
    device.fetcher.overrides[current] = old_targets  # valid signatures, wrong publication
    with pytest.raises(InconsistentMetadata) as caught:
        device.client.refresh()
    assert caught.value.reason == "inconsistent-metadata"


# --- fast-forward ----------------------------------------------------------------------------------------------
def test_fast_forward_is_recovered_by_rotating_the_timestamp_key(device: Device, fleet: Fleet, tmp_path: Path) -> None:
    """A stolen timestamp key signs version 10**6: the device believes it (the key is valid) and would then
    refuse every real timestamp as a rollback. Rotating the timestamp key in root is the recovery: the device
    drops the timestamp it can no longer verify and accepts the real one again."""
    assert approved_version(device, 7) == 7
    attacker = attacker_copy(fleet, tmp_path / "evil")
    forged = attacker.timestamp()
    forged.signed.version = 10**6
    forged.sign(fleet.timestamp_key)
    (tmp_path / "evil" / "timestamp.json").write_bytes(forged.to_bytes())
    device.fetcher.root = tmp_path / "evil"
    device.client.refresh()  # accepted: signed by the (stolen) timestamp key
    device.fetcher.root = fleet.path
    fleet.approve(image(8))
    with pytest.raises(RollbackRefused, match="must be >= 1000000"):
        device.client.approval(image(8).digest, channel=CHANNEL, model=MODEL)
    new_key = keys.generate()
    fleet.repo.rotate(
        "timestamp",
        add=[new_key.public_key],
        remove=[fleet.timestamp_key.public_key.keyid],
        root_signers=fleet.root_keys[:2],
        role_signers=[new_key],
    )
    assert approved_version(device, 8) == 8


# --- key compromise below the threshold ------------------------------------------------------------------------
def test_one_stolen_approver_key_and_the_online_keys_cannot_approve(
    device: Device, fleet: Fleet, tmp_path: Path
) -> None:
    attacker = attacker_copy(fleet, tmp_path / "evil")
    forged = forge_targets(attacker.targets().signed, evil_target(), [fleet.targets_keys[0]])
    attacker._publish(forged, attacker.snapshot())  # snapshot and timestamp validly signed with stolen keys
    device.fetcher.root = tmp_path / "evil"
    with pytest.raises(BadSignature, match="targets was signed by 1/2 keys"):
        device.client.approval(image(9, tag="attacker's image").digest, channel=CHANNEL, model=MODEL)
    # The stolen online keys did fast-forward the device's snapshot and timestamp: until they are rotated it
    # cannot confirm the real repository (it keeps serving what it runs). Rotating them recovers it.
    device.fetcher.root = fleet.path
    with pytest.raises(RollbackRefused):
        device.client.refresh()
    rotate_online_keys(fleet)
    assert approved_version(device, 7) == 7


def rotate_online_keys(fleet: Fleet) -> None:
    for role in ("timestamp", "snapshot"):
        new_key = keys.generate()
        old = fleet.timestamp_key if role == "timestamp" else fleet.snapshot_key
        fleet.repo.rotate(
            role,  # type: ignore[arg-type]
            add=[new_key.public_key],
            remove=[old.public_key.keyid],
            root_signers=fleet.root_keys[:2],
            role_signers=[new_key],
        )


def test_one_stolen_root_key_cannot_rotate_the_fleet(device: Device, fleet: Fleet, tmp_path: Path) -> None:
    attacker = attacker_copy(fleet, tmp_path / "evil")
    root = attacker.root()
    root.signed.version = 2
    own = keys.generate()
    for role in ("root", "targets"):
        for keyid in list(root.signed.roles[role].keyids):
            root.signed.revoke_key(keyid, role)
        root.signed.add_key(own.public_key, role)
        root.signed.roles[role].threshold = 1
    root.sign(fleet.root_keys[0])
    root.sign(own, append=True)
    (tmp_path / "evil" / "2.root.json").write_bytes(root.to_bytes())
    device.fetcher.root = tmp_path / "evil"
    with pytest.raises(BadSignature, match="root was signed by 1/2 keys"):
        device.client.refresh()


# --- rotation and revocation -----------------------------------------------------------------------------------
def test_after_rotation_the_old_keys_alone_are_refused_and_updates_continue(
    device: Device, fleet: Fleet, tmp_path: Path
) -> None:
    assert approved_version(device, 7) == 7
    new_root = [keys.generate() for _ in range(3)]
    new_targets = [keys.generate() for _ in range(3)]
    fleet.repo.rotate(
        "root",
        add=[k.public_key for k in new_root],
        remove=[k.public_key.keyid for k in fleet.root_keys],
        root_signers=[*fleet.root_keys[:2], *new_root[:2]],
    )
    fleet.repo.rotate(
        "targets",
        add=[k.public_key for k in new_targets],
        remove=[k.public_key.keyid for k in fleet.targets_keys],
        root_signers=new_root[:2],
        role_signers=new_targets[:2],
    )
    old_targets_keys, fleet.targets_keys = fleet.targets_keys, new_targets
    fleet.approve(image(8))
    assert approved_version(device, 8) == 8  # the device walked root v1 -> v2 -> v3 and keeps updating

    # the old approvers' keys, even all of them, approve nothing any more
    attacker = attacker_copy(fleet, tmp_path / "evil")
    attacker._publish(forge_targets(attacker.targets().signed, evil_target(), old_targets_keys), attacker.snapshot())
    device.fetcher.root = tmp_path / "evil"
    with pytest.raises(BadSignature, match="targets was signed by 0/2 keys"):
        device.client.refresh()

    # nor can the old root keys sign a next root
    forged_root = fleet.repo.root()
    forged_root.signed.version += 1
    forged_root.signatures.clear()
    for key in fleet.root_keys:
        forged_root.sign(key, append=True)
    (tmp_path / "evil" / f"{forged_root.signed.version}.root.json").write_bytes(forged_root.to_bytes())
    with pytest.raises(BadSignature, match="root was signed by 0/2 keys"):
        device.client.refresh()


# --- pending approval ------------------------------------------------------------------------------------------
def test_one_of_two_signatures_is_not_approved_two_of_two_is(device: Device, fleet: Fleet, tmp_path: Path) -> None:
    fleet.repo.propose(image(8), fleet.targets_keys[0])
    with pytest.raises(NotApproved, match="approved there: v7="):
        device.client.approval(image(8).digest, channel=CHANNEL, model=MODEL)

    # publishing the half-signed approval (with the stolen online keys) does not make it count
    attacker = attacker_copy(fleet, tmp_path / "evil")
    pending = Metadata[Targets].from_bytes((tmp_path / "evil" / "pending.targets.json").read_bytes())
    attacker._publish(pending, attacker.snapshot())
    victim = provision(tmp_path / "victim", fleet)
    victim.fetcher.root = tmp_path / "evil"
    with pytest.raises(BadSignature, match="targets was signed by 1/2 keys"):
        victim.client.approval(image(8).digest, channel=CHANNEL, model=MODEL)

    fleet.repo.approve_pending(fleet.targets_keys[1])
    approval = device.client.approval(image(8).digest, channel=CHANNEL, model=MODEL)
    assert (approval.version, approval.base_digest) == (8, image(8).base_digest)
