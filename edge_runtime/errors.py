"""The error tree shared by every otaml package. Callers branch on types, never on message text.

    OtamlError                      anything otaml reports to a person (the CLI prints it, exits 1)
    ├── BundleError                 a model bundle is missing, malformed or fails its own checks
    ├── InputError                  bad user input: telemetry, requests, configuration
    ├── VerificationFailed          an image's signature or approval does not hold (never retried)
    ├── NotFound                    a thing that was asked for does not exist (image, tag, container)
    ├── Unhealthy                   a container did not become ready, failed its golden replay or died
    └── TemporaryError              worth retrying later with back-off (registry down, timeouts, 5xx)

Messages say what failed, the offending value and what to do.
"""

from __future__ import annotations


class OtamlError(Exception):
    """Root of every error otaml reports to a person."""


class InputError(OtamlError, ValueError):
    """Bad input from a person or a file: the message names it and says how to fix it."""


class VerificationFailed(OtamlError):
    """An image is not approved: unsigned, wrong key, tampered, expired, or a forbidden downgrade."""


class NotFound(OtamlError):
    """The image, tag, blob or container that was asked for does not exist."""


class Unhealthy(OtamlError):
    """A service container did not become ready, failed its golden replay, or died."""


class TemporaryError(OtamlError):
    """A failure that may pass on its own (network, timeouts, 5xx): retry with back-off."""
