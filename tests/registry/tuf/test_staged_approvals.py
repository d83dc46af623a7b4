"""Staged approvals: no path by which a staged version reaches devices without a rollout of it or a signed rollback
to it.

Each test plays the real repository, the real rollout service and the device's own decision
(:class:`edge_runtime.agent.trust_policy.TrustPolicy`, reading the published approvals and record in place of the
TUF client).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from edge_runtime.agent.trust_policy import TrustPolicy
from edge_runtime.trust.approval import ApprovalSet
from edge_runtime.trust.errors import TrustError
from registry.fleet.rollout import RolloutInputError, RolloutService, TufRecordStore
from registry.tuf.errors import ApprovalError
from tests.registry.tuf.fleet import Fleet, forge_pending, image, make_fleet

CHANNEL, MODEL = "production", "pump-anomaly"
DEVICES = [f"dev-{i}" for i in range(40)]


class _Published:
    """The published approvals, as the device's TUF client returns them after a refresh."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def refresh(self) -> ApprovalSet:
        repo = self.fleet.repo
        return ApprovalSet(tuple(repo.approvals()), repo.targets().signed.version, "")


def versions_run(fleet: Fleet) -> Counter[int | str]:
    """How many devices run each version (a device that may run nothing new counts as 'keeps')."""
    out: Counter[int | str] = Counter()
    for device in DEVICES:
        policy = TrustPolicy(_Published(fleet), CHANNEL, MODEL, device, {}, rollout=fleet.repo.rollout_record)
        try:
            out[policy.desired().version] += 1
        except TrustError:
            out["keeps"] += 1
    return out


def promote(fleet: Fleet, version: int) -> None:
    """What `otaml promote` approves (registry.promotion._approve), with four eyes."""
    staged = fleet.repo.stages(CHANNEL, MODEL, version)
    assert fleet.approve(dataclasses.replace(image(version), staged=staged)).state == "approved"


def roll_back(fleet: Fleet, to: int) -> None:
    if fleet.repo.withdraw(CHANNEL, MODEL, above=to, signer=fleet.targets_keys[0]).state == "pending":
        fleet.repo.approve_pending(fleet.targets_keys[1])


def service(fleet: Fleet) -> RolloutService:
    return RolloutService(TufRecordStore(fleet.repo, fleet.rollouts_key), clock=lambda: 1000.0)


def finish(fleet: Fleet, state: str) -> None:
    record = fleet.repo.rollout_record(CHANNEL, MODEL)
    assert record is not None
    assert fleet.rollouts_key is not None
    fleet.repo.publish_rollout(dataclasses.replace(record, state=state), fleet.rollouts_key, expected=record)


def test_a_rollback_to_a_staged_version_approves_it_for_the_devices_in_the_same_signed_act(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path / "repo")
    for version in (1, 2, 3):
        promote(fleet, version)
    service(fleet).start(MODEL, 3, channel=CHANNEL, waves=(100,), soak_s=0)  # stable v1: v2 is skipped
    finish(fleet, "completed")
    assert versions_run(fleet) == {3: len(DEVICES)}
    roll_back(fleet, 2)  # four eyes: the second approver signs the withdrawal of v3 and v2 no longer staged
    assert [(a.version, a.staged) for a in fleet.repo.approvals()] == [(1, False), (2, False)]
    assert versions_run(fleet) == {2: len(DEVICES)}


def test_a_withdrawn_candidate_never_sends_devices_to_a_staged_version(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path / "repo")
    promote(fleet, 1)
    promote(fleet, 3)
    service(fleet).start(MODEL, 3, channel=CHANNEL, waves=(50, 100), soak_s=0)
    roll_back(fleet, 1)  # v3 withdrawn while its record still runs
    assert versions_run(fleet) == {1: len(DEVICES)}
    promote(fleet, 2)  # staged: v1 is approved below it; no rollout of v2 exists
    assert versions_run(fleet) == {1: len(DEVICES)}, "the wave of the withdrawn v3 went to the staged v2"


