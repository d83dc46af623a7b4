"""What one approved model image is as a TUF target: the contract between ``registry.tuf`` and the device.

Target path ``<channel>/<model>/<version>`` (e.g. ``production/pump-anomaly/7``); ``length`` and
``hashes.sha256`` are the OCI image index's size and digest; ``custom`` repeats channel, model and version
(so the device never trusts the path alone) and records the base image digest the bundle was baked on.
``staged: true`` marks an approval that waits for a rollout: a device runs it only when a signed rollout record
puts it in a wave, never as "the highest approved version" (:mod:`edge_runtime.agent.trust_policy`).
Pure data: no python-tuf import, so status code and the agent can use it cheaply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from edge_runtime.errors import InputError
from edge_runtime.trust.errors import MalformedMetadata, NotApproved

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def check_name(kind: str, value: str) -> str:
    """A channel or model name: letters, digits, ``.``, ``_``, ``-`` (no ``/``: it is a path component)."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InputError(f"{kind} {value!r} is not a valid name: use letters, digits, '.', '_' or '-' (max 128)")
    return value


def check_digest(kind: str, value: str) -> str:
    """An OCI digest ``sha256:<64 lowercase hex>``."""
    if not isinstance(value, str) or not DIGEST_RE.match(value):
        raise InputError(f"{kind} {value!r} is not an OCI digest; expected 'sha256:' and 64 lowercase hex digits")
    return value


@dataclass(frozen=True)
class Approval:
    """An image MLOps approved: index ``digest`` and ``length`` for ``model`` ``version`` on ``channel``."""

    channel: str
    model: str
    version: int
    digest: str
    length: int
    base_digest: str
    # Raised by `otaml trust retry`: a signed "try this digest again" that lifts a device's block on it.
    retry: int = 0
    # Set by `otaml promote` when the fleet rolls out in waves and an earlier version already runs: approved, but no
    # device moves to it until `otaml rollout start` opens a wave (a signed record names it).
    staged: bool = False

    def __post_init__(self) -> None:
        check_name("channel", self.channel)
        check_name("model", self.model)
        check_digest("image digest", self.digest)
        check_digest("base image digest", self.base_digest)
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise InputError(f"model version {self.version!r} is not a positive integer (an MLflow version number)")
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 1:
            raise InputError(f"image index length {self.length!r} is not a positive number of bytes")
        if isinstance(self.retry, bool) or not isinstance(self.retry, int) or self.retry < 0:
            raise InputError(f"retry {self.retry!r} is not a count (an integer >= 0)")
        if not isinstance(self.staged, bool):
            raise InputError(f"staged {self.staged!r} is not true or false")

    def same_image(self, other: Approval) -> bool:
        """The same channel, model, version and image: ``retry`` and ``staged`` are how it ships, not what."""
        return replace(self, retry=0, staged=False) == replace(other, retry=0, staged=False)

    @property
    def target_path(self) -> str:
        return f"{self.channel}/{self.model}/{self.version}"

    @property
    def sha256(self) -> str:
        return self.digest.removeprefix("sha256:")

    def custom(self) -> dict[str, Any]:
        """The target's ``custom`` fields."""
        fields: dict[str, Any] = {
            "channel": self.channel,
            "model": self.model,
            "version": self.version,
            "base_digest": self.base_digest,
        }
        if self.retry:
            fields["retry"] = self.retry
        if self.staged:
            fields["staged"] = True
        return fields

    @classmethod
    def from_target(cls, path: str, length: int, hashes: Mapping[str, str], custom: Any) -> Approval:
        """Parse a verified target; :class:`MalformedMetadata` when its fields disagree or are not an approval."""
        if not isinstance(custom, Mapping):
            raise MalformedMetadata(f"target {path!r} has no otaml custom fields (channel, model, version, base)")
        sha = hashes.get("sha256")
        try:
            approval = cls(
                channel=custom.get("channel"),  # type: ignore[arg-type]
                model=custom.get("model"),  # type: ignore[arg-type]
                version=custom.get("version"),  # type: ignore[arg-type]
                digest=f"sha256:{sha}",
                length=length,
                base_digest=custom.get("base_digest"),  # type: ignore[arg-type]
                retry=custom.get("retry", 0),
                staged=custom.get("staged", False),
            )
        except InputError as exc:
            raise MalformedMetadata(f"target {path!r} is not a valid otaml approval: {exc}") from exc
        if approval.target_path != path:
            raise MalformedMetadata(
                f"target {path!r} says channel/model/version {approval.target_path!r} in its custom fields; "
                "the repository must name targets <channel>/<model>/<version>"
            )
        return approval


@dataclass(frozen=True)
class ApprovalSet:
    """Every approval in one verified publication of the repository (``targets_version``), valid until ``expires``.

    ``malformed`` names targets that were signed but are not otaml approvals: they approve nothing.
    """

    approvals: tuple[Approval, ...]
    targets_version: int
    expires: str
    malformed: tuple[str, ...] = ()

    def find(self, digest: str, *, channel: str, model: str) -> Approval:
        """The approval of ``digest`` for ``channel`` and ``model``; :class:`NotApproved` naming what is approved."""
        try:
            check_digest("image digest", digest)
            check_name("channel", channel)
            check_name("model", model)
        except InputError as exc:
            raise NotApproved(f"not approved: {exc}") from exc
        for approval in self.approvals:
            if (approval.channel, approval.model, approval.digest) == (channel, model, digest):
                return approval
        known = [f"v{a.version}={a.digest[:19]}…" for a in self.for_model(channel, model)]
        elsewhere = [a.target_path for a in self.approvals if a.digest == digest]
        raise NotApproved(
            f"image {digest} is not approved for channel {channel!r}, model {model!r} "
            f"(targets v{self.targets_version}; approved there: {', '.join(known) or 'nothing'}"
            + (f"; this digest is approved only as {', '.join(elsewhere)}" if elsewhere else "")
            + (f"; ignored malformed targets: {', '.join(self.malformed)}" if self.malformed else "")
            + "). Approve it with the MLOps keys before devices may run it."
        )

    def for_model(self, channel: str, model: str) -> list[Approval]:
        """Approvals of ``model`` on ``channel``, lowest version first."""
        found = [a for a in self.approvals if a.channel == channel and a.model == model]
        return sorted(found, key=lambda a: a.version)

    def latest(self, *, channel: str, model: str) -> Approval:
        """The highest approved version of ``model`` on ``channel``; :class:`NotApproved` if there is none."""
        found = self.for_model(channel, model)
        if not found:
            raise NotApproved(f"no version of model {model!r} is approved for channel {channel!r}")
        return found[-1]
