"""A fleet repository for tests: 3 root keys (2 must sign), 3 targets keys (2 must sign), online keys (snapshot,
timestamp, the controller's rollouts key), a clock."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, TargetFile, Targets

from edge_runtime.trust.approval import Approval
from registry.tuf import keys
from registry.tuf.repository import PENDING, ApprovalStatus, FleetRepository, RoleKeys, create
from registry.tuf.store import DirectoryStore

BASE_DIGEST = "sha256:" + hashlib.sha256(b"otaml base runtime image").hexdigest()


class Clock:
    """The repository's notion of now; tests move it instead of waiting."""

    def __init__(self, at: datetime | None = None) -> None:
        self.at = at or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


@dataclass
class Fleet:
    store: DirectoryStore
    repo: FleetRepository
    root_keys: list[CryptoSigner]
    targets_keys: list[CryptoSigner]
    snapshot_key: CryptoSigner
    timestamp_key: CryptoSigner
    clock: Clock
    rollouts_key: CryptoSigner | None = None

    @property
    def path(self) -> Path:
        return self.store.path

    def approve(self, approval: Approval) -> ApprovalStatus:
        """Four eyes: the first two targets keys approve."""
        self.repo.propose(approval, self.targets_keys[0])
        return self.repo.approve_pending(self.targets_keys[1])


def make_fleet(path: Path, *, clock: Clock | None = None, kind: keys.KeyKind = "ecdsa", rollouts: bool = True) -> Fleet:
    clock = clock or Clock()
    root_keys = [keys.generate(kind) for _ in range(3)]
    targets_keys = [keys.generate(kind) for _ in range(3)]
    snapshot_key, timestamp_key = keys.generate(kind), keys.generate(kind)
    rollouts_key = keys.generate(kind) if rollouts else None
    store = DirectoryStore(path)
    repo = create(
        store,
        root=RoleKeys([k.public_key for k in root_keys], threshold=2),
        targets=RoleKeys([k.public_key for k in targets_keys], threshold=2),
        snapshot=RoleKeys([snapshot_key.public_key]),
        timestamp=RoleKeys([timestamp_key.public_key]),
        root_signers=root_keys[:2],
        targets_signers=targets_keys[:2],
        snapshot_signer=snapshot_key,
        timestamp_signer=timestamp_key,
        rollouts=RoleKeys([rollouts_key.public_key]) if rollouts_key else None,
        rollouts_signer=rollouts_key,
        now=clock,
    )
    return Fleet(store, repo, root_keys, targets_keys, snapshot_key, timestamp_key, clock, rollouts_key)


def image(
    version: int, *, channel: str = "production", model: str = "pump-anomaly", tag: str = "", staged: bool = False
) -> Approval:
    """An approval for a made-up image index (its digest depends on every argument but ``staged``)."""
    index = f'{{"index": "{channel}/{model}/{version}{tag}"}}'.encode()
    return Approval(
        channel=channel,
        model=model,
        version=version,
        digest="sha256:" + hashlib.sha256(index).hexdigest(),
        length=len(index),
        base_digest=BASE_DIGEST,
        staged=staged,
    )


def forge_pending(fleet: Fleet, base: Targets, *approvals: Approval, next_version: bool = False) -> None:
    """What one stolen targets key can do: write a pending file, ``base`` with ``approvals`` put in, signed by the
    first targets key (``next_version``: as the next targets version). The second approver's check must refuse
    anything but one approval, one withdrawal or one retry."""
    md = Metadata(copy.deepcopy(base))
    md.signed.version += 1 if next_version else 0
    for a in approvals:
        md.signed.targets[a.target_path] = TargetFile(
            length=a.length, hashes={"sha256": a.sha256}, path=a.target_path, unrecognized_fields={"custom": a.custom()}
        )
    md.sign(fleet.targets_keys[0])
    fleet.store.write(PENDING, md.to_bytes())
