"""Bake a model bundle into the runtime image: one new layer per platform, a new index, tags.

``bake(base, bundle_dir, to)`` reads the base image (an index or a bare manifest) from a registry or an
OCI layout, appends the same reproducible layer holding the bundle at ``/opt/model`` to every platform,
records labels (model name, version, bundle digest, MLflow run, detector) in each config and as
annotations on each manifest and the index, and writes everything to ``to``. The result is always an
index, even for a single-platform base, so devices resolve every model image the same way.

Nothing reads a clock: the same bundle on the same base gives the same digests. Blobs the destination
already has are not sent (HEAD first), so re-baking or baking v2 on the same base uploads only the new
layer, config and manifests. ``model-v<N>`` tags are immutable (:class:`TagConflict` unless ``force``);
channel tags are moved with :func:`tag`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from edge_runtime.bundle import MODEL_JSON, ModelCard, bundle_digest, load_bundle
from edge_runtime.errors import InputError, OtamlError
from edge_runtime.oci import (
    LABEL_BUNDLE_DIGEST,
    LABEL_DETECTOR,
    LABEL_MLFLOW_RUN_ID,
    LABEL_MODEL_NAME,
    LABEL_MODEL_VERSION,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    Descriptor,
    load_json,
)
from registry.oci.errors import TagConflict, doing
from registry.oci.image import (
    Blob,
    Index,
    Manifest,
    append_layer,
    canonical_json,
    config_platform,
    is_index,
    parse_index,
    parse_manifest,
    platform_key,
    runnable,
)
from registry.oci.layer import Layer, build_layer
from registry.oci.refs import Ref, close_store, open_store, parse_ref
from registry.oci.store import Store

IMMUTABLE_TAG = re.compile(r"^model-v\d+$")
BUNDLE_PREFIX = "opt/model"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class PlatformImage:
    """One platform's model image inside the index."""

    platform: str
    manifest_digest: str
    manifest_size: int
    config_digest: str
    base_manifest_digest: str


@dataclass(frozen=True)
class BakeResult:
    """What ``bake`` wrote. ``reference`` pins the index by digest (``host/repo@sha256:...``)."""

    reference: str
    index_digest: str
    index_size: int
    manifests: tuple[PlatformImage, ...]
    layer_digest: str
    layer_size: int
    diff_id: str
    bundle_digest: str
    bytes_uploaded: int
    tags: tuple[str, ...]
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """The index digest: what devices pull, what is signed, what channel tags point at."""
        return self.index_digest

    def manifest_for(self, platform: str) -> PlatformImage:
        for image in self.manifests:
            if image.platform == platform:
                return image
        raise KeyError(f"no {platform} image in this bake (have {[m.platform for m in self.manifests]})")


def model_labels(card: ModelCard, digest: str) -> dict[str, str]:
    """The labels a model image carries (also used as manifest and index annotations)."""
    labels = {
        LABEL_MODEL_NAME: card.name,
        LABEL_MODEL_VERSION: str(card.version),
        LABEL_BUNDLE_DIGEST: digest,
        LABEL_DETECTOR: card.detector,
        LABEL_MLFLOW_RUN_ID: card.mlflow.get("run_id", ""),
        "org.opencontainers.image.title": f"otaml-runtime {card.name}",
        "org.opencontainers.image.version": str(card.version),
        "org.opencontainers.image.description": f"otaml edge runtime with model {card.name} v{card.version} "
        f"({card.detector}) at /{BUNDLE_PREFIX}",
    }
    if card.created_at:
        labels["org.opencontainers.image.created"] = card.created_at
    return labels


def bundle_layer(bundle_dir: Path) -> tuple[Layer, ModelCard, str]:
    """Validate the bundle and build its layer: ``(layer, card, bundle digest)``."""
    bundle = load_bundle(bundle_dir)
    files = {MODEL_JSON: (bundle.path / MODEL_JSON).read_bytes()}
    files[bundle.card.onnx.file] = bundle.onnx_path.read_bytes()
    return build_layer(files, BUNDLE_PREFIX), bundle.card, bundle_digest(bundle.path)


