"""The device's trust errors: why an image is not (or cannot now be shown to be) approved.

Every error carries a stable ``reason`` code for status, metrics and fleet events. Callers branch on the
type (or the code), never on message text. python-tuf's exceptions are converted at the boundary
(:mod:`edge_runtime.trust.client`); nothing else escapes.

    OtamlError
    └── TrustError                          reason
        ├── TrustConfigError                trust-config          trusted root file or settings unusable (InputError)
        ├── LocalStateError                 local-state           the metadata directory cannot be read or written
        ├── MetadataUnavailable             metadata-unavailable  repository unreachable, HTTP error, too slow
        │                                                         (TemporaryError: retry; keep serving meanwhile)
        └── NotTrusted                      (VerificationFailed: never retried as-is)
            ├── StaleMetadata               stale-metadata        metadata expired: the repository is frozen or
            │                                                     MLOps stopped re-signing the timestamp
            ├── BadSignature                bad-signature         fewer valid signatures than the role's threshold
            ├── RollbackRefused             rollback              a version lower than one already trusted
            ├── InconsistentMetadata        inconsistent-metadata length/hash of one role differs from what the
            │                                                     role above it signed (mix-and-match)
            ├── OversizedMetadata           oversized-metadata    a file larger than its cap (endless data)
            ├── MalformedMetadata           malformed-metadata    not TUF metadata, or a target with bad fields
            └── NotApproved                 not-approved          the digest is no approved target for this
                                                                  channel and model (arbitrary software)

A device that gets any of these keeps serving what it runs; only an approved digest may replace it.
"""

from __future__ import annotations

from typing import ClassVar

from edge_runtime.errors import InputError, OtamlError, TemporaryError, VerificationFailed


class TrustError(OtamlError):
    """Root of the device's trust errors; ``reason`` is a stable code for status, metrics and events."""

    reason: ClassVar[str] = "trust-error"


class TrustConfigError(TrustError, InputError):
    """The trusted root file or a trust setting is missing or unusable; the message names it and the fix."""

    reason = "trust-config"


class LocalStateError(TrustError):
    """The local metadata directory (the device's anti-rollback state) cannot be read or written."""

    reason = "local-state"


class MetadataUnavailable(TrustError, TemporaryError):
    """The repository could not be read (network, HTTP status, too slow). Retry later; keep serving."""

    reason = "metadata-unavailable"


class NotTrusted(TrustError, VerificationFailed):
    """What the repository served does not hold up: nothing it says is believed."""

    reason = "not-trusted"


class StaleMetadata(NotTrusted):
    """Metadata is past its expiry: a frozen repository, or the timestamp is no longer re-signed."""

    reason = "stale-metadata"


class BadSignature(NotTrusted):
    """Metadata is not signed by a threshold of the keys its role requires."""

    reason = "bad-signature"


class RollbackRefused(NotTrusted):
    """Metadata has a lower version than one the device already trusted."""

    reason = "rollback"


class InconsistentMetadata(NotTrusted):
    """A file's length or hash differs from what the role above it signed (mix-and-match)."""

    reason = "inconsistent-metadata"


class OversizedMetadata(NotTrusted):
    """A metadata file is larger than its cap (endless data)."""

    reason = "oversized-metadata"


class MalformedMetadata(NotTrusted):
    """Not valid TUF metadata, or a target whose fields are not an otaml approval."""

    reason = "malformed-metadata"


class NotApproved(NotTrusted):
    """The image digest is not an approved target for the channel and model asked about."""

    reason = "not-approved"