def test_after_a_group_rollout_only_a_rollout_of_the_same_group_may_start(tmp_path: Path) -> None:
    """Devices outside a completed group rollout still run its stable version: a rollout of another group (or of
    everyone) would take the completed version as stable and move them to it without a wave."""
    fleet = make_fleet(tmp_path / "repo")
    promote(fleet, 1)
    promote(fleet, 2)
    service(fleet).start(MODEL, 2, channel=CHANNEL, waves=(100,), soak_s=0, group={"hw": "pi4"})
    finish(fleet, "completed")
    promote(fleet, 3)
    for group in (None, {"hw": "x86"}):
        with pytest.raises(RolloutInputError, match=r"moved only the devices of group hw=pi4 to v2; the others run v1"):
            service(fleet).start(MODEL, 3, channel=CHANNEL, waves=(1, 100), soak_s=0, group=group)
    record = service(fleet).start(MODEL, 3, channel=CHANNEL, waves=(1, 100), soak_s=0, group={"hw": "pi4"})
    assert (record.stable_version, record.group) == (2, {"hw": "pi4"})


def test_the_second_approver_is_shown_whether_a_pending_approval_is_staged(tmp_path: Path) -> None:
    from otaml.cmd_trust import status_dict
    from registry.tuf import keys
    from registry.tuf.site import TrustSite, init

    site = init(tmp_path / "trust", tmp_path / "keys", approvers=3, threshold=2)
    first, second = (keys.load_signer(p) for p in site.approver_keys[:2])
    with TrustSite(site.site.path).locked() as repo:
        repo.propose(image(1), first)
        repo.approve_pending(second)
        repo.propose(image(2), first)  # not staged: `--all-at-once`, or one approver key misused
    pending = status_dict(str(site.site.path))["pending"]
    assert pending["staged"] is False


@pytest.mark.parametrize("retry", [0, 1], ids=["staged-only", "with-a-retry"])
def test_a_pending_change_cannot_unstage_an_approved_version(tmp_path: Path, retry: int) -> None:
    """One targets key writes a pending file that flips v2's ``staged`` (alone, or beside a genuine retry): the
    second approver's signature must not publish it, or every device would move to v2 at once."""
    fleet = make_fleet(tmp_path / "repo")
    promote(fleet, 1)
    promote(fleet, 2)
    assert versions_run(fleet) == {1: len(DEVICES)}
    unstaged = dataclasses.replace(image(2), retry=retry)
    forge_pending(fleet, fleet.repo.targets().signed, unstaged, next_version=True)
    with pytest.raises(ApprovalError, match="rewrites the approval of production/pump-anomaly/2"):
        fleet.repo.approve_pending(fleet.targets_keys[1])
    assert versions_run(fleet) == {1: len(DEVICES)}


def test_a_pending_rollback_unstages_only_the_version_it_goes_back_to(tmp_path: Path) -> None:
    """The second approver signs the whole file: a withdrawal may clear ``staged`` on the version it goes back to,
    and nothing else — not another version's flag, not the target's image."""
    from tuf.api.metadata import Metadata

    from registry.tuf.repository import PENDING

    fleet = make_fleet(tmp_path / "repo")
    for version in (1, 2, 3, 4):
        promote(fleet, version)
    assert fleet.repo.withdraw(CHANNEL, MODEL, above=3, signer=fleet.targets_keys[0]).state == "pending"
    honest = Metadata.from_bytes(fleet.store.read(PENDING))
    fleet.repo.discard_pending()
    for forge in (image(2), image(3, tag="another image")):  # v2 unstaged beside; v3 unstaged but rewritten
        forge_pending(fleet, honest.signed, forge)
        with pytest.raises(ApprovalError, match="expected one approval, one withdrawal or one retry"):
            fleet.repo.approve_pending(fleet.targets_keys[1])
        fleet.repo.discard_pending()
    roll_back(fleet, 3)
    assert [(a.version, a.staged) for a in fleet.repo.approvals()] == [(1, False), (2, True), (3, False)]
    assert versions_run(fleet) == {3: len(DEVICES)}
