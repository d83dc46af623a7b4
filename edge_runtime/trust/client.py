"""The device's trust client: is this image approved? Answered from the fleet's TUF repository with ngclient.

    client = TrustClient(TrustSettings(metadata_url="https://…/tuf/", trusted_root=Path("/etc/otaml/root.json"),
                                       metadata_dir=Path("/var/lib/otaml/tuf")))
    approval = client.approval("sha256:…", channel="production", model="pump-anomaly")   # -> Approval, or raises
    record = client.rollout("production", "pump-anomaly")   # -> RolloutRecord (signed by the rollouts role) or None

Each call refreshes the metadata (root chain, timestamp, snapshot, targets) through one ``tuf.ngclient.Updater``
and answers from what it verified. ``trusted_root`` is the root the device was provisioned with (the trust
anchor; the image or provisioning writes it, read-only). ``metadata_dir`` is the device's anti-rollback state:
the newest root, timestamp, snapshot and targets it trusted; it must survive reboots, recoveries and re-installs
(wiping it only lowers the floor back to ``trusted_root``, it never makes a bad image trusted).

Every failure is one of :mod:`edge_runtime.trust.errors` (python-tuf's exceptions are converted here).
This module imports python-tuf (~25 MB RSS, ~0.1 s): the scoring service never imports it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tuf.api import exceptions
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig, Urllib3Fetcher

from edge_runtime.errors import InputError
from edge_runtime.fleet.rollout import RolloutRecord, target_path
from edge_runtime.trust.approval import Approval, ApprovalSet
from edge_runtime.trust.errors import (
    BadSignature,
    InconsistentMetadata,
    LocalStateError,
    MalformedMetadata,
    MetadataUnavailable,
    OversizedMetadata,
    RollbackRefused,
    StaleMetadata,
    TrustConfigError,
    TrustError,
)
from edge_runtime.trust.fetch import CappedFetcher
from edge_runtime.trust.limits import MetadataLimits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrustSettings:
    """Where the repository is, the device's trust anchor, and where its anti-rollback state lives."""

    metadata_url: str
    trusted_root: Path
    metadata_dir: Path
    limits: MetadataLimits = field(default_factory=MetadataLimits)

    def __post_init__(self) -> None:
        parts = urlsplit(self.metadata_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise TrustConfigError(
                f"trust metadata URL {self.metadata_url!r} is not an http(s) URL; "
                "set it to the directory that serves root.json and timestamp.json, e.g. https://host/tuf/"
            )


class TrustClient:
    """Answers "is this image approved?" from freshly verified TUF metadata.

    ``fetcher`` is the I/O seam (default: python-tuf's urllib3 fetcher); every read goes through
    :class:`~edge_runtime.trust.fetch.CappedFetcher` whatever fetcher is given. Not thread-safe: one device,
    one client (ngclient's rule for a metadata directory).
    """

    def __init__(
        self,
        settings: TrustSettings,
        *,
        fetcher: FetcherInterface | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        inner = fetcher if fetcher is not None else Urllib3Fetcher(socket_timeout=30, app_user_agent="otaml-agent")
        self._fetcher = CappedFetcher(inner, settings.limits, clock)
        self._refreshed: Updater | None = None  # the last refresh's verified view, for rollout()

    def refresh(self) -> ApprovalSet:
        """Fetch and verify the newest metadata; return every approval it holds. Raises a :class:`TrustError`."""
        self._refreshed = None
        updater = self._updater()
        with _converted(self.settings.metadata_url):
            updater.refresh()
            targets = updater._trusted_set.targets  # verified top-level targets; ngclient has no listing API
            timestamp = updater._trusted_set.timestamp
        self._refreshed = updater
        approvals: list[Approval] = []
        malformed: list[str] = []
        for path, target in targets.targets.items():
            try:
                approvals.append(Approval.from_target(path, target.length, target.hashes, target.custom))
            except MalformedMetadata as exc:
                log.warning("ignoring target that approves nothing: %s", exc)
                malformed.append(path)
        return ApprovalSet(
            approvals=tuple(approvals),
            targets_version=targets.version,
            expires=timestamp.expires.isoformat(),
            malformed=tuple(malformed),
        )

    def approval(self, digest: str, *, channel: str, model: str) -> Approval:
        """The approval of the image index ``digest`` for ``channel`` and ``model`` (its version, base digest).

        Raises :class:`~edge_runtime.trust.errors.NotApproved` if MLOps did not approve it, or another
        :class:`TrustError` if the metadata cannot be trusted now (stale, rolled back, badly signed, ...).
        """
        return self.refresh().find(digest, channel=channel, model=model)

    def latest(self, *, channel: str, model: str) -> Approval:
        """The highest approved version of ``model`` on ``channel``."""
        return self.refresh().latest(channel=channel, model=model)

    def rollout(self, channel: str, model: str) -> RolloutRecord | None:
        """The signed rollout record of ``model`` on ``channel``, or None when no rollout was ever published.

        Read through ngclient's delegation walk: only the role the top-level targets delegate ``rollouts/*/*`` to
        (the controller's key) can sign it. A record that does not verify, or whose fields do not hash to what
        was signed, raises a :class:`TrustError` (``MalformedMetadata`` for bad fields): never a guess.

        After :meth:`refresh` it reads from that same verified publication (the approvals and the record agree,
        and a poll costs one timestamp fetch, not two); without one, it refreshes first.
        """
        try:
            path = target_path(channel, model)
        except InputError as exc:
            raise MalformedMetadata(f"no rollout record can be asked for: {exc}") from exc
        updater = self._refreshed
        with _converted(self.settings.metadata_url):
            if updater is None:
                updater = self._updater()
                updater.refresh()
                self._refreshed = updater
            target = updater.get_targetinfo(path)
        if target is None:
            return None
        try:
            return RolloutRecord.from_target(path, target.length, target.hashes, target.custom)
        except InputError as exc:
            raise MalformedMetadata(f"signed rollout record {path!r} is not valid: {exc}") from exc

    def _updater(self) -> Updater:
        s = self.settings
        bootstrap = _read_trusted_root(s.trusted_root, s.limits.root)
        try:
            s.metadata_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise LocalStateError(f"cannot create the trust metadata directory {s.metadata_dir}: {exc}") from exc
        config = UpdaterConfig(
            max_root_rotations=s.limits.root_rotations,
            # The walk visits roles while it has visited at most this many: top-level targets, then the one
            # delegated role (``rollouts``). A deeper tree (which only a leaked rollouts key could add) is not read.
            max_delegations=1,
            root_max_length=s.limits.root,
            timestamp_max_length=s.limits.timestamp,
            snapshot_max_length=s.limits.snapshot,
            targets_max_length=s.limits.targets,
        )
        try:
            return Updater(
                metadata_dir=str(s.metadata_dir),
                metadata_base_url=s.metadata_url,
                fetcher=self._fetcher,
                config=config,
                bootstrap=bootstrap,
            )
        except exceptions.RepositoryError as exc:
            raise TrustConfigError(
                f"trusted root {s.trusted_root} is not valid, self-signed TUF root metadata ({exc}); "
                "provision the device with the fleet repository's 1.root.json"
            ) from exc
        except OSError as exc:
            raise LocalStateError(f"cannot write the trust metadata directory {s.metadata_dir}: {exc}") from exc


def _read_trusted_root(path: Path, cap: int) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except FileNotFoundError:
        raise TrustConfigError(
            f"trusted root file {path} does not exist; provision the device with the fleet repository's "
            "1.root.json there (the agent refuses to update without a trust root)"
        ) from None
    except OSError as exc:
        raise TrustConfigError(f"trusted root file {path} cannot be read: {exc}") from exc
    if len(data) > cap:
        raise TrustConfigError(f"trusted root file {path} is larger than the root cap of {cap} bytes")
    return data


@contextmanager
def _converted(url: str) -> Iterator[None]:
    """python-tuf's exceptions -> the device's trust error tree (order matters: subclasses first)."""
    try:
        yield
    except TrustError:
        raise
    except exceptions.DownloadLengthMismatchError as exc:
        raise OversizedMetadata(f"metadata from {url} refused: {exc}") from exc
    except exceptions.DownloadHTTPError as exc:
        raise MetadataUnavailable(f"metadata from {url}: HTTP {exc.status_code} ({exc}); retrying later") from exc
    except exceptions.DownloadError as exc:
        raise MetadataUnavailable(f"metadata from {url} could not be read ({_cause(exc)}); retrying later") from exc
    except exceptions.ExpiredMetadataError as exc:
        raise StaleMetadata(
            f"metadata from {url} is expired ({exc}): the repository is frozen or its timestamp is no longer "
            "re-signed; the device keeps what it runs until fresh metadata arrives"
        ) from exc
    except exceptions.UnsignedMetadataError as exc:
        raise BadSignature(f"metadata from {url} is not signed by enough trusted keys: {exc}") from exc
    except exceptions.BadVersionNumberError as exc:
        raise RollbackRefused(f"metadata from {url} would roll back what the device trusts: {exc}") from exc
    except exceptions.LengthOrHashMismatchError as exc:
        raise InconsistentMetadata(f"metadata from {url} does not match what was signed for it: {exc}") from exc
    except exceptions.RepositoryError as exc:
        raise MalformedMetadata(f"metadata from {url} is not valid TUF metadata: {exc}") from exc
    except OSError as exc:
        raise LocalStateError(f"the trust metadata directory cannot be used: {exc}") from exc
    except (ValueError, TypeError, KeyError) as exc:  # a hostile document that slipped past ngclient's parsing
        raise MalformedMetadata(f"metadata from {url} could not be parsed: {exc!r}") from exc


def _cause(exc: BaseException) -> str:
    parts = [str(exc)]
    cause = exc.__cause__
    if cause is not None:
        parts.append(f"{type(cause).__name__}: {cause}")
    return "; ".join(p for p in parts if p)
