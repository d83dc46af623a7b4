"""The fleet's TUF repository: create it, approve images, keep it fresh, rotate and revoke keys.

Layout in the store (consistent snapshots, so a device never mixes files of two publications):
``<N>.root.json`` (every root version, the device walks the chain) and ``root.json`` (the newest, to bootstrap
new devices), ``<N>.targets.json``, ``<N>.rollouts.json`` (the delegated ``rollouts`` role, when the repository
has one), ``<N>.snapshot.json``, ``timestamp.json``, and ``pending.targets.json`` (a targets version signed by
fewer keys than the threshold; devices never read it).

The ``rollouts`` role: top-level targets delegate the paths ``rollouts/*/*`` (and nothing else) to one key held by
the rollout controller, an online key, so waves advance and halt without the four-eyes approvers. Its targets are
the signed rollout records (:mod:`edge_runtime.fleet.rollout`); it cannot approve an image, because a device looks
images up under ``<channel>/<model>/<version>``, which the delegation does not cover.

Publishing writes targets, then snapshot, then the timestamp last: a reader sees the old publication or the new.
Every publication holds the store's lock (:meth:`MetadataStore.lock`), so two writers (a controller advancing a
wave, an approver, the timestamp timer) never interleave. One pending approval at a time: the targets version it
signs is the next one.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, ParamSpec, TypeVar

from securesystemslib.signer import Key, Signature, Signer
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from edge_runtime.errors import InputError
from edge_runtime.fleet.rollout import TARGET_PREFIX, RolloutRecord, canonical_json, target_path
from edge_runtime.trust.approval import Approval
from registry.tuf.errors import (
    ApprovalError,
    MetadataMissing,
    RolloutConflict,
    ThresholdNotMet,
    TrustRepositoryError,
)
from registry.tuf.store import MetadataStore

Role = Literal["root", "targets", "snapshot", "timestamp"]
ROLES: tuple[Role, ...] = ("root", "targets", "snapshot", "timestamp")
PENDING = "pending.targets.json"
TIMESTAMP = "timestamp.json"
_ROOT_FILE = re.compile(r"^([1-9][0-9]*)\.root\.json$")
ROLLOUTS = "rollouts"
# ngclient matches a delegated path component by component, so "rollouts/*" would not cover the records'
# "rollouts/<channel>/<model>": two wildcard components, and nothing deeper or elsewhere.
ROLLOUTS_PATHS = (f"{TARGET_PREFIX}/*/*",)
_UNSET: Any = object()
_P = ParamSpec("_P")
_R = TypeVar("_R")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Expiry:
    """How long each role's metadata stays valid after signing. The timestamp is short: a frozen repository
    (one that keeps serving old metadata) is noticed by devices within this time."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)
    rollouts: timedelta = timedelta(days=30)  # online key: the controller re-signs it well before


@dataclass(frozen=True)
class RoleKeys:
    """The public keys of one role and how many of them must sign."""

    keys: Sequence[Key]
    threshold: int = 1

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ThresholdNotMet(f"threshold {self.threshold} is below 1; a role needs at least one signature")
        if len({k.keyid for k in self.keys}) < self.threshold:
            raise ThresholdNotMet(
                f"threshold {self.threshold} is more than the {len(self.keys)} distinct keys given; "
                "add keys or lower the threshold"
            )


@dataclass(frozen=True)
class ApprovalStatus:
    """Where an approval stands: ``approved`` (published, devices see it) or ``pending`` (more keys must sign)."""

    approval: Approval
    state: Literal["approved", "pending"]
    signed_by: tuple[str, ...]
    threshold: int

    @property
    def missing(self) -> int:
        return max(0, self.threshold - len(self.signed_by))


def _encode(md: Metadata[Any]) -> bytes:
    return md.to_bytes()


def _meta(data: bytes, version: int) -> MetaFile:
    meta = MetaFile.from_data(version, data, ["sha256"])  # length and hash: mix-and-match is refused by hash
    return meta


