"""The OCI core: pure value types and parsing, no I/O.

Media types, the label keys otaml writes, references, platforms, descriptors, manifests, indexes and image
configs; platform selection; canonical JSON and digests. Used by the device (:mod:`edge_runtime.oci.client`
reads a registry with them, :mod:`edge_runtime.agent.source` resolves a channel) and by ``registry.oci``, which
adds the places images are written to (a layout directory, a remote registry) and the transformations (append
a layer). Content is untrusted until verified: every parser raises :class:`MalformedContent` (reason
``malformed-image``) naming what breaks the spec, never a ``KeyError`` or ``TypeError``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.errors import MalformedContent, NotFound, OtamlError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])

# Labels (image config) and annotations (manifest, index) otaml writes on model images; the agent reads them.
LABEL_MODEL_NAME = "io.otaml.model.name"
LABEL_MODEL_VERSION = "io.otaml.model.version"
LABEL_BUNDLE_DIGEST = "io.otaml.bundle.digest"
LABEL_MLFLOW_RUN_ID = "io.otaml.mlflow.run_id"
LABEL_DETECTOR = "io.otaml.model.detector"
MODEL_PATH = "/opt/model"  # where the bundle layer puts the bundle inside the image

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REPOSITORY = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def sha256_digest(data: bytes) -> str:
    """The OCI digest string of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is a well-formed sha256 digest, else raise OtamlError."""
    if not _DIGEST.match(digest):
        raise OtamlError(f"digest {digest!r} is not of the form sha256:<64 lowercase hex digits>")
    return digest


def check_tag(tag: str) -> str:
    """Return ``tag`` if the distribution spec allows it, else raise OtamlError."""
    if not _TAG.match(tag):
        raise OtamlError(f"tag {tag!r} is invalid: use up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'")
    return tag


@dataclass(frozen=True)
class Reference:
    """``registry/repository`` plus a tag or a digest (or both: the digest wins)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def ref(self) -> str:
        """What goes into ``/v2/<repo>/manifests/<ref>``."""
        return self.digest or self.tag or "latest"

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, check_tag(tag), None)

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, None, check_digest(digest))

    def __str__(self) -> str:
        name = f"{self.registry}/{self.repository}"
        if self.digest:
            return f"{name}@{self.digest}"
        return f"{name}:{self.tag or 'latest'}"


def parse_reference(text: str) -> Reference:
    """Parse ``host[:port]/repo[:tag][@sha256:...]``; the host part is required (no Docker Hub default)."""
    rest = text.strip().removeprefix("docker://")
    digest = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        check_digest(digest)
    host, sep, path = rest.partition("/")
    if not sep or not path or not ("." in host or ":" in host or host == "localhost"):
        raise OtamlError(
            f"image reference {text!r} has no registry host: write it as HOST[:PORT]/REPOSITORY[:TAG], "
            "e.g. 127.0.0.1:5000/otaml/runtime:model-v1"
        )
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
        check_tag(tag)
    if not _REPOSITORY.match(path):
        raise OtamlError(f"repository {path!r} in {text!r} is invalid: use lowercase [a-z0-9._-] path components")
    return Reference(host, path, tag, digest)


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Platform:
        return cls(str(data.get("os", "")), str(data.get("architecture", "")), data.get("variant") or None)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    """A pointer to content: media type, digest, size (plus platform/annotations in an index)."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        return out

    @classmethod
    def from_json(cls, data: object) -> Descriptor:
        """Parse a descriptor; :class:`MalformedContent` names what is wrong with one that breaks the spec."""
        if not isinstance(data, Mapping):
            raise MalformedContent(f"malformed descriptor {_excerpt(data)}: expected a JSON object")
        try:
            platform = data.get("platform")
            if platform is not None and not isinstance(platform, Mapping):
                raise TypeError("platform is not a JSON object")
            annotations = data.get("annotations") or {}
            if not isinstance(annotations, Mapping):
                raise TypeError("annotations is not a JSON object")
            size = data["size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError(f"size {size!r} is not a non-negative integer")
            return cls(
                media_type=str(data["mediaType"]),
                digest=check_digest(str(data["digest"])),
                size=size,
                platform=Platform.from_json(platform) if platform else None,
                annotations={str(k): str(v) for k, v in annotations.items()},
            )
        except (KeyError, TypeError, ValueError, OtamlError) as exc:
            raise MalformedContent(f"malformed descriptor {_excerpt(data)}: {exc}") from exc


def _excerpt(value: Any, limit: int = 200) -> str:
    """A bounded repr of hostile content for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _string_map(value: Any, what: str) -> dict[str, str]:
    """Annotations or labels: a JSON object (``None`` is empty) as ``str -> str``; MalformedContent otherwise."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedContent(f"{what} is not a JSON object: {_excerpt(value)}")
    return {str(k): str(v) for k, v in value.items()}


def load_json(data: bytes, what: str) -> dict[str, Any]:
    """Decode a manifest/index/config, raising :class:`MalformedContent` (not JSONDecodeError) on garbage."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedContent(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise MalformedContent(f"{what} is a JSON {type(value).__name__}, not the JSON object the OCI spec requires")
    return value


