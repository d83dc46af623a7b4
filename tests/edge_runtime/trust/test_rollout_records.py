"""The device reads signed rollout records through the delegation walk, and nobody but the rollouts key writes them.

Real repository (registry.tuf), real ngclient; only the HTTP transfer is faked (fakes.DirectoryFetcher).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import DelegatedRole, Delegations, Metadata, TargetFile, Targets

from edge_runtime.fleet.rollout import RolloutRecord, canonical_json
from edge_runtime.trust.errors import (
    BadSignature,
    InconsistentMetadata,
    MalformedMetadata,
    NotApproved,
    StaleMetadata,
)
from registry.tuf import keys
from registry.tuf.repository import ROLLOUTS, FleetRepository
from tests.edge_runtime.trust.fakes import Device, attacker_copy, provision
from tests.edge_runtime.trust.test_attacks import evil_target, forge_targets
from tests.registry.tuf.fleet import Clock, Fleet, image, make_fleet

CHANNEL, MODEL = "production", "pump-anomaly"


def record(**changes: object) -> RolloutRecord:
    base = RolloutRecord(
        rollout_id="pump-anomaly-v7-1",
        model=MODEL,
        channel=CHANNEL,
        version=7,
        stable_version=6,
        waves=(1, 10, 50, 100),
        started_at=1000.0,
        wave_started_at=1000.0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    fleet = make_fleet(tmp_path / "repo")
    for version in (6, 7):
        fleet.approve(image(version))
    return fleet


@pytest.fixture
def device(tmp_path: Path, fleet: Fleet) -> Device:
    return provision(tmp_path, fleet)


def controller_key(fleet: Fleet) -> CryptoSigner:
    if fleet.rollouts_key is None:
        raise AssertionError("the test fleet has a rollouts key")
    return fleet.rollouts_key


def publish_rollouts_role(repo: FleetRepository, targets: dict[str, TargetFile], *signers: CryptoSigner) -> None:
    """Publish a rollouts role holding ``targets``, signed by ``signers``, with the repository's online keys."""
    current = repo.rollouts()
    if current is None:
        raise AssertionError("the repository has a rollouts role")
    md = Metadata(copy.deepcopy(current.signed))
    md.signed.version += 1
    md.signed.targets = dict(targets)
    for signer in signers:
        md.sign(signer, append=True)
    repo._publish_roles({ROLLOUTS: md}, repo.snapshot())


def record_target(doc: dict[str, object], path: str = f"rollouts/{CHANNEL}/{MODEL}") -> TargetFile:
    data = canonical_json(doc)
    return TargetFile(len(data), {"sha256": hashlib.sha256(data).hexdigest()}, path, {"custom": doc})


def test_a_record_signed_by_the_rollouts_key_is_read_back(device: Device, fleet: Fleet) -> None:
    assert device.client.rollout(CHANNEL, MODEL) is None
    fleet.repo.publish_rollout(record(), controller_key(fleet))
    device.client.refresh()
    assert device.client.rollout(CHANNEL, MODEL) == record()
    halted = record(state="halted", reason="2 of 3 devices failed")
    fleet.repo.publish_rollout(halted, controller_key(fleet))
    device.client.refresh()
    got = device.client.rollout(CHANNEL, MODEL)
    assert got == halted
    assert got.version_for("any-device", {}) == 6
    assert device.client.rollout("staging", MODEL) is None
    assert any(url.endswith(".rollouts.json") for url in device.fetcher.requests)


def test_after_a_refresh_the_record_comes_from_the_same_publication_with_one_timestamp_fetch(
    device: Device, fleet: Fleet
) -> None:
    """The agent's poll: refresh() for the approvals, then rollout(): one timestamp read, one consistent view."""
    fleet.repo.publish_rollout(record(), controller_key(fleet))
    device.client.refresh()
    device.fetcher.requests.clear()
    fleet.repo.publish_rollout(record(state="halted", reason="x"), controller_key(fleet))  # after that refresh
    assert device.client.rollout(CHANNEL, MODEL) == record()
    assert [u.rsplit("/", 1)[-1] for u in device.fetcher.requests] == ["2.rollouts.json"]
    device.client.refresh()
    got = device.client.rollout(CHANNEL, MODEL)
    assert got is not None
    assert got.state == "halted"
    assert sum(u.endswith("timestamp.json") for u in device.fetcher.requests) == 1


def test_a_repository_without_the_role_has_no_records(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path / "repo", rollouts=False)
    assert provision(tmp_path, fleet).client.rollout(CHANNEL, MODEL) is None


def test_a_record_edited_in_the_served_files_is_refused(device: Device, fleet: Fleet) -> None:
    """No key: the registry's attacker opens the wave to 100 % in the file it serves."""
    fleet.repo.publish_rollout(record(), controller_key(fleet))
    rollouts = fleet.repo.rollouts()
    assert rollouts is not None
    name = f"{rollouts.signed.version}.rollouts.json"
    served = fleet.store.read(name)
    tampered = served.replace(b'"state":"running"', b'"state":"complet"')  # same length: only the hash tells
    assert len(tampered) == len(served)
    assert tampered != fleet.store.read(name)
    device.fetcher.overrides[name] = tampered
    with pytest.raises(InconsistentMetadata):
        device.client.rollout(CHANNEL, MODEL)


