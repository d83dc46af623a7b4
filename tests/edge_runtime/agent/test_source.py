"""Resolving the channel's image for this device's platform (the registry client is faked at its I/O seam)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from edge_runtime.agent.source import NoMatchingPlatform, RegistrySource
from edge_runtime.errors import reason_of

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class Client:
    def __init__(self, platforms: list[tuple[str, str]], plain: bool) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.blobs: dict[str, bytes] = {}
        entries = []
        for i, (os_, arch) in enumerate(platforms):
            config = json.dumps({"os": os_, "architecture": arch, "config": {"Labels": {"v": str(i)}}}).encode()
            config_digest = _digest(config)
            self.blobs[config_digest] = config
            config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest}
            manifest = json.dumps({"config": {**config_desc, "size": len(config)}, "layers": []}).encode()
            self.objects[_digest(manifest)] = (manifest, MANIFEST)
            entries.append(
                {
                    "mediaType": MANIFEST,
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "platform": {"os": os_, "architecture": arch},
                }
            )
        self.first = entries[0]["digest"]
        if plain:
            self.top = self.first
        else:
            index = json.dumps({"manifests": entries}).encode()
            self.top = _digest(index)
            self.objects[self.top] = (index, INDEX)

    def get_manifest(self, ref: str) -> tuple[bytes, str, Any]:
        data, media_type = self.objects[ref]
        return data, media_type, None

    def get_blob(self, digest: str, max_bytes: int = 0) -> bytes:
        return self.blobs[digest]


@pytest.mark.parametrize("plain", [False, True], ids=["index", "single-platform manifest"])
def test_an_image_for_this_platform_resolves(plain: bool) -> None:
    client = Client([("linux", "amd64"), ("linux", "arm64")], plain)
    image = RegistrySource(client, "pump", "prod").resolve(client.top, "linux/amd64")
    assert image.labels == {"v": "0"}
    assert image.manifest_digest == client.first


@pytest.mark.parametrize("plain", [False, True], ids=["index", "single-platform manifest"])
def test_an_image_without_this_platform_is_refused_naming_both(plain: bool) -> None:
    client = Client([("linux", "arm64")], plain)
    with pytest.raises(NoMatchingPlatform, match=r"linux/arm64.*this device is linux/amd64") as caught:
        RegistrySource(client, "pump", "prod").resolve(client.top, "linux/amd64")
    assert reason_of(caught.value) == "no-platform"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
