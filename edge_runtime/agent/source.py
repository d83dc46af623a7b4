"""Where candidate images come from: the channel tag in an OCI registry.

:class:`ImageSource` is the seam the update step uses (fakes in unit tests); :class:`RegistrySource`
adapts the registry read client (the device's is :class:`edge_runtime.oci.Urllib3RegistryClient`: urllib3, the
HTTP client python-tuf already loads). The poll is one ``HEAD`` of the channel tag; only a
new digest costs more (index, platform manifest, config blob: a few kB).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_runtime.errors import NotFound, OtamlError
from edge_runtime.oci import (
    INDEX_TYPES,
    LABEL_MODEL_NAME,
    LABEL_MODEL_VERSION,
    MAX_SMALL_BLOB_BYTES,
    Descriptor,
    config_labels,
    load_json,
    parse_manifest,
    select_platform,
)

# Labels the baker writes (registry/bake.py); the OCI standard ones are the fallback.
MODEL_LABELS = (LABEL_MODEL_NAME, "org.opencontainers.image.title")
VERSION_LABELS = (LABEL_MODEL_VERSION, "org.opencontainers.image.version")


class NoMatchingPlatform(OtamlError):
    """The image has no manifest for this device's platform (refused and blocked: retrying cannot help)."""

    reason = "no-platform"


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


def _split(platform: str) -> tuple[str, str, str | None]:
    os_, _, rest = platform.partition("/")
    arch, _, variant = rest.partition("/")
    return os_, arch, variant or None


def _config_platform(config: Mapping[str, Any]) -> str:
    os_, arch, variant = config.get("os", ""), config.get("architecture", ""), config.get("variant")
    if not isinstance(os_, str) or not isinstance(arch, str) or not os_ or not arch:
        return ""
    return f"{os_}/{arch}/{variant}" if isinstance(variant, str) and variant else f"{os_}/{arch}"


def pick_platform(index: Mapping[str, Any], platform: str, where: str) -> Mapping[str, Any]:
    """The index entry for ``platform`` (``linux/arm64`` also matches ``linux/arm64/v8``).

    :class:`NoMatchingPlatform` when there is none, :class:`MalformedContent` when the index breaks the spec.
    """
    os_, arch, variant = _split(platform)
    try:
        desc = select_platform(index, os_, arch, variant)
    except NotFound as exc:
        offered = sorted({str(Descriptor.from_json(m).platform or "none") for m in index.get("manifests") or []})
        raise NoMatchingPlatform(
            f"{where} offers platforms {', '.join(offered) or 'none'} but this device is {platform}. "
            "Bake the image for this platform (registry/bake.py) and promote it again."
        ) from exc
    return next(m for m in index["manifests"] if m.get("digest") == desc.digest)


class RegistrySource:
    """The channel tag of one repository, read through an :class:`edge_runtime.oci.RegistryReader`.

    Everything it reads is unverified: a malformed document is :class:`MalformedContent`, never a crash.
    """

    def __init__(self, client: Any, repository: str, channel: str) -> None:
        self.client = client
        self.repository = repository
        self.channel = channel

    @classmethod
    def connect(
        cls, url: str, repository: str, channel: str, timeout_s: float, token_hosts: tuple[str, ...] = ()
    ) -> RegistrySource:
        from edge_runtime.oci.urllib3_client import Urllib3RegistryClient

        insecure = url.startswith("http://")
        host = url.split("://", 1)[-1].rstrip("/")
        client = Urllib3RegistryClient(host, repository, timeout=timeout_s, insecure=insecure, token_hosts=token_hosts)
        return cls(client, repository, channel)

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
        value = load_json(data, f"manifest {self.repository}@{ref}")
        declared = value.get("mediaType", "")
        return value, str(media_type or (declared if isinstance(declared, str) else ""))

    def resolve(self, digest: str, platform: str) -> ResolvedImage:
        where = f"{self.repository}@{digest}"
        manifest, media_type = self._manifest(digest)
        manifest_digest = digest
        if media_type in INDEX_TYPES or "manifests" in manifest:
            manifest_digest = Descriptor.from_json(pick_platform(manifest, platform, where)).digest
            manifest, _ = self._manifest(manifest_digest)
        parsed = parse_manifest(manifest, f"manifest {self.repository}@{manifest_digest}")
        config_desc, layer_descs = parsed.config, parsed.layers
        config = load_json(
            self.client.get_blob(config_desc.digest, max_bytes=MAX_SMALL_BLOB_BYTES),
            f"image config {self.repository}@{config_desc.digest}",
        )
        if manifest_digest == digest:
            # A single-platform image (no index): its config says which platform it is for.
            have = _config_platform(config)
            if have and not (have == platform or have.startswith(platform + "/")):
                raise NoMatchingPlatform(
                    f"{where} is a single-platform image for {have} but this device is {platform}. "
                    "Bake the image for this platform (registry/bake.py) and promote it again."
                )
        return ResolvedImage(
            digest=digest,
            manifest_digest=manifest_digest,
            platform=platform,
            labels=config_labels(config),
            layers=tuple(layer.digest for layer in layer_descs),
            size=config_desc.size + sum(layer.size for layer in layer_descs),
        )
