"""The verification hook: may this device run this image?

``VerificationPolicy.check(image)`` returns None to approve and raises
:class:`edge_runtime.errors.VerificationFailed` (with the reason and the remedy) to refuse; a refused
digest is blocked. On a device with ``[trust]`` the policy is the fleet's TUF repository
(:mod:`edge_runtime.agent.trust_policy`); on an explicitly insecure device, :class:`NoDowngrade` approves
everything except a model version lower than the one serving.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from edge_runtime.errors import VerificationFailed


@dataclass(frozen=True)
class CandidateImage:
    """What the agent knows about an image before pulling it."""

    repository: str
    digest: str  # what the channel tag points at (an index, or a single manifest)
    manifest_digest: str  # the manifest for this device's platform
    platform: str
    model: str
    version: str
    labels: Mapping[str, str] = field(default_factory=dict)
    current_version: str = ""  # the version serving now ("" on first install)
    current_digest: str = ""


class VerificationPolicy(Protocol):
    def check(self, image: CandidateImage) -> None:
        """Return to approve; raise VerificationFailed to refuse."""
        ...


class AllowAll:
    """Approves every image (no signing key configured, and no downgrade rule)."""

    def check(self, image: CandidateImage) -> None:
        return None


def version_key(version: str) -> tuple[int, ...] | None:
    """``"12"`` -> (12,), ``"1.2.3"`` -> (1, 2, 3); None when not numeric (then versions are not ordered)."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return None


class NoDowngrade:
    """Refuses a model version lower than the one serving (an unsigned rollback)."""

    def check(self, image: CandidateImage) -> None:
        new, old = version_key(image.version), version_key(image.current_version)
        if new is not None and old is not None and new < old:
            raise VerificationFailed(
                f"Image {image.digest} carries {image.model} version {image.version}, lower than the serving "
                f"version {image.current_version}: refusing a downgrade. Promote a new version instead, or sign an "
                "explicit rollback with the fleet key."
            )
