"""The agent's trust policy on TUF: which image this device should run, and may it run this one.

Each poll refreshes the fleet's TUF metadata (:class:`edge_runtime.trust.client.TrustClient`) and decides::

    approvals for (channel, model) ─► rollout record? ─► the version for this device ─► its approved digest

- Without a rollout record the device runs the highest approved version that is not *staged* (an approval made
  while an earlier version runs, in a fleet that rolls out in waves: it waits for ``otaml rollout start``).
- With one, the device computes its own wave membership from the signed record
  (:meth:`edge_runtime.fleet.rollout.RolloutRecord.version_for`): neither the registry nor the broker can widen it.
- Versions go down only by a signed act: an approval withdrawn by the MLOps keys (``otaml rollback``), or a
  signed rollout record that sends the device back to its stable version.
- Anti-rollback beyond TUF's own: the highest targets version this device ever trusted is kept in the agent's
  state (``trust_floor``); metadata below it is refused even if the TUF metadata directory was wiped.

Every failure is a :class:`edge_runtime.trust.errors.TrustError` with a reason code; the device keeps serving.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from edge_runtime.agent.policy import CandidateImage
from edge_runtime.fleet.rollout import RolloutRecord, matches
from edge_runtime.trust.approval import Approval, ApprovalSet
from edge_runtime.trust.errors import NotApproved, RollbackRefused


class ApprovalSource(Protocol):
    """What the policy reads: :class:`~edge_runtime.trust.client.TrustClient` (a fake in unit tests)."""

    def refresh(self) -> ApprovalSet: ...


RolloutReader = Callable[[str, str], "RolloutRecord | None"]


@dataclass(frozen=True)
class Desired:
    """The image this device should run now, and why."""

    approval: Approval
    targets_version: int
    rollout_id: str = ""
    why: str = ""
    # The approved candidate of a running (or paused) rollout whose wave has not reached this device yet: what it
    # may pull ahead of time (``[update] prefetch``), never run before its wave.
    upcoming: Approval | None = None

    @property
    def digest(self) -> str:
        return self.approval.digest

    @property
    def version(self) -> int:
        return self.approval.version


@dataclass
class TrustPolicy:
    """Decides the desired image from verified metadata and approves exactly that image."""

    client: ApprovalSource
    channel: str
    model: str
    device_id: str
    groups: Mapping[str, str] = field(default_factory=dict)
    rollout: RolloutReader | None = None
    _last: ApprovalSet | None = field(default=None, init=False, repr=False)

    def desired(self, *, trust_floor: int = 0) -> Desired:
        """Refresh the metadata and return the image for this device; raises a :class:`TrustError`."""
        approvals = self.client.refresh()
        if approvals.targets_version < trust_floor:
            raise RollbackRefused(
                f"the trust metadata is at targets v{approvals.targets_version}, below v{trust_floor} which this "
                "device already trusted: refusing older approvals (was the metadata directory wiped and an old "
                "copy served?)"
            )
        self._last = approvals
        found = approvals.for_model(self.channel, self.model)
        if not found:
            raise NotApproved(
                f"no version of model {self.model!r} is approved for channel {self.channel!r} "
                f"(targets v{approvals.targets_version}); the device keeps what it runs"
            )
        record = self.rollout(self.channel, self.model) if self.rollout is not None else None
        if record is None:
            return self._highest_not_staged(found, approvals.targets_version)
        version = record.version_for(self.device_id, self.groups)
        if version == 0:  # a first rollout: no stable version, and this device is not in the wave yet
            raise NotApproved(
                f"rollout {record.rollout_id} of {self.model} v{record.version} has no stable version and this device "
                f"is not in its wave {record.wave + 1}/{len(record.waves)} yet; it keeps what it runs"
            )
        chosen = next((a for a in found if a.version == version), None)
        if chosen is None:
            # The record names a version no longer approved (withdrawn by `otaml rollback`, a signed act of the
            # approvers): the highest approved version below it that devices ran (not staged, or the record's
            # stable version), never anything above.
            below = [a for a in found if a.version < version and (not a.staged or a.version == record.stable_version)]
            if not below:
                raise NotApproved(
                    f"rollout {record.rollout_id} sends this device to v{version}, which is not approved for "
                    f"{self.channel}/{self.model}, and no lower version is: the device keeps what it runs"
                )
            chosen = below[-1]
            return Desired(
                chosen,
                approvals.targets_version,
                rollout_id=record.rollout_id,
                why=f"v{chosen.version}: rollout {record.rollout_id} names v{version}, withdrawn since",
            )
        where = "in" if version == record.version else "outside"
        upcoming = None
        if version != record.version and record.state in ("running", "paused") and matches(self.groups, record.group):
            # Outside the wave but in the rollout's group: its wave will come (a device of another group never runs it).
            upcoming = next((a for a in found if a.version == record.version), None)
        return Desired(
            chosen,
            approvals.targets_version,
            rollout_id=record.rollout_id,
            why=f"v{version}: rollout {record.rollout_id} {record.state}, {where} wave {record.wave + 1}",
            upcoming=upcoming,
        )

    def _highest_not_staged(self, found: list[Approval], targets_version: int) -> Desired:
        ready = [a for a in found if not a.staged]
        if not ready:
            staged = ", ".join(f"v{a.version}" for a in found)
            raise NotApproved(
                f"{self.channel}/{self.model} {staged} approved but staged, and no rollout has started: the device "
                "keeps what it runs until `otaml rollout start` puts it in a wave"
            )
        latest = ready[-1]
        why = f"v{latest.version}: the highest approved"
        if above := ", ".join(f"v{a.version}" for a in found if a.version > latest.version):
            why += f" ({above} staged: waiting for a rollout)"
        return Desired(latest, targets_version, why=why)

    def check(self, image: CandidateImage) -> None:
        """Approve ``image`` only if it is the approved digest of its labelled model and version on this channel."""
        approvals = self._last if self._last is not None else self.client.refresh()
        approval = approvals.find(image.digest, channel=self.channel, model=self.model)
        if image.model and image.model != approval.model:
            raise NotApproved(
                f"image {image.digest} is labelled model {image.model!r} but approved as {approval.model!r}"
            )
        if image.version and image.version != str(approval.version):
            raise NotApproved(
                f"image {image.digest} is labelled version {image.version} but approved as v{approval.version}"
            )
