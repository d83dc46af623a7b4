"""Transformations of images as values (append a layer to a config, pick the runnable entries). No I/O.

The value types themselves (``Blob``, ``Manifest``, ``Index``, descriptors, canonical JSON, parsing) are the
OCI core in :mod:`edge_runtime.oci.types`, shared with the device; they are re-exported here for the writers.
Everything otaml writes is OCI (``application/vnd.oci.image.*``). Docker schema-2 inputs are read too;
``Manifest.as_oci`` maps their config/layer media types to the OCI names (the bytes are the same formats).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from edge_runtime.oci import (
    MANIFEST_TYPES,
    Blob,
    Descriptor,
    Index,
    Manifest,
    Platform,
    canonical_json,
    config_platform,
    is_index,
    parse_index,
    parse_manifest,
)

__all__ = [
    "Blob",
    "Index",
    "Manifest",
    "append_layer",
    "canonical_json",
    "config_platform",
    "is_index",
    "parse_index",
    "parse_manifest",
    "platform_key",
    "runnable",
]


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