def _object_list(value: Any, what: str) -> list[Mapping[str, Any]]:
    """``value`` as a list of JSON objects (``None`` is an empty list); MalformedContent otherwise."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise MalformedContent(f"{what} is not a list of JSON objects: {_excerpt(value)}")
    return value


def select_platform(index: bytes | Mapping[str, Any], os: str, arch: str, variant: str | None = None) -> Descriptor:
    """The manifest descriptor for ``os/arch[/variant]`` in an image index; NotFound if it has none.

    ``arm64`` without a variant matches ``arm64`` and ``arm64/v8`` (the same thing to a runtime).
    """
    data = load_json(index, "image index") if isinstance(index, bytes) else index
    candidates = [Descriptor.from_json(m) for m in _object_list(data.get("manifests"), "the index's manifests")]
    for desc in candidates:
        p = desc.platform
        if p is None or p.os != os or p.architecture != arch:
            continue
        if variant is None or p.variant == variant or (arch == "arm64" and {variant, p.variant} <= {None, "v8"}):
            return desc
    have = ", ".join(str(d.platform) for d in candidates if d.platform) or "none"
    want = "/".join(p for p in (os, arch, variant) if p)
    raise NotFound(f"the image index has no {want} manifest (it has: {have}); bake the image for that platform")


def config_labels(config: bytes | Mapping[str, Any]) -> dict[str, str]:
    """The ``config.Labels`` of an image configuration (empty when there are none)."""
    data = load_json(config, "image config") if isinstance(config, bytes) else config
    inner = data.get("config") or {}
    labels = inner.get("Labels") or {} if isinstance(inner, Mapping) else None
    if not isinstance(labels, Mapping):
        raise MalformedContent(f"the image config's config.Labels is not a JSON object: {_excerpt(data)}")
    return {str(k): str(v) for k, v in labels.items()}


_OCI_EQUIVALENT = {DOCKER_CONFIG: OCI_CONFIG, DOCKER_LAYER_GZIP: OCI_LAYER_GZIP}


def canonical_json(value: Any) -> bytes:
    """Stable bytes for a JSON value (sorted keys, no spaces): same value, same digest."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Blob:
    """Bytes plus their descriptor, ready to write anywhere."""

    data: bytes
    descriptor: Descriptor

    @classmethod
    def of(cls, data: bytes, media_type: str, platform: Platform | None = None) -> Blob:
        return cls(data, Descriptor(media_type, sha256_digest(data), len(data), platform))


@dataclass(frozen=True)
class Manifest:
    """An image manifest: one config and an ordered list of layers."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)
    media_type: str = OCI_MANIFEST

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    def blob(self, platform: Platform | None = None) -> Blob:
        return Blob.of(canonical_json(self.to_json()), self.media_type, platform)

    def as_oci(self) -> Manifest:
        """The same image described with OCI media types."""

        def oci(d: Descriptor) -> Descriptor:
            return Descriptor(
                _OCI_EQUIVALENT.get(d.media_type, d.media_type), d.digest, d.size, d.platform, d.annotations
            )

        return Manifest(oci(self.config), tuple(oci(d) for d in self.layers), self.annotations, OCI_MANIFEST)


@dataclass(frozen=True)
class Index:
    """An image index: one manifest per platform."""

    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [m.to_json() for m in self.manifests],
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    def blob(self) -> Blob:
        return Blob.of(canonical_json(self.to_json()), OCI_INDEX)


def parse_manifest(data: bytes | Mapping[str, Any], where: str = "manifest") -> Manifest:
    """Parse an image manifest (OCI or Docker schema 2); :class:`MalformedContent` naming ``where`` if it is not
    one. A document without ``mediaType`` is taken as OCI; ``strict`` schema checks are the writer's job."""
    doc = load_json(data, where) if isinstance(data, bytes) else data
    media_type = doc.get("mediaType") or OCI_MANIFEST
    if media_type not in MANIFEST_TYPES or doc.get("schemaVersion", 2) != 2:
        raise MalformedContent(
            f"{where} is not an image manifest (mediaType {_excerpt(media_type)}); expected {OCI_MANIFEST}"
        )
    return Manifest(
        config=Descriptor.from_json(doc.get("config")),
        layers=tuple(Descriptor.from_json(d) for d in _object_list(doc.get("layers"), f"{where}: layers")),
        annotations=_string_map(doc.get("annotations"), f"{where}: annotations"),
        media_type=media_type,
    )


def parse_index(data: bytes | Mapping[str, Any], where: str = "index") -> Index:
    """Parse an image index (OCI or Docker manifest list); :class:`MalformedContent` if it is not one."""
    doc = load_json(data, where) if isinstance(data, bytes) else data
    media_type = doc.get("mediaType") or OCI_INDEX
    if media_type not in INDEX_TYPES or not isinstance(doc.get("manifests"), list):
        raise MalformedContent(
            f"{where} is not an image index (mediaType {_excerpt(media_type)}); expected {OCI_INDEX}"
        )
    manifests = _object_list(doc["manifests"], f"{where}: manifests")
    return Index(
        tuple(Descriptor.from_json(d) for d in manifests), _string_map(doc.get("annotations"), f"{where}: annotations")
    )


def is_index(media_type: str) -> bool:
    return media_type in INDEX_TYPES


def config_platform(config: Mapping[str, Any]) -> Platform:
    """The platform an image config declares (``os``/``architecture``/``variant``)."""
    os_, arch, variant = config.get("os"), config.get("architecture"), config.get("variant")
    if not isinstance(os_, str) or not isinstance(arch, str) or not os_ or not arch:
        raise MalformedContent("image config has no os/architecture: it is not a runnable image config")
    return Platform(os_, arch, variant if isinstance(variant, str) and variant else None)
