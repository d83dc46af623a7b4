"""Error wrapping for OCI operations: ``pushing blob sha256:...: <cause>`` with the cause's type kept."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from edge_runtime.errors import OtamlError


class TagConflict(OtamlError):
    """An immutable tag (``model-v<N>``) already names different content."""


@contextmanager
def doing(what: str) -> Iterator[None]:
    """Prefix any OtamlError raised inside with ``what: `` and re-raise the same type (callers branch on types)."""
    try:
        yield
    except OtamlError as exc:
        raise type(exc)(f"{what}: {exc}") from exc
