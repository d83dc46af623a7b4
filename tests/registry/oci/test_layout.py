from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_runtime.errors import NotFound, VerificationFailed
from edge_runtime.oci import OCI_INDEX, select_platform
from registry.oci.layout import Layout
from tests.registry.oci.fakes import sha, write_fake_base


def test_write_and_read_back_blobs_manifests_and_tags(tmp_path: Path) -> None:
    layout = write_fake_base(tmp_path / "base")
    assert json.loads((tmp_path / "base" / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert layout.tags() == ["base"]
    data, media_type, digest = Layout(tmp_path / "base").read_manifest("base")
    assert media_type == OCI_INDEX
    assert digest == sha(data)
    arm = select_platform(data, "linux", "arm64")
    assert layout.resolve(arm.digest) is not None
    assert layout.write_blob(b"x", sha(b"x")) == 1
    assert layout.write_blob(b"x", sha(b"x")) == 0  # already there


def test_retag_replaces_the_entry(tmp_path: Path) -> None:
    layout = write_fake_base(tmp_path / "l")
    index_data, media_type, _ = layout.read_manifest("base")
    layout.write_manifest(index_data, media_type, "prod")
    layout.write_manifest(b'{"mediaType":"%s","manifests":[]}' % OCI_INDEX.encode(), OCI_INDEX, "prod")
    assert layout.tags() == ["base", "prod"]
    assert len(json.loads((tmp_path / "l" / "index.json").read_text())["manifests"]) == 2


def test_missing_things_raise_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="not an OCI image layout"):
        Layout(tmp_path / "nope")
    layout = write_fake_base(tmp_path / "l")
    with pytest.raises(NotFound, match="tags: base"):
        layout.read_manifest("v9")
    digest = sha(b"hello")
    layout.write_blob(b"hello", digest)
    (tmp_path / "l" / "blobs" / "sha256" / digest.split(":")[1]).chmod(0o644)
    (tmp_path / "l" / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(b"tampered")
    with pytest.raises(VerificationFailed):
        layout.read_blob(digest)
