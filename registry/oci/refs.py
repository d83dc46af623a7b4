"""Image REFs and the stores they name.

A REF is either a registry reference ``HOST[:PORT]/REPO[:TAG|@sha256:...]`` or an OCI layout
``oci:PATH[:TAG|@sha256:...]``. :func:`open_ref` returns the :class:`Store` and the tag or digest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import httpx

from edge_runtime.errors import InputError, OtamlError
from edge_runtime.oci import DEFAULT_TIMEOUT, RegistryClient, check_digest, check_tag, parse_reference
from registry.oci.layout import Layout
from registry.oci.remote import Remote
from registry.oci.store import Store

_TAG_SUFFIX = re.compile(r":([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$")


@dataclass(frozen=True)
class Ref:
    """A parsed REF: where (``layout`` path or ``registry``/``repository``) and which (tag or digest)."""

    text: str
    layout: Path | None = None
    registry: str | None = None
    repository: str | None = None
    tag: str | None = None
    digest: str | None = None

    @property
    def ref(self) -> str | None:
        return self.digest or self.tag

    def location(self) -> str:
        """The REF without its tag/digest: ``oci:PATH`` or ``HOST/REPO``."""
        return f"oci:{self.layout}" if self.layout is not None else f"{self.registry}/{self.repository}"

    def same_place(self, other: Ref) -> bool:
        return self.location() == other.location()


def parse_ref(text: str) -> Ref:
    """Parse a REF (see the module docstring); InputError with an example when it is malformed."""
    if text.startswith("oci:"):
        rest, digest = text[4:], None
        if "@" in rest:
            rest, digest = rest.rsplit("@", 1)
            check_digest(digest)
        tag = None
        match = _TAG_SUFFIX.search(rest)
        # A colon followed by a path-free word is a tag; a colon inside the path is not.
        if match and "/" not in match.group(1) and digest is None:
            tag = check_tag(match.group(1))
            rest = rest[: match.start()]
        if not rest:
            raise InputError(f"REF {text!r} has no layout path: write oci:PATH[:TAG], e.g. oci:./base-layout:base")
        return Ref(text, layout=Path(rest), tag=tag, digest=digest)
    try:
        parsed = parse_reference(text)
    except OtamlError as exc:
        raise InputError(f"{exc} (or use oci:PATH[:TAG] for an OCI layout directory)") from exc
    return Ref(text, registry=parsed.registry, repository=parsed.repository, tag=parsed.tag, digest=parsed.digest)


def open_store(
    ref: Ref,
    *,
    auth: tuple[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    create: bool = False,
    chunk_size: int | None = None,
) -> Store:
    """The :class:`Store` ``ref`` names; ``create`` makes a missing layout directory (for destinations)."""
    if ref.layout is not None:
        return Layout(ref.layout, create=create)
    if ref.registry is None or ref.repository is None:
        raise InputError(f"REF {ref.text!r} names neither a layout nor a registry repository")
    client = RegistryClient(ref.registry, ref.repository, auth=auth, transport=transport, timeout=timeout)
    return Remote(client, chunk_size=chunk_size)


def close_store(store: Store) -> None:
    """Release a store's connections (a no-op for layouts)."""
    close = getattr(store, "close", None)
    if callable(close):
        close()


def pinned(text: str) -> str:
    """``REF`` pinned by digest (``oci:PATH@sha256:...`` or ``HOST/REPO@sha256:...``): what its tag points at now.

    Pin a base image once, when you decide to trust it, and bake onto the pinned REF from then on.
    """
    ref = parse_ref(text)
    if ref.digest:
        return text
    store = open_store(ref)
    try:
        desc = store.resolve(ref.tag or "latest")
    finally:
        close_store(store)
    if desc is None:
        raise InputError(f"{text} does not exist: nothing to pin")
    return f"{ref.location()}@{desc.digest}"
