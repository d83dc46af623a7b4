"""Manifests, indexes and image configs as values: build, parse, canonical bytes, digests. No I/O.

Everything otaml writes is OCI (``application/vnd.oci.image.*``). Docker schema-2 inputs are read too;
their config/layer media types are mapped to the OCI names (the bytes are the same formats) so a
derived manifest is consistently OCI.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.errors import OtamlError
from edge_runtime.oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Platform,
    load_json,
    sha256_digest,
)

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


def parse_manifest(data: bytes, where: str = "manifest") -> Manifest:
    """Parse an image manifest (OCI or Docker schema 2); OtamlError naming ``where`` if it is not one."""
    doc = load_json(data, where)
    media_type = doc.get("mediaType") or OCI_MANIFEST
    if media_type not in MANIFEST_TYPES or doc.get("schemaVersion") != 2:
        raise OtamlError(f"{where} is not an image manifest (mediaType {media_type!r}); expected {OCI_MANIFEST}")
    try:
        return Manifest(
            config=Descriptor.from_json(doc["config"]),
            layers=tuple(Descriptor.from_json(d) for d in doc.get("layers") or []),
            annotations=dict(doc.get("annotations") or {}),
            media_type=media_type,
        )
    except (KeyError, TypeError) as exc:
        raise OtamlError(f"{where} is malformed: {exc!r}") from exc


def parse_index(data: bytes, where: str = "index") -> Index:
    """Parse an image index (OCI or Docker manifest list)."""
    doc = load_json(data, where)
    media_type = doc.get("mediaType") or OCI_INDEX
    if media_type not in INDEX_TYPES or not isinstance(doc.get("manifests"), list):
        raise OtamlError(f"{where} is not an image index (mediaType {media_type!r}); expected {OCI_INDEX}")
    return Index(tuple(Descriptor.from_json(d) for d in doc["manifests"]), dict(doc.get("annotations") or {}))


def is_index(media_type: str) -> bool:
    return media_type in INDEX_TYPES


def config_platform(config: Mapping[str, Any]) -> Platform:
    """The platform an image config declares (``os``/``architecture``/``variant``)."""
    if not config.get("os") or not config.get("architecture"):
        raise OtamlError("image config has no os/architecture: it is not a runnable image config")
    return Platform(str(config["os"]), str(config["architecture"]), config.get("variant") or None)


def append_layer(
    config: Mapping[str, Any],
    diff_id: str,
    *,
    labels: Mapping[str, str],
    created_by: str,
    comment: str = "",
    created: str | None = None,
) -> dict[str, Any]:
    """A new image config: ``diff_id`` appended to ``rootfs.diff_ids``, a history entry, labels merged.

    Pure and deterministic: the same inputs give the same bytes (no clock is read; pass ``created``).
    """
    new = copy.deepcopy(dict(config))
    rootfs = new.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs["diff_ids"] = [*rootfs.get("diff_ids", []), diff_id]
    entry: dict[str, Any] = {"created_by": created_by}
    if comment:
        entry["comment"] = comment
    if created:
        entry["created"] = created
        new["created"] = created
    new["history"] = [*new.get("history", []), entry]
    inner = new.setdefault("config", {})
    inner["Labels"] = {**(inner.get("Labels") or {}), **labels}
    return new


def platform_key(platform: Platform | None) -> str:
    """``linux/arm64`` style key (``unknown`` for descriptors without a platform)."""
    return str(platform) if platform else "unknown"


def runnable(descriptors: Sequence[Descriptor]) -> list[Descriptor]:
    """Index entries that are images for a real platform (drops attestation/``unknown/unknown`` entries)."""
    return [
        d
        for d in descriptors
        if d.media_type in MANIFEST_TYPES
        and d.platform is not None
        and d.platform.os != "unknown"
        and d.platform.architecture != "unknown"
    ]
