from __future__ import annotations

from typing import Any

import pytest

from edge_runtime.errors import OtamlError
from edge_runtime.oci import DOCKER_LAYER_GZIP, DOCKER_MANIFEST, OCI_LAYER_GZIP, OCI_MANIFEST, Descriptor, Platform
from registry.oci.image import (
    Index,
    Manifest,
    append_layer,
    canonical_json,
    parse_index,
    parse_manifest,
    runnable,
)

D = "sha256:" + "a" * 64
E = "sha256:" + "b" * 64


def test_canonical_json_is_independent_of_key_order() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == b'{"a":[1,{"c":3,"d":2}],"b":1}'


def test_manifest_round_trips_and_digest_is_stable() -> None:
    m = Manifest(Descriptor("application/vnd.oci.image.config.v1+json", D, 10), (Descriptor(OCI_LAYER_GZIP, E, 5),))
    blob = m.blob(Platform("linux", "arm64"))
    assert parse_manifest(blob.data) == m
    assert blob.descriptor.digest == m.blob().descriptor.digest
    assert blob.descriptor.platform == Platform("linux", "arm64")


def test_docker_manifest_is_converted_to_oci_media_types() -> None:
    data = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": D, "size": 1},
            "layers": [{"mediaType": DOCKER_LAYER_GZIP, "digest": E, "size": 2}],
        }
    )
    oci = parse_manifest(data).as_oci()
    assert oci.media_type == OCI_MANIFEST
    assert oci.config.media_type == "application/vnd.oci.image.config.v1+json"
    assert oci.layers[0].media_type == OCI_LAYER_GZIP


def test_parse_manifest_rejects_an_index() -> None:
    with pytest.raises(OtamlError, match="not an image manifest"):
        parse_manifest(Index(()).blob().data)


def test_index_keeps_platforms_and_runnable_drops_attestations() -> None:
    index = Index(
        (
            Descriptor(OCI_MANIFEST, D, 1, Platform("linux", "amd64")),
            Descriptor(OCI_MANIFEST, E, 1, Platform("unknown", "unknown")),
        )
    )
    parsed = parse_index(index.blob().data)
    assert [str(d.platform) for d in runnable(parsed.manifests)] == ["linux/amd64"]


def test_append_layer_adds_diff_id_history_and_labels_without_touching_input() -> None:
    config: dict[str, Any] = {
        "os": "linux",
        "architecture": "arm64",
        "rootfs": {"type": "layers", "diff_ids": [D]},
        "config": {},
    }
    new = append_layer(config, E, labels={"k": "v"}, created_by="otaml bake", created="2026-01-01T00:00:00Z")
    assert new["rootfs"]["diff_ids"] == [D, E]
    assert new["history"][-1]["created_by"] == "otaml bake"
    assert new["config"] == {"Labels": {"k": "v"}}
    assert new["created"] == "2026-01-01T00:00:00Z"
    assert config["rootfs"]["diff_ids"] == [D]  # pure
