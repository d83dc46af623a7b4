"""A fleet's trust site on disk: the published metadata and the online keys, in one directory.

    <dir>/metadata/    what devices read (serve it with any static HTTP server; ``[trust] metadata_url``)
    <dir>/online/      the online signers (snapshot, timestamp, and rollouts: the rollout controller's key),
                       mode 0700, files 0600: the machine that re-signs the timestamp (``otaml trust refresh`` on a
                       timer) and runs the rollout controller (``otaml rollout step``) needs them

Offline keys (root, and the MLOps approvers' targets keys) are written once by :func:`init` into a directory
the caller names, to be handed to their holders; they are never read from the site.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from securesystemslib.signer import Signer

from registry.tuf import keys
from registry.tuf.errors import KeyFileError, TrustRepositoryError
from registry.tuf.repository import Expiry, FleetRepository, RoleKeys, create
from registry.tuf.store import DirectoryStore

ONLINE_ROLES = ("snapshot", "timestamp")
ROLLOUTS_KEY = "rollouts"  # the delegated role that signs rollout records (registry.tuf.repository.ROLLOUTS)
DEFAULT_EXPIRY = Expiry()


@dataclass(frozen=True)
class InitResult:
    """What :func:`init` wrote: the site, the root file devices are provisioned with, and the offline keys."""

    site: TrustSite
    trusted_root: Path
    root_keys: tuple[Path, ...]
    approver_keys: tuple[Path, ...]
    approver_threshold: int


class TrustSite:
    """The trust site at ``path`` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], *, expiry: Expiry = DEFAULT_EXPIRY) -> None:
        self.path = Path(path)
        self.expiry = expiry

    @property
    def metadata_dir(self) -> Path:
        return self.path / "metadata"

    @property
    def online_dir(self) -> Path:
        return self.path / "online"

    @property
    def trusted_root(self) -> Path:
        """``1.root.json``: the file a device is provisioned with (its trust anchor)."""
        return self.metadata_dir / "1.root.json"

    def exists(self) -> bool:
        return self.trusted_root.is_file()

    def open(self) -> FleetRepository:
        """The repository with its online signers; :class:`TrustRepositoryError` naming what is missing."""
        if not self.exists():
            raise TrustRepositoryError(
                f"{self.path} is not a trust site (no metadata/1.root.json); create one with `otaml trust init --dir "
                f"{self.path} --keys-out DIR`"
            )
        signers = {role: keys.load_signer(self.online_dir / f"{role}{keys.PRIVATE_SUFFIX}") for role in ONLINE_ROLES}
        return FleetRepository(
            DirectoryStore(self.metadata_dir),
            snapshot_signer=signers["snapshot"],
            timestamp_signer=signers["timestamp"],
            expiry=self.expiry,
        )

    def rollouts_signer(self) -> Signer:
        """The rollout controller's key (``online/rollouts.key``); :class:`KeyFileError` if the site has none."""
        path = self.online_dir / f"{ROLLOUTS_KEY}{keys.PRIVATE_SUFFIX}"
        if not path.exists():
            raise KeyFileError(
                f"{path} does not exist: this trust site has no rollouts key yet. Add the rollouts role with "
                f"`otaml rollout enable --dir {self.path} --key APPROVER.key --key APPROVER.key`"
            )
        return keys.load_signer(path)

    def enable_rollouts(self, approvers: list[Signer]) -> int:
        """Add the ``rollouts`` role to an existing site: a new online key (``online/rollouts.key``, reused if a
        previous attempt wrote it) delegated ``rollouts/*/*`` by a threshold of ``approvers``. Returns the new
        targets version."""
        path = self.online_dir / f"{ROLLOUTS_KEY}{keys.PRIVATE_SUFFIX}"
        signer = keys.load_signer(path) if path.exists() else None
        if signer is None:
            signer = keys.generate()
            self.online_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            keys.write(signer, self.online_dir, ROLLOUTS_KEY)
        with self.locked() as repo:
            return repo.delegate_rollouts(
                RoleKeys([signer.public_key]), targets_signers=approvers, rollouts_signer=signer
            )

    @contextmanager
    def locked(self) -> Iterator[FleetRepository]:
        """The repository under an exclusive lock: two writers (promotions, refreshes) never interleave."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield self.open()
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def init(
    path: str | os.PathLike[str],
    keys_out: str | os.PathLike[str],
    *,
    approvers: int = 3,
    threshold: int = 2,
    root_keys: int = 1,
    root_threshold: int = 1,
    expiry: Expiry = DEFAULT_EXPIRY,
) -> InitResult:
    """Create a trust site: every key, root v1 and empty approvals (the key ceremony, in one place).

    ``approvers`` targets keys of which ``threshold`` must sign an approval (2 of 3: four eyes);
    ``root_keys`` / ``root_threshold`` for root. Offline keys go to ``keys_out`` as ``root-<i>.key`` and
    ``approver-<i>.key`` (0600, with ``.pub.json`` beside them); refuses to overwrite anything.
    """
    site = TrustSite(path, expiry=expiry)
    if site.exists():
        raise TrustRepositoryError(f"{site.path} already holds a trust site; open it instead of creating one")
    if Path(keys_out).resolve() == site.path.resolve() or site.path.resolve() in Path(keys_out).resolve().parents:
        raise KeyFileError(
            f"--keys-out {keys_out} is inside the trust site {site.path}: offline keys must live elsewhere"
        )
    root_signers = [keys.generate() for _ in range(root_keys)]
    approver_signers = [keys.generate() for _ in range(approvers)]
    online = {role: keys.generate() for role in (*ONLINE_ROLES, ROLLOUTS_KEY)}
    root = RoleKeys([s.public_key for s in root_signers], root_threshold)
    targets = RoleKeys([s.public_key for s in approver_signers], threshold)
    site.online_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(site.online_dir, 0o700)
    root_paths = tuple(keys.write(s, keys_out, f"root-{i + 1}")[0] for i, s in enumerate(root_signers))
    approver_paths = tuple(keys.write(s, keys_out, f"approver-{i + 1}")[0] for i, s in enumerate(approver_signers))
    for role, signer in online.items():
        keys.write(signer, site.online_dir, role)
    create(
        DirectoryStore(site.metadata_dir),
        root=root,
        targets=targets,
        snapshot=RoleKeys([online["snapshot"].public_key]),
        timestamp=RoleKeys([online["timestamp"].public_key]),
        root_signers=root_signers[:root_threshold],
        targets_signers=approver_signers[:threshold],
        snapshot_signer=online["snapshot"],
        timestamp_signer=online["timestamp"],
        rollouts=RoleKeys([online[ROLLOUTS_KEY].public_key]),
        rollouts_signer=online[ROLLOUTS_KEY],
        expiry=expiry,
    )
    return InitResult(site, site.trusted_root, root_paths, approver_paths, threshold)