def create(
    store: MetadataStore,
    *,
    root: RoleKeys,
    targets: RoleKeys,
    snapshot: RoleKeys,
    timestamp: RoleKeys,
    root_signers: Sequence[Signer],
    targets_signers: Sequence[Signer],
    snapshot_signer: Signer,
    timestamp_signer: Signer,
    rollouts: RoleKeys | None = None,
    rollouts_signer: Signer | None = None,
    expiry: Expiry = Expiry(),
    now: Callable[[], datetime] = utcnow,
) -> FleetRepository:
    """A new repository in ``store`` with no approved image: root v1 and an empty targets, snapshot and timestamp.

    Every role's first metadata is signed by a threshold of its keys here, so this is the key ceremony:
    the root and targets key holders must all be present (their private keys never touch the store).
    With ``rollouts`` (the controller's key) and ``rollouts_signer``, targets delegate the rollout records to it
    and an empty ``rollouts`` role is published (add it later with :meth:`FleetRepository.delegate_rollouts`).
    """
    if (rollouts is None) != (rollouts_signer is None):
        raise ApprovalError("the rollouts role needs both its keys (rollouts=RoleKeys) and its signer, or neither")
    if store.exists("1.root.json"):
        raise TrustRepositoryError(f"{store.describe()} already holds a repository (1.root.json); open it instead")
    at = now()
    root_md = Metadata(Root(expires=at + expiry.root, consistent_snapshot=True))
    for role, keys in (("root", root), ("targets", targets), ("snapshot", snapshot), ("timestamp", timestamp)):
        for key in keys.keys:
            root_md.signed.add_key(key, role)
        root_md.signed.roles[role].threshold = keys.threshold
    for signer in root_signers:
        root_md.sign(signer, append=True)
    _require(root_md.signed, "root", root_md, "root")
    targets_md = Metadata(Targets(expires=at + expiry.targets))
    if rollouts is not None:
        _set_rollouts_delegation(targets_md.signed, rollouts)
    for signer in targets_signers:
        targets_md.sign(signer, append=True)
    _require(root_md.signed, "targets", targets_md, "targets")
    repo = FleetRepository(
        store, snapshot_signer=snapshot_signer, timestamp_signer=timestamp_signer, expiry=expiry, now=now
    )
    _check_online(root_md.signed, "snapshot", snapshot_signer)
    _check_online(root_md.signed, "timestamp", timestamp_signer)
    roles = {"targets": targets_md}
    if rollouts_signer is not None:
        roles[ROLLOUTS] = _signed_rollouts(targets_md.signed, Targets(expires=at + expiry.rollouts), rollouts_signer)
    with store.lock():
        if store.exists("1.root.json"):
            raise TrustRepositoryError(f"{store.describe()} already holds a repository (1.root.json); open it instead")
        root_bytes = _encode(root_md)
        store.write("1.root.json", root_bytes)
        store.write("root.json", root_bytes)
        repo._publish_roles(roles, previous_snapshot=None)
    return repo


def _set_rollouts_delegation(targets: Targets, keys: RoleKeys) -> None:
    """Delegate ``rollouts/*/*`` (terminating: no other role is asked about those paths) to ``keys``."""
    role = DelegatedRole(
        name=ROLLOUTS,
        keyids=[k.keyid for k in keys.keys],
        threshold=keys.threshold,
        terminating=True,
        paths=list(ROLLOUTS_PATHS),
    )
    if targets.delegations is None or targets.delegations.roles is None:
        targets.delegations = Delegations(keys={}, roles={})
    delegations = targets.delegations
    if delegations.roles is None:  # for mypy: set just above
        raise TrustRepositoryError("targets delegate by hash bins; otaml repositories use named roles")
    old = delegations.roles.get(ROLLOUTS)
    if old is not None:
        still_used = {k for name, r in delegations.roles.items() if name != ROLLOUTS for k in r.keyids}
        for keyid in set(old.keyids) - still_used:
            delegations.keys.pop(keyid, None)
    for key in keys.keys:
        delegations.keys[key.keyid] = key
    delegations.roles[ROLLOUTS] = role


def _signed_rollouts(targets: Targets, rollouts: Targets, signer: Signer) -> Metadata[Targets]:
    """``rollouts`` signed by ``signer``, checked against the delegation in ``targets`` (nothing else may sign)."""
    delegation = targets.delegations.roles.get(ROLLOUTS) if targets.delegations and targets.delegations.roles else None
    if delegation is None:
        raise MetadataMissing(
            f"targets v{targets.version} delegate no rollouts role; add it with FleetRepository.delegate_rollouts "
            "(a threshold of the targets keys signs the delegation)"
        )
    if signer.public_key.keyid not in delegation.keyids:
        raise ApprovalError(
            f"key {signer.public_key.keyid} is not the rollouts key of targets v{targets.version} "
            f"(rollouts keys: {sorted(delegation.keyids)}); use the controller's rollouts key"
        )
    md = Metadata(rollouts)
    md.sign(signer)
    if not targets.get_verification_result(ROLLOUTS, md.signed_bytes, md.signatures).verified:
        raise ThresholdNotMet(
            f"rollouts v{rollouts.version} is signed by 1 key; the delegation needs {delegation.threshold}"
        )
    return md