def check_tag_move(store: Store, tag: str, digest: str, force: bool) -> None:
    """Refuse to point an immutable tag at different content (TagConflict) unless ``force``."""
    if not IMMUTABLE_TAG.match(tag) or force:
        return
    existing = store.resolve(tag)
    if existing is not None and existing.digest != digest:
        raise TagConflict(
            f"tag {tag} in {store.describe()} already names {existing.digest}; model-v<N> tags are immutable, "
            f"so it will not be moved to {digest}. Bake a new version (model-v<N+1>), or pass --force "
            "if the old image was never released"
        )


def _default_ref(store: Store, ref: Ref) -> str:
    if ref.ref:
        return ref.ref
    tags = store.tags()
    if len(tags) == 1:
        return tags[0]
    raise InputError(f"REF {ref.text!r} names no tag and {store.describe()} has tags {tags}: add :TAG to the REF")


@dataclass
class _Planned:
    blobs: list[tuple[Blob | Descriptor, str]]  # a blob to write, or a base blob to copy; + label for progress
    manifest: Blob
    image: PlatformImage


def bake(
    base: str,
    bundle_dir: Path,
    to: str,
    tag: str | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
    auth: tuple[str, str] | None = None,
    base_auth: tuple[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
    chunk_size: int | None = None,
) -> BakeResult:
    """Bake ``bundle_dir`` onto every platform of ``base`` and write the result to ``to``.

    ``base`` and ``to`` are REFs (``HOST:PORT/REPO[:TAG]`` or ``oci:PATH[:TAG]``). Tags written: the
    tag in ``to`` and/or ``tag``; when neither is given, ``model-v<version>`` from the bundle's card.
    ``auth`` is for ``to``; ``base_auth`` for ``base`` (defaults to ``auth`` on the same registry).
    """
    say = progress or (lambda _msg: None)
    base_ref, to_ref = parse_ref(base), parse_ref(to)
    if to_ref.digest:
        raise InputError(f"--to {to!r} names a digest; name a repository (and optionally a tag) to write to")

    with doing(f"reading bundle {bundle_dir}"):
        layer, card, digest = bundle_layer(Path(bundle_dir))
    tags = tuple(dict.fromkeys(t for t in (to_ref.tag, tag) if t)) or (f"model-v{card.version}",)
    labels = model_labels(card, digest)
    say(f"bundle {card.name} v{card.version} ({digest[:19]}…): layer {layer.digest[:19]}… {layer.size} bytes")

    same_registry = base_ref.registry is not None and base_ref.registry == to_ref.registry
    if base_auth is None and same_registry:
        base_auth = auth
    src = open_store(base_ref, auth=base_auth, transport=transport)
    dst = (
        src
        if base_ref.same_place(to_ref)
        else open_store(to_ref, auth=auth, transport=transport, create=True, chunk_size=chunk_size)
    )
    try:
        with doing(f"reading base image {base}"):
            base_data, base_type, base_digest = src.read_manifest(_default_ref(src, base_ref))
            plans = _plan(src, base_data, base_type, base_digest, layer, labels, card, base)
        index = Index(
            tuple(p.manifest.descriptor for p in plans),
            annotations={**labels, "org.opencontainers.image.base.digest": base_digest},
        )
        index_blob = index.blob()
        for t in tags:
            check_tag_move(dst, t, index_blob.descriptor.digest, force)

        mount_from = base_ref.repository if same_registry and not base_ref.same_place(to_ref) else None
        uploaded = 0
        for plan in plans:
            for item, what in plan.blobs:
                uploaded += _put_blob(src, dst, item, what, mount_from, say, plan.image.platform)
            with doing(f"pushing {plan.image.platform} manifest"):
                dst.write_manifest(plan.manifest.data, plan.manifest.descriptor.media_type)
        for t in tags:
            with doing(f"tagging {dst.describe()}:{t}"):
                dst.write_manifest(index_blob.data, index_blob.descriptor.media_type, t)
            say(f"tag {t} -> {index_blob.descriptor.digest}")
    finally:
        close_store(src)
        if dst is not src:
            close_store(dst)

    return BakeResult(
        reference=f"{to_ref.location()}@{index_blob.descriptor.digest}",
        index_digest=index_blob.descriptor.digest,
        index_size=index_blob.descriptor.size,
        manifests=tuple(p.image for p in plans),
        layer_digest=layer.digest,
        layer_size=layer.size,
        diff_id=layer.diff_id,
        bundle_digest=digest,
        bytes_uploaded=uploaded,
        tags=tags,
        labels=labels,
    )


def _plan(
    src: Store,
    base_data: bytes,
    base_type: str,
    base_digest: str,
    layer: Layer,
    labels: dict[str, str],
    card: ModelCard,
    base: str,
) -> list[_Planned]:
    """Build every new config and manifest in memory (nothing is written yet)."""
    if is_index(base_type):
        entries = runnable(parse_index(base_data, f"base index {base}").manifests)
        if not entries:
            raise OtamlError(f"base index {base} lists no runnable platform images")
        bases = [(d, src.read_manifest(d.digest)[0]) for d in entries]
    else:
        bases = [(Descriptor(base_type, base_digest, len(base_data)), base_data)]

    layer_desc = Descriptor(OCI_LAYER_GZIP, layer.digest, layer.size)
    plans = []
    for desc, data in bases:
        manifest = parse_manifest(data, f"base manifest {desc.digest}").as_oci()
        config = load_json(src.read_blob(manifest.config.digest), f"base config {manifest.config.digest}")
        platform = desc.platform or config_platform(config)
        new_config = append_layer(
            config,
            layer.diff_id,
            labels={**labels, "org.opencontainers.image.base.digest": desc.digest},
            created_by=f"otaml bake: COPY bundle /{BUNDLE_PREFIX}",
            comment=f"model {card.name} v{card.version} bundle {labels[LABEL_BUNDLE_DIGEST]}",
            created=card.created_at or None,
        )
        config_blob = Blob.of(canonical_json(new_config), OCI_CONFIG)
        new_manifest = Manifest(config_blob.descriptor, (*manifest.layers, layer_desc), annotations=labels)
        manifest_blob = new_manifest.blob(platform)
        blobs: list[tuple[Blob | Descriptor, str]] = [
            (d, f"base layer {i + 1}/{len(manifest.layers)}") for i, d in enumerate(manifest.layers)
        ]
        blobs += [(Blob(layer.data, layer_desc), "model layer"), (config_blob, "config")]
        image = PlatformImage(
            platform=platform_key(platform),
            manifest_digest=manifest_blob.descriptor.digest,
            manifest_size=manifest_blob.descriptor.size,
            config_digest=config_blob.descriptor.digest,
            base_manifest_digest=desc.digest,
        )
        plans.append(_Planned(blobs, manifest_blob, image))
    return plans


def _put_blob(
    src: Store,
    dst: Store,
    item: Blob | Descriptor,
    what: str,
    mount_from: str | None,
    say: Progress,
    platform: str,
) -> int:
    desc = item.descriptor if isinstance(item, Blob) else item
    if dst.has_blob(desc.digest):
        say(f"{platform}: {what} {desc.digest[:19]}… already present")
        return 0
    if isinstance(item, Blob):
        data = item.data
    else:
        with doing(f"reading base blob {desc.digest}"):
            data = src.read_blob(desc.digest)
    sent = dst.write_blob(data, desc.digest, mount_from=mount_from)
    say(f"{platform}: {what} {desc.digest[:19]}… " + (f"uploaded {sent} bytes" if sent else "mounted"))
    return sent


def tag(
    ref: str,
    new_tag: str,
    *,
    force: bool = False,
    auth: tuple[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> str:
    """Point ``new_tag`` (e.g. a channel tag such as ``production``) at what ``ref`` names; return its digest.

    ``ref`` is a REF with a tag or digest. Immutable ``model-v<N>`` tags are not moved unless ``force``.
    """
    parsed = parse_ref(ref)
    if not parsed.ref:
        raise InputError(f"REF {ref!r} names no tag or digest: say which image to tag, e.g. REPO:model-v3")
    store = open_store(parsed, auth=auth, transport=transport)
    try:
        with doing(f"tagging {ref} as {new_tag}"):
            data, media_type, digest = store.read_manifest(parsed.ref)
            check_tag_move(store, new_tag, digest, force)
            store.write_manifest(data, media_type, new_tag)
    finally:
        close_store(store)
    return digest
