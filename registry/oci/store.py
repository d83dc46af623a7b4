"""The verbs every place that holds images offers (a layout directory, a registry repository)."""

from __future__ import annotations

from typing import Protocol

from edge_runtime.oci import Descriptor


class Store(Protocol):
    """One repository's worth of blobs, manifests and tags."""

    def describe(self) -> str:
        """A short human name for messages (``oci:/path`` or ``host:port/repo``)."""
        ...

    def resolve(self, ref: str) -> Descriptor | None:
        """The manifest/index a tag or digest names, or None when it does not exist."""
        ...

    def read_manifest(self, ref: str) -> tuple[bytes, str, str]:
        """``(bytes, media type, digest)`` of the manifest or index ``ref`` names; NotFound if none."""
        ...

    def read_blob(self, digest: str) -> bytes:
        """A blob's bytes, verified against its digest; NotFound if absent."""
        ...

    def has_blob(self, digest: str) -> bool: ...

    def write_blob(self, data: bytes, digest: str, *, mount_from: str | None = None) -> int:
        """Store a blob unless present; return the bytes actually sent (0 when it was already there)."""
        ...

    def write_manifest(self, data: bytes, media_type: str, tag: str | None = None) -> str:
        """Store a manifest or index (under ``tag`` if given); return its digest."""
        ...

    def tags(self) -> list[str]: ...
