"""Where candidate images come from: the channel tag in an OCI registry.

:class:`ImageSource` is the seam the update step uses (fakes in unit tests); :class:`RegistrySource`
adapts :class:`edge_runtime.oci.RegistryClient`. The poll is one ``HEAD`` of the channel tag; only a
new digest costs more (index, platform manifest, config blob: a few kB).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_runtime.errors import NotFound, OtamlError
from edge_runtime.oci import MAX_SMALL_BLOB_BYTES

# Labels the baker writes (registry/bake.py); the OCI standard ones are the fallback.
MODEL_LABELS = ("io.otaml.model.name", "org.opencontainers.image.title")
VERSION_LABELS = ("io.otaml.model.version", "org.opencontainers.image.version")

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")


class NoMatchingPlatform(OtamlError):
    """The image has no manifest for this device's platform (refused and blocked: retrying cannot help)."""


@dataclass(frozen=True)
class ResolvedImage:
    """A channel digest resolved for one platform: its manifest, labels and layers (bottom to top)."""

    digest: str
    manifest_digest: str
    platform: str
    labels: Mapping[str, str] = field(default_factory=dict)
    layers: tuple[str, ...] = ()
    size: int = 0

    @property
    def model(self) -> str:
        return next((self.labels[k] for k in MODEL_LABELS if self.labels.get(k)), "")

    @property
    def version(self) -> str:
        return next((self.labels[k] for k in VERSION_LABELS if self.labels.get(k)), "")


class ImageSource(Protocol):
    def channel_digest(self) -> str:
        """The digest the channel tag points at now (one HEAD). TemporaryError / NotFound."""
        ...

    def resolve(self, digest: str, platform: str) -> ResolvedImage:
        """Read the index / manifest and config of ``digest``; NoMatchingPlatform, TemporaryError, NotFound."""
        ...


def _platform_of(entry: Mapping[str, Any]) -> str:
    p = entry.get("platform") or {}
    text = f"{p.get('os', '')}/{p.get('architecture', '')}"
    return f"{text}/{p['variant']}" if p.get("variant") else text


def _config_platform(config: Mapping[str, Any]) -> str:
    os_, arch = config.get("os", ""), config.get("architecture", "")
    if not os_ or not arch:
        return ""
    return f"{os_}/{arch}/{config['variant']}" if config.get("variant") else f"{os_}/{arch}"


def pick_platform(index: Mapping[str, Any], platform: str, where: str) -> Mapping[str, Any]:
    """The index entry for ``platform`` (``linux/arm64`` also matches ``linux/arm64/v8``)."""
    entries = [m for m in index.get("manifests", []) if isinstance(m, dict)]
    for entry in entries:
        have = _platform_of(entry)
        if have == platform or have.startswith(platform + "/"):
            return entry
    offered = sorted({_platform_of(m) for m in entries}) or ["none"]
    raise NoMatchingPlatform(
        f"{where} offers platforms {', '.join(offered)} but this device is {platform}. "
        "Bake the image for this platform (registry/bake.py) and promote it again."
    )


class RegistrySource:
    """The channel tag of one repository, read through :class:`edge_runtime.oci.RegistryClient`."""

    reason = "no-platform"

    def __init__(self, client: Any, repository: str, channel: str) -> None:
        self.client = client
        self.repository = repository
        self.channel = channel

    @classmethod
    def connect(cls, url: str, repository: str, channel: str, timeout_s: float) -> RegistrySource:
        from edge_runtime.oci import RegistryClient

        insecure = url.startswith("http://")
        host = url.split("://", 1)[-1].rstrip("/")
        return cls(RegistryClient(host, repository, timeout=timeout_s, insecure=insecure), repository, channel)

    def channel_digest(self) -> str:
        desc = self.client.head_manifest(self.channel)
        if desc is None:
            raise NotFound(
                f"The channel tag {self.repository}:{self.channel} does not exist in the registry. "
                "Promote an image to it, or fix [registry] repository / channel."
            )
        return str(desc.digest)

    def _manifest(self, ref: str) -> tuple[dict[str, Any], str]:
        data, media_type, _ = self.client.get_manifest(ref)
        value = json.loads(data)
        if not isinstance(value, dict):
            raise NotFound(f"Manifest {self.repository}@{ref} is not a JSON object.")
        return value, str(media_type or value.get("mediaType", ""))

    def resolve(self, digest: str, platform: str) -> ResolvedImage:
        where = f"{self.repository}@{digest}"
        manifest, media_type = self._manifest(digest)
        manifest_digest = digest
        if media_type in INDEX_TYPES or "manifests" in manifest:
            entry = pick_platform(manifest, platform, where)
            manifest_digest = str(entry["digest"])
            manifest, _ = self._manifest(manifest_digest)
        config_desc = manifest.get("config") or {}
        config = json.loads(self.client.get_blob(config_desc["digest"], max_bytes=MAX_SMALL_BLOB_BYTES))
        if manifest_digest == digest:
            # A single-platform image (no index): its config says which platform it is for.
            have = _config_platform(config)
            if have and not (have == platform or have.startswith(platform + "/")):
                raise NoMatchingPlatform(
                    f"{where} is a single-platform image for {have} but this device is {platform}. "
                    "Bake the image for this platform (registry/bake.py) and promote it again."
                )
        labels = (config.get("config") or {}).get("Labels") or {}
        layers = manifest.get("layers", [])
        return ResolvedImage(
            digest=digest,
            manifest_digest=manifest_digest,
            platform=platform,
            labels={str(k): str(v) for k, v in labels.items()},
            layers=tuple(str(layer["digest"]) for layer in layers),
            size=int(config_desc.get("size", 0)) + sum(int(layer.get("size", 0)) for layer in layers),
        )