def test_a_record_signed_by_another_key_is_refused(device: Device, fleet: Fleet, tmp_path: Path) -> None:
    """The attacker holds the online snapshot and timestamp keys, and even one approver's key, not the rollouts key."""
    attacker = attacker_copy(fleet, tmp_path / "evil")
    wide_open = record(state="completed")
    publish_rollouts_role(
        attacker, {wide_open.target_path: record_target(wide_open.to_dict())}, keys.generate(), fleet.targets_keys[0]
    )
    device.fetcher.root = tmp_path / "evil"
    with pytest.raises(BadSignature, match="rollouts"):
        device.client.rollout(CHANNEL, MODEL)


def test_the_rollouts_key_cannot_approve_an_image(device: Device, fleet: Fleet) -> None:
    evil = evil_target(9)
    publish_rollouts_role(fleet.repo, {evil.path: evil}, controller_key(fleet))
    with pytest.raises(NotApproved, match="not approved for channel 'production'"):
        device.client.approval(image(9, tag="attacker's image").digest, channel=CHANNEL, model=MODEL)
    assert device.client.latest(channel=CHANNEL, model=MODEL).version == 7


def test_the_rollouts_key_and_one_approver_still_cannot_approve(device: Device, fleet: Fleet, tmp_path: Path) -> None:
    """With the whole controller (rollouts + online keys) and one approver key: the approvals threshold holds."""
    attacker = attacker_copy(fleet, tmp_path / "evil")
    forged = forge_targets(attacker.targets().signed, evil_target(), [fleet.targets_keys[0], controller_key(fleet)])
    attacker._publish(forged, attacker.snapshot())
    device.fetcher.root = tmp_path / "evil"
    with pytest.raises(BadSignature, match="targets was signed by 1/2 keys"):
        device.client.approval(image(9, tag="attacker's image").digest, channel=CHANNEL, model=MODEL)


def test_a_deeper_delegation_by_the_rollouts_key_is_not_followed(device: Device, fleet: Fleet) -> None:
    """A leaked rollouts key cannot hand the records to a key of its own through a second level of delegation."""
    other = keys.generate()
    rollouts = fleet.repo.rollouts()
    assert rollouts is not None
    md = Metadata(copy.deepcopy(rollouts.signed))
    md.signed.version += 1
    md.signed.delegations = Delegations(
        keys={other.public_key.keyid: other.public_key},
        roles={"deeper": DelegatedRole("deeper", [other.public_key.keyid], 1, True, ["rollouts/*/*"])},
    )
    md.sign(controller_key(fleet))
    deeper = Metadata(Targets(targets={record().target_path: record_target(record().to_dict())}))
    deeper.sign(other)
    fleet.repo._publish_roles({ROLLOUTS: md, "deeper": deeper}, fleet.repo.snapshot())
    assert device.client.rollout(CHANNEL, MODEL) is None
    assert not any("deeper" in url for url in device.fetcher.requests)


@pytest.mark.parametrize(
    "doc",
    [
        {"rollout_id": "x"},  # no waves, version, ...
        {**record().to_dict(), "waves": [10, 50]},  # does not end at 100
        {**record().to_dict(), "wave": "1"},
        {**record().to_dict(), "soak_s": "600"},
        {**record().to_dict(), "model": "../etc"},
        {**record().to_dict(), "channel": "staging"},  # the record of another path
    ],
)
def test_a_signed_but_malformed_record_is_malformed_metadata(device: Device, fleet: Fleet, doc: dict) -> None:
    publish_rollouts_role(fleet.repo, {record().target_path: record_target(doc)}, controller_key(fleet))
    with pytest.raises(MalformedMetadata):
        device.client.rollout(CHANNEL, MODEL)


def test_a_record_whose_fields_do_not_hash_to_the_signed_length_is_malformed(device: Device, fleet: Fleet) -> None:
    target = record_target(record().to_dict())
    target.unrecognized_fields["custom"] = record(wave=3).to_dict()
    publish_rollouts_role(fleet.repo, {target.path: target}, controller_key(fleet))
    with pytest.raises(MalformedMetadata, match="signed length/sha256"):
        device.client.rollout(CHANNEL, MODEL)
    not_a_record = record_target(record().to_dict())
    not_a_record.unrecognized_fields["custom"] = json.loads('["a", "list"]')
    publish_rollouts_role(fleet.repo, {target.path: not_a_record}, controller_key(fleet))
    device.client.refresh()
    with pytest.raises(MalformedMetadata, match="no record"):
        device.client.rollout(CHANNEL, MODEL)


def test_an_expired_rollouts_role_is_stale(tmp_path: Path) -> None:
    """The controller stopped: snapshot and timestamp stay fresh (the timer), the rollouts role expires."""
    clock = Clock()
    clock.advance(days=-31)
    fleet = make_fleet(tmp_path / "repo", clock=clock)
    fleet.repo.publish_rollout(record(), controller_key(fleet))
    clock.advance(days=31)
    fleet.repo.refresh()
    device = provision(tmp_path, fleet)
    with pytest.raises(StaleMetadata):
        device.client.rollout(CHANNEL, MODEL)
    fleet.repo.renew_rollouts(controller_key(fleet))
    device.client.refresh()
    assert device.client.rollout(CHANNEL, MODEL) == record()


@pytest.mark.parametrize(("channel", "model"), [("../x", MODEL), (CHANNEL, "a/b"), ("", MODEL)])
def test_a_name_that_is_no_path_component_is_refused(device: Device, channel: str, model: str) -> None:
    with pytest.raises(MalformedMetadata):
        device.client.rollout(channel, model)