def _record_target(record: RolloutRecord) -> TargetFile:
    doc = record.to_dict()
    data = canonical_json(doc)
    return TargetFile(
        length=len(data),
        hashes={"sha256": hashlib.sha256(data).hexdigest()},
        path=record.target_path,
        unrecognized_fields={"custom": doc},
    )


class _NoKey(Signer):
    """Stands in for an online key in a read-only handle (:meth:`FleetRepository.read_only`)."""

    def __init__(self, role: str) -> None:
        self._role = role

    def _refuse(self) -> TrustRepositoryError:
        return TrustRepositoryError(
            f"this repository handle is read-only: it holds no {self._role} key. Open it with the online keys "
            "(snapshot, timestamp) to publish"
        )

    def sign(self, payload: bytes) -> Signature:
        raise self._refuse()

    @property
    def public_key(self) -> Key:
        raise self._refuse()

    @classmethod
    def from_priv_key_uri(
        cls, priv_key_uri: str, public_key: Key, secrets_handler: Callable[[str], str] | None = None
    ) -> Signer:
        raise TrustRepositoryError("a read-only handle loads no keys")


def _locked(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run a publishing method under the store's lock (re-entrant within one repository object)."""

    @functools.wraps(method)
    def locked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        self = args[0]
        if not isinstance(self, FleetRepository):
            raise TypeError("_locked decorates FleetRepository methods")
        with self._exclusive():
            return method(*args, **kwargs)

    return locked


def _require(root: Root, role: str, md: Metadata[Any], what: str) -> tuple[str, ...]:
    result = root.get_verification_result(role, md.signed_bytes, md.signatures)
    if not result.verified:
        raise ThresholdNotMet(
            f"{what} is signed by {len(result.signed)} of the {result.threshold} {role} keys it needs; "
            f"sign with more of the role's keys (key ids {sorted(root.roles[role].keyids)})"
        )
    return tuple(sorted(result.signed))


def _check_online(root: Root, role: str, signer: Signer) -> None:
    if signer.public_key.keyid not in root.roles[role].keyids:
        raise ApprovalError(
            f"the {role} signer's key {signer.public_key.keyid} is not a {role} key of root v{root.version}"
        )


class FleetRepository:
    """One fleet's TUF repository in a :class:`MetadataStore`; holds only the online (snapshot, timestamp) signers.

    Offline keys (root, targets) are passed to the call that needs them and never kept.
    """

    def __init__(
        self,
        store: MetadataStore,
        *,
        snapshot_signer: Signer,
        timestamp_signer: Signer,
        expiry: Expiry = Expiry(),
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self._snapshot_signer = snapshot_signer
        self._timestamp_signer = timestamp_signer
        self.expiry = expiry
        self._now = now
        self._thread_lock = threading.RLock()
        self._lock_depth = 0

    @classmethod
    def read_only(cls, store: MetadataStore, *, now: Callable[[], datetime] = utcnow) -> FleetRepository:
        """A handle that reads (approvals, rollout records) without any key; every write it tries is refused."""
        return cls(store, snapshot_signer=_NoKey("snapshot"), timestamp_signer=_NoKey("timestamp"), now=now)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        # The RLock keeps this object's threads out of each other's way (and makes the depth count safe);
        # the store's lock keeps other objects and processes out. Nested calls take the store's lock once.
        with self._thread_lock:
            if self._lock_depth:
                self._lock_depth += 1
                try:
                    yield
                finally:
                    self._lock_depth -= 1
                return
            with self.store.lock():
                self._lock_depth = 1
                try:
                    yield
                finally:
                    self._lock_depth = 0

    # --- reading -------------------------------------------------------------------------------------------
    def root(self) -> Metadata[Root]:
        """The newest root."""
        versions = [int(m.group(1)) for n in self.store.names() if (m := _ROOT_FILE.match(n))]
        if not versions:
            raise MetadataMissing(f"{self.store.describe()} has no root metadata; create the repository first")
        return self._load(f"{max(versions)}.root.json", Root)

    def timestamp(self) -> Metadata[Timestamp]:
        return self._load(TIMESTAMP, Timestamp)

    def snapshot(self) -> Metadata[Snapshot]:
        return self._load(f"{self.timestamp().signed.snapshot_meta.version}.snapshot.json", Snapshot)

    def targets(self) -> Metadata[Targets]:
        return self._load(f"{self.snapshot().signed.meta['targets.json'].version}.targets.json", Targets)

    def approvals(self) -> list[Approval]:
        """Every published approval, ordered by channel, model and version."""
        found = [
            Approval.from_target(path, t.length, t.hashes, t.custom)
            for path, t in self.targets().signed.targets.items()
        ]
        return sorted(found, key=lambda a: (a.channel, a.model, a.version))

    def rollouts(self) -> Metadata[Targets] | None:
        """The published ``rollouts`` role, or None when the repository has none."""
        meta = self.snapshot().signed.meta.get(f"{ROLLOUTS}.json")
        if meta is None:
            return None
        return self._load(f"{meta.version}.{ROLLOUTS}.json", Targets)

    def rollout_records(self) -> list[RolloutRecord]:
        """Every published rollout record, ordered by channel and model."""
        md = self.rollouts()
        if md is None:
            return []
        records = [self._record(path, t) for path, t in md.signed.targets.items()]
        return sorted(records, key=lambda r: (r.channel, r.model))

    def rollout_record(self, channel: str, model: str) -> RolloutRecord | None:
        """The published record of ``model`` on ``channel``, or None."""
        md = self.rollouts()
        path = _rollout_path(channel, model)
        if md is None or path not in md.signed.targets:
            return None
        return self._record(path, md.signed.targets[path])

    def _record(self, path: str, target: TargetFile) -> RolloutRecord:
        try:
            return RolloutRecord.from_target(path, target.length, target.hashes, target.custom)
        except InputError as exc:
            raise TrustRepositoryError(f"{self.store.describe()}: rollout target {path!r} is no record: {exc}") from exc

    def pending(self) -> ApprovalStatus | None:
        """The approval waiting for more signatures, if any."""
        if not self.store.exists(PENDING):
            return None
        md = self._load(PENDING, Targets)
        return self._status(md, "pending")

    def _load(self, name: str, kind: type[Signed]) -> Metadata[Any]:
        data = self.store.read(name)
        try:
            md = Metadata.from_bytes(data)
        except RepositoryError as exc:
            raise TrustRepositoryError(f"{self.store.describe()}/{name} is not TUF metadata: {exc}") from exc
        if not isinstance(md.signed, kind):
            raise TrustRepositoryError(f"{self.store.describe()}/{name} holds {md.signed.type}, not {kind.type}")
        return md

    # --- approving images ----------------------------------------------------------------------------------
    @_locked
    def propose(self, approval: Approval, signer: Signer) -> ApprovalStatus:
        """Approve ``approval`` with one targets key: published at once if that meets the threshold, else pending.

        A version already approved with the same digest is reported approved again; with another digest it is
        refused (approved versions are immutable).
        """
        current = self.targets()
        existing = current.signed.targets.get(approval.target_path)
        if existing is not None:
            published = Approval.from_target(existing.path, existing.length, existing.hashes, existing.custom)
            if not published.same_image(approval):
                raise ApprovalError(
                    f"{approval.target_path} is already approved as {published.digest} (base {published.base_digest}); "
                    f"approved versions are immutable, so {approval.digest} needs a new model version"
                )
            return self._status(current, "approved", published)
        if (pending := self.pending()) is not None:
            raise ApprovalError(
                f"{pending.approval.target_path} ({pending.approval.digest}) is waiting for {pending.missing} more "
                "signature(s); complete it with approve_pending or remove it with discard_pending first"
            )
        self._check_approver(signer)
        md = Metadata(copy.deepcopy(current.signed))
        md.signed.version += 1
        md.signed.expires = self._now() + self.expiry.targets
        md.signed.targets[approval.target_path] = _target_file(approval)
        md.sign(signer)
        return self._settle(md, approval)

    def stages(self, channel: str, model: str, version: int) -> bool:
        """Whether a new approval of ``model`` ``version`` on ``channel`` should be *staged* (wait for a rollout):
        this repository signs rollout records, and devices already run a lower approved version, which a rollout
        moves from in waves. A model's first version is never staged: there is nothing to roll back to."""
        if self.rollouts() is None:
            return False
        return any((a.channel, a.model) == (channel, model) and a.version < version for a in self.approvals())

    @_locked
    def approve_pending(self, signer: Signer) -> ApprovalStatus:
        """Add ``signer``'s signature to the pending approval; publish it once the threshold is met."""
        if not self.store.exists(PENDING):
            raise ApprovalError(f"{self.store.describe()} has no pending approval; propose one first")
        md: Metadata[Targets] = self._load(PENDING, Targets)
        current = self.targets().signed.version
        if md.signed.version != current + 1:
            raise ApprovalError(
                f"the pending approval signs targets v{md.signed.version} but v{current} is published since; "
                "discard it (discard_pending) and propose again"
            )
        self._check_approver(signer)
        if signer.public_key.keyid in md.signatures:
            raise ApprovalError(
                f"key {signer.public_key.keyid} already signed this approval; a second, different approver must sign"
            )
        md.sign(signer, append=True)
        added = _added_target(self.targets().signed, md.signed)
        return self._settle(md, added)

    @_locked
    def withdraw(self, channel: str, model: str, *, above: int, signer: Signer) -> ApprovalStatus:
        """Withdraw every approval of ``model`` on ``channel`` above version ``above`` (a signed rollback).

        Devices then run the highest version still approved (``above`` itself, which must be approved). A staged
        ``above`` is approved again, not staged, in the same publication: the approvers send devices to it, whether
        a rollout ever did or not. Like :meth:`propose`, published at once when one key meets the threshold, else
        pending.
        """
        current = self.targets()
        kept = [a for a in self.approvals() if (a.channel, a.model) == (channel, model) and a.version <= above]
        if not kept or kept[-1].version != above:
            raise ApprovalError(
                f"{channel}/{model}/{above} is not approved, so devices could not roll back to it; approve it first"
            )
        doomed = [
            a.target_path for a in self.approvals() if (a.channel, a.model) == (channel, model) and a.version > above
        ]
        if not doomed:
            return self._status(current, "approved", kept[-1])
        if (pending := self.pending()) is not None:
            raise ApprovalError(
                f"{pending.approval.target_path} is waiting for {pending.missing} more signature(s); complete it "
                "with approve_pending or remove it with discard_pending first"
            )
        self._check_approver(signer)
        md = Metadata(copy.deepcopy(current.signed))
        md.signed.version += 1
        md.signed.expires = self._now() + self.expiry.targets
        for path in doomed:
            del md.signed.targets[path]
        back_to = dataclasses.replace(kept[-1], staged=False)
        md.signed.targets[back_to.target_path] = _target_file(back_to)
        md.sign(signer)
        return self._settle(md, back_to)

    def retry(self, channel: str, model: str, version: int, *, signer: Signer) -> ApprovalStatus:
        """Re-issue the approval of ``channel/model/version`` with ``retry`` raised by one: a signed act that
        lifts the block devices put on its digest (after a failed canary or probation), so they try it once
        more. Like :meth:`propose`, published at once when one key meets the threshold, else pending."""
        current = self.targets()
        path = f"{channel}/{model}/{version}"
        existing = current.signed.targets.get(path)
        if existing is None:
            raise ApprovalError(f"{path} is not approved: nothing to retry; approve it first")
        if (pending := self.pending()) is not None:
            raise ApprovalError(
                f"{pending.approval.target_path} is waiting for {pending.missing} more signature(s); complete it "
                "with approve_pending or remove it with discard_pending first"
            )
        self._check_approver(signer)
        published = Approval.from_target(existing.path, existing.length, existing.hashes, existing.custom)
        again = dataclasses.replace(published, retry=published.retry + 1)
        md = Metadata(copy.deepcopy(current.signed))
        md.signed.version += 1
        md.signed.expires = self._now() + self.expiry.targets
        md.signed.targets[path] = _target_file(again)
        md.sign(signer)
        return self._settle(md, again)

    def discard_pending(self) -> None:
        with self._exclusive():
            self.store.delete(PENDING)

    # --- rollouts ------------------------------------------------------------------------------------------
    @_locked
    def delegate_rollouts(self, keys: RoleKeys, *, targets_signers: Sequence[Signer], rollouts_signer: Signer) -> int:
        """Add the ``rollouts`` role to this repository, or give it new keys (rotation, revocation).

        A threshold of the targets keys signs the new delegation; the current records (if any) are re-signed
        with ``rollouts_signer``, one of the new keys. Refused while an approval is pending (it signs the targets
        version this takes: complete or discard it first). Returns the new targets version.
        """
        if self.store.exists(PENDING):
            raise ApprovalError(
                "an approval is pending and signs the next targets version; complete it (approve_pending) or "
                "discard it (discard_pending) before changing the rollouts delegation"
            )
        md = Metadata(copy.deepcopy(self.targets().signed))
        md.signed.version += 1
        md.signed.expires = self._now() + self.expiry.targets
        _set_rollouts_delegation(md.signed, keys)
        for signer in targets_signers:
            md.sign(signer, append=True)
        _require(self.root().signed, "targets", md, f"targets v{md.signed.version} (the rollouts delegation)")
        current = self.rollouts()
        rollouts = copy.deepcopy(current.signed) if current is not None else Targets()
        rollouts.version = current.signed.version + 1 if current is not None else 1
        rollouts.expires = self._now() + self.expiry.rollouts
        signed = _signed_rollouts(md.signed, rollouts, rollouts_signer)
        self._publish_roles({"targets": md, ROLLOUTS: signed}, previous_snapshot=self.snapshot())
        return md.signed.version

    @_locked
    def publish_rollout(self, record: RolloutRecord, signer: Signer, *, expected: RolloutRecord | None = _UNSET) -> int:
        """Sign ``record`` as ``rollouts/<channel>/<model>`` with the rollouts key; re-sign snapshot and timestamp.

        ``expected`` makes it a compare-and-swap: the record published now must equal it (None: there must be
        none), else :class:`RolloutConflict` and nothing is written, so two controllers that read the same
        record cannot both act on it. Returns the new ``rollouts`` version.
        """
        current = self.rollouts()
        if current is None:
            raise MetadataMissing(
                f"{self.store.describe()} has no rollouts role; add it with delegate_rollouts (targets keys sign it)"
            )
        if expected is not _UNSET:
            published = self.rollout_record(record.channel, record.model)
            if published != expected:
                raise RolloutConflict(
                    f"{record.target_path} changed since it was read (now "
                    f"{_describe(published)}, expected {_describe(expected)}); nothing was published. "
                    "Read it again and decide anew"
                )
        rollouts = copy.deepcopy(current.signed)
        rollouts.version += 1
        rollouts.expires = self._now() + self.expiry.rollouts
        rollouts.targets[record.target_path] = _record_target(record)
        signed = _signed_rollouts(self.targets().signed, rollouts, signer)
        self._publish_roles({ROLLOUTS: signed}, previous_snapshot=self.snapshot())
        return rollouts.version

    @_locked
    def renew_rollouts(self, signer: Signer) -> datetime:
        """Re-sign the rollout records unchanged with a new expiry (the controller does it while it runs)."""
        current = self.rollouts()
        if current is None:
            raise MetadataMissing(f"{self.store.describe()} has no rollouts role; add it with delegate_rollouts")
        rollouts = copy.deepcopy(current.signed)
        rollouts.version += 1
        rollouts.expires = self._now() + self.expiry.rollouts
        self._publish_roles(
            {ROLLOUTS: _signed_rollouts(self.targets().signed, rollouts, signer)}, previous_snapshot=self.snapshot()
        )
        return rollouts.expires

    def _check_approver(self, signer: Signer) -> None:
        root = self.root().signed
        if signer.public_key.keyid not in root.roles["targets"].keyids:
            raise ApprovalError(
                f"key {signer.public_key.keyid} is not a targets key of root v{root.version}; "
                f"approvers are {sorted(root.roles['targets'].keyids)}"
            )

    def _settle(self, md: Metadata[Targets], approval: Approval) -> ApprovalStatus:
        root = self.root().signed
        if root.get_verification_result("targets", md.signed_bytes, md.signatures).verified:
            self._publish(md, previous_snapshot=self.snapshot())
            self.store.delete(PENDING)
            return self._status(md, "approved", approval)
        self.store.write(PENDING, _encode(md))
        return self._status(md, "pending", approval)

    def _status(
        self, md: Metadata[Targets], state: Literal["approved", "pending"], approval: Approval | None = None
    ) -> ApprovalStatus:
        root = self.root().signed
        result = root.get_verification_result("targets", md.signed_bytes, md.signatures)
        if approval is None:
            approval = _added_target(self.targets().signed, md.signed) if state == "pending" else _last(md.signed)
        return ApprovalStatus(approval, state, tuple(sorted(result.signed)), result.threshold)

    # --- publishing and freshness --------------------------------------------------------------------------
    def _publish(self, targets_md: Metadata[Targets], previous_snapshot: Metadata[Snapshot] | None) -> None:
        self._publish_roles({"targets": targets_md}, previous_snapshot)

    def _publish_roles(self, roles: dict[str, Metadata[Targets]], previous_snapshot: Metadata[Snapshot] | None) -> None:
        """Write new versions of ``roles`` (targets and/or delegated roles), then a snapshot listing them beside
        the unchanged roles of ``previous_snapshot``, then the timestamp."""
        at = self._now()
        meta = dict(previous_snapshot.signed.meta) if previous_snapshot else {}
        for name, md in roles.items():
            data = _encode(md)
            self.store.write(f"{md.signed.version}.{name}.json", data)
            meta[f"{name}.json"] = _meta(data, md.signed.version)
        version = previous_snapshot.signed.version + 1 if previous_snapshot else 1
        snapshot_md = Metadata(Snapshot(version=version, expires=at + self.expiry.snapshot, meta=meta))
        self._write_snapshot(snapshot_md)

    def _write_snapshot(self, snapshot_md: Metadata[Snapshot]) -> None:
        snapshot_md.sign(self._snapshot_signer)
        data = _encode(snapshot_md)
        self.store.write(f"{snapshot_md.signed.version}.snapshot.json", data)
        self._write_timestamp(_meta(data, snapshot_md.signed.version))

    def _write_timestamp(self, snapshot_meta: MetaFile) -> None:
        version = self.timestamp().signed.version + 1 if self.store.exists(TIMESTAMP) else 1
        md = Metadata(
            Timestamp(version=version, expires=self._now() + self.expiry.timestamp, snapshot_meta=snapshot_meta)
        )
        md.sign(self._timestamp_signer)
        self.store.write(TIMESTAMP, _encode(md))

    @_locked
    def refresh(self) -> datetime:
        """Re-sign the timestamp (and the snapshot when it would expire before the next run); return the new expiry.

        Call it periodically (a systemd timer) well within ``expiry.timestamp``: devices refuse expired metadata
        and report ``stale-metadata`` until it is fresh again.
        """
        snapshot = self.snapshot()
        at = self._now()
        if snapshot.signed.expires <= at + self.expiry.timestamp:
            fresh = Metadata(copy.deepcopy(snapshot.signed))
            fresh.signed.version += 1
            fresh.signed.expires = at + self.expiry.snapshot
            self._write_snapshot(fresh)
        else:
            self._write_timestamp(copy.deepcopy(self.timestamp().signed.snapshot_meta))
        return self.timestamp().signed.expires

    @_locked
    def renew_targets(self, signers: Sequence[Signer]) -> datetime:
        """Re-sign the current approvals unchanged with a new expiry (a threshold of targets keys must sign).

        Targets expire after ``expiry.targets``; renew them before that, or devices refuse every update
        (``stale-metadata``). Returns the new expiry.
        """
        md = self._next_targets(signers)
        _require(self.root().signed, "targets", md, f"targets v{md.signed.version}")
        self.discard_pending()  # it signed the version this takes
        self._publish(md, previous_snapshot=self.snapshot())
        return md.signed.expires

    def _next_targets(self, signers: Sequence[Signer]) -> Metadata[Targets]:
        md = Metadata(copy.deepcopy(self.targets().signed))
        md.signed.version += 1
        md.signed.expires = self._now() + self.expiry.targets
        for signer in signers:
            md.sign(signer, append=True)
        return md

    # --- keys ----------------------------------------------------------------------------------------------
    @_locked
    def rotate(
        self,
        role: Role,
        *,
        add: Iterable[Key] = (),
        remove: Iterable[str] = (),
        threshold: int | None = None,
        root_signers: Sequence[Signer],
        role_signers: Sequence[Signer] = (),
    ) -> int:
        """Change a role's keys (add new ones, revoke ``remove`` key ids) or threshold in a new root version.

        The new root must be signed by a threshold of the old root keys *and* of the new ones (``root_signers``
        may hold both), so a device walks the chain without trusting anything new on its own. For ``targets``,
        ``role_signers`` (a threshold of the new targets keys) re-sign the current approvals; for ``snapshot`` or
        ``timestamp`` the first of ``role_signers`` becomes this repository's online signer. Nothing is written
        unless every signature needed is there. Returns the new root version.
        """
        if role not in ROLES:
            raise TrustRepositoryError(f"role {role!r} is not one of {', '.join(ROLES)}")
        old = self.root()
        new = Metadata(copy.deepcopy(old.signed))
        new.signed.version += 1
        new.signed.expires = self._now() + self.expiry.root
        for keyid in remove:
            if keyid not in new.signed.roles[role].keyids:
                raise TrustRepositoryError(f"key {keyid} is not a {role} key of root v{old.signed.version}")
            new.signed.revoke_key(keyid, role)
        for key in add:
            new.signed.add_key(key, role)
        if threshold is not None:
            new.signed.roles[role].threshold = threshold
        RoleKeys([new.signed.keys[k] for k in new.signed.roles[role].keyids], new.signed.roles[role].threshold)
        for signer in root_signers:
            new.sign(signer, append=True)
        _require(old.signed, "root", new, f"root v{new.signed.version} (by the keys of v{old.signed.version})")
        _require(new.signed, "root", new, f"root v{new.signed.version} (by its own keys)")
        resigned: Metadata[Targets] | None = None
        if role == "targets":
            resigned = self._next_targets(role_signers)
            _require(new.signed, "targets", resigned, f"targets v{resigned.signed.version} under the new keys")
        elif role in ("snapshot", "timestamp"):
            if not role_signers:
                raise ApprovalError(f"rotating {role} needs its new online signer in role_signers")
            _check_online(new.signed, role, role_signers[0])
        data = _encode(new)
        self.store.write(f"{new.signed.version}.root.json", data)
        self.store.write("root.json", data)
        if role == "snapshot":
            self._snapshot_signer = role_signers[0]
        if role == "timestamp":
            self._timestamp_signer = role_signers[0]
        if resigned is not None:
            self.discard_pending()  # it signed a targets version that is now taken
            self._publish(resigned, previous_snapshot=self.snapshot())
        elif role in ("snapshot", "timestamp"):
            fresh = Metadata(copy.deepcopy(self.snapshot().signed))
            fresh.signed.version += 1
            fresh.signed.expires = self._now() + self.expiry.snapshot
            self._write_snapshot(fresh)
        return new.signed.version

    def revoke(
        self, role: Role, keyid: str, *, root_signers: Sequence[Signer], role_signers: Sequence[Signer] = ()
    ) -> int:
        """Remove a (lost or leaked) key from ``role``: :meth:`rotate` with only a removal."""
        return self.rotate(role, remove=[keyid], root_signers=root_signers, role_signers=role_signers)


def _added_target(published: Targets, proposed: Targets) -> Approval:
    """The approval a pending change is about — and a check that it is *only* that change, since the second
    approver signs the whole file: one target added; or (a withdrawal) versions of one model removed, naming the
    highest version left (approved again without its ``staged`` flag, if it had one); or (a retry) one target
    whose ``retry`` alone went up. Anything else in the file (another target changed, delegations, expiry beyond
    the usual) is refused, so one stolen key cannot slip a second change past the approver who is shown the first."""
    new = [t for path, t in proposed.targets.items() if path not in published.targets]
    gone = [path for path in published.targets if path not in proposed.targets]
    changed = [t for path, t in proposed.targets.items() if path in published.targets and t != published.targets[path]]
    if proposed.delegations != published.delegations or proposed.unrecognized_fields != published.unrecognized_fields:
        raise ApprovalError("the pending change also changes the delegations or other fields of targets: discard it")
    if len(changed) == 1 and not new and not gone:  # a retry: same image, retry raised by one
        t = changed[0]
        before, after = published.targets[t.path], t
        old = Approval.from_target(before.path, before.length, before.hashes, before.custom)
        again = Approval.from_target(after.path, after.length, after.hashes, after.custom)
        if dataclasses.replace(old, retry=again.retry) != again or again.retry != old.retry + 1:
            raise ApprovalError(f"the pending change rewrites the approval of {t.path}, not only its retry: discard it")
        return again
    if len(new) == 1 and not gone and not changed:
        t = new[0]
        return Approval.from_target(t.path, t.length, t.hashes, t.custom)
    if gone and not new and len(changed) <= 1:
        prefix = gone[0].rsplit("/", 1)[0] + "/"
        if all(path.startswith(prefix) for path in gone):
            left = [
                Approval.from_target(t.path, t.length, t.hashes, t.custom)
                for path, t in proposed.targets.items()
                if path.startswith(prefix)
            ]
            back_to = max(left, key=lambda a: a.version) if left else None
            if back_to is not None and (not changed or _unstaged(published, changed[0], back_to)):
                return back_to
    raise ApprovalError(
        f"the pending change adds {len(new)}, removes {len(gone)} and changes {len(changed)} targets; expected one "
        "approval, one withdrawal or one retry: discard it"
    )


def _unstaged(published: Targets, changed: TargetFile, back_to: Approval) -> bool:
    """Whether ``changed`` is the withdrawal's ``back_to`` approved again with only its ``staged`` flag cleared."""
    if changed.path != back_to.target_path or back_to.staged:
        return False
    before = published.targets[changed.path]
    old = Approval.from_target(before.path, before.length, before.hashes, before.custom)
    return old.staged and dataclasses.replace(old, staged=False) == back_to


def _target_file(approval: Approval) -> TargetFile:
    return TargetFile(
        length=approval.length,
        hashes={"sha256": approval.sha256},
        path=approval.target_path,
        unrecognized_fields={"custom": approval.custom()},
    )


def _last(targets: Targets) -> Approval:
    if not targets.targets:
        raise MetadataMissing("targets metadata has no approved image yet")
    t = list(targets.targets.values())[-1]
    return Approval.from_target(t.path, t.length, t.hashes, t.custom)


def _rollout_path(channel: str, model: str) -> str:
    try:
        return target_path(channel, model)
    except InputError as exc:
        raise TrustRepositoryError(f"no rollout record can exist there: {exc}") from exc


def _describe(record: RolloutRecord | None) -> str:
    if record is None:
        return "no record"
    return f"{record.rollout_id} v{record.version} {record.state} wave {record.wave + 1}/{len(record.waves)}"
