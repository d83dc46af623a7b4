"""The error tree shared by every otaml package. Callers branch on types, never on message text.

    OtamlError                      anything otaml reports to a person (the CLI prints it, exits 1)
    ├── BundleError                 a model bundle is missing, malformed or fails its own checks
    ├── InputError                  bad user input: telemetry, requests, configuration
    ├── MalformedContent            malformed-image: registry content that breaks the OCI spec (not JSON, an
    │   │                           array where an object belongs, a bad descriptor or digest)
    │   └── OversizedContent        oversized: a manifest, config, index, token or signature over its size cap
    ├── VerificationFailed          an image's signature or approval does not hold (never retried)
    ├── NotFound                    a thing that was asked for does not exist (image, tag, container)
    ├── Unhealthy                   unhealthy: a container did not become ready, failed its golden replay or died
    │   ├── GoldenMismatch          golden-mismatch (agent.canary): the canary scored its golden vectors wrong
    │   ├── CanaryExited            canary-exited (agent.canary): it exited before becoming ready
    │   │   └── CanaryOOMKilled     canary-oom-killed: OOM-killed before becoming ready
    │   ├── CanaryNotReady          canary-not-ready (agent.canary): no /readyz within the ready timeout
    │   └── ContainerExited         container-exited (agent.reconcile): it died in probation
    └── TemporaryError              worth retrying later with back-off (registry down, timeouts, 5xx)
        └── RegistryUnavailable     registry-unavailable: connection errors, timeouts, deadlines, 429, 5xx

The OCI client adds (:mod:`edge_runtime.oci`): ``RegistryAuthError`` (``registry-auth``: 401/403) and
``ForbiddenHost`` (``forbidden-host``: a token realm on a host that is not the registry's nor allowed). The agent
adds ``NoMatchingPlatform`` (``no-platform``), ``RuntimeFailure`` (``runtime-failure``) and ``HandoverError``
(``handover-failed``); the trust client its tree in :mod:`edge_runtime.trust.errors`; the fleet channel
``MalformedMessage`` (an ``InputError``).

Messages say what failed, the offending value and what to do. Every class carries a stable ``reason`` code
(``reason_of(exc)``) that reports, ``otaml agent status``, metrics and fleet events use; subclasses name
their own (e.g. ``edge_runtime.trust.errors``: ``not-approved``, ``stale-metadata``...).
"""

from __future__ import annotations

from typing import ClassVar


class OtamlError(Exception):
    """Root of every error otaml reports to a person."""

    reason: ClassVar[str] = "error"


class InputError(OtamlError, ValueError):
    """Bad input from a person or a file: the message names it and says how to fix it."""

    reason = "bad-input"


class VerificationFailed(OtamlError):
    """An image is not approved: unsigned, wrong key, tampered, expired, or a forbidden downgrade."""

    reason = "not-verified"


class NotFound(OtamlError):
    """The image, tag, blob or container that was asked for does not exist."""

    reason = "not-found"


class Unhealthy(OtamlError):
    """A service container did not become ready, failed its golden replay, or died."""

    reason = "unhealthy"


class TemporaryError(OtamlError):
    """A failure that may pass on its own (network, timeouts, 5xx): retry with back-off."""

    reason = "temporary"


class MalformedContent(OtamlError):
    """Content from a registry or image that the OCI spec does not allow; retrying the same digest cannot help."""

    reason = "malformed-image"


class OversizedContent(MalformedContent):
    """A document read whole into memory is over its size cap (the message names the cap)."""

    reason = "oversized"


class RegistryUnavailable(TemporaryError):
    """The registry did not answer in time or answered 429/5xx: retry with back-off."""

    reason = "registry-unavailable"


def reason_of(exc: BaseException) -> str:
    """The stable reason code of ``exc``: its class's ``reason``, ``internal`` for anything outside the tree."""
    reason = getattr(exc, "reason", None) if isinstance(exc, OtamlError) else None
    return reason if isinstance(reason, str) and reason else "internal"
