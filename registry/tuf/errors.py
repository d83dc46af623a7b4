"""Errors of the fleet's TUF repository. Callers branch on types, never on message text.

    OtamlError
    └── TrustRepositoryError        anything this package refuses to do
        ├── KeyFileError            a key file is missing, unreadable, malformed or readable by others (also InputError)
        ├── MetadataMissing         the store lacks a metadata file the repository needs (also NotFound)
        ├── ThresholdNotMet         signatures (or signers) fewer than a role's threshold: nothing was published
        ├── ApprovalError           a pending approval is absent, out of date, or the key may not sign it (InputError)
        └── RolloutConflict         a rollout record changed between reading and publishing (another controller)

Messages name the offending value and say what to do.
"""

from __future__ import annotations

from edge_runtime.errors import InputError, NotFound, OtamlError


class TrustRepositoryError(OtamlError):
    """The fleet's TUF repository refused an operation; nothing was published."""


class KeyFileError(TrustRepositoryError, InputError):
    """A signing key file is missing, unreadable, malformed, or its permissions let others read it."""


class MetadataMissing(TrustRepositoryError, NotFound):
    """A metadata file the repository needs is not in the store (was the repository created?)."""


class ThresholdNotMet(TrustRepositoryError):
    """Fewer valid signatures than the role's threshold: the metadata was not published."""


class ApprovalError(TrustRepositoryError, InputError):
    """A pending approval is missing, out of date, or the key offered may not approve it."""


class RolloutConflict(TrustRepositoryError):
    """The rollout record is no longer the one the caller read: another controller or operator published first.
    Nothing was written; read the record again and decide anew."""
