from __future__ import annotations

import httpx
import pytest

from edge_runtime.errors import NotFound, OtamlError, TemporaryError
from edge_runtime.oci import OCI_INDEX, RegistryClient
from registry.oci.remote import Remote
from tests.registry.oci.fakes import FakeRegistry, sha


def remote(fake: FakeRegistry, repo: str = "otaml/runtime", chunk_size: int | None = None) -> Remote:
    return Remote(RegistryClient("127.0.0.1:5000", repo, transport=fake.transport()), chunk_size=chunk_size)


def test_monolithic_upload_then_head_skips() -> None:
    fake = FakeRegistry()
    r = remote(fake)
    data = b"layer" * 100
    assert r.write_blob(data, sha(data)) == len(data)
    assert fake.blobs["otaml/runtime"][sha(data)] == data
    assert r.write_blob(data, sha(data)) == 0
    assert fake.requests[-1] == ("HEAD", f"/v2/otaml/runtime/blobs/{sha(data)}")


def test_chunked_upload_sends_every_chunk() -> None:
    fake = FakeRegistry()
    data = bytes(range(256)) * 10
    assert remote(fake, chunk_size=1000).write_blob(data, sha(data)) == len(data)
    assert [m for m, _ in fake.requests].count("PATCH") == 3
    assert fake.blobs["otaml/runtime"][sha(data)] == data


def test_cross_repository_mount_uploads_nothing() -> None:
    fake = FakeRegistry()
    data = b"base layer"
    fake.blobs["otaml/base"] = {sha(data): data}
    assert remote(fake).write_blob(data, sha(data), mount_from="otaml/base") == 0
    assert fake.blob_bytes_received == 0
    assert sha(data) in fake.blobs["otaml/runtime"]


def test_manifest_put_tags_and_listing() -> None:
    fake = FakeRegistry()
    r = remote(fake)
    index = b'{"mediaType":"%s","manifests":[],"schemaVersion":2}' % OCI_INDEX.encode()
    assert r.write_manifest(index, OCI_INDEX, "model-v1") == sha(index)
    assert r.resolve("model-v1").digest == sha(index)  # type: ignore[union-attr]
    assert r.read_manifest("model-v1") == (index, OCI_INDEX, sha(index))
    assert r.tags() == ["model-v1"]
    assert r.resolve("model-v2") is None


def test_errors_are_wrapped_with_a_gerund_and_keep_their_type() -> None:
    fake = FakeRegistry()
    fake.fail = lambda req: httpx.Response(503) if req.method == "POST" else None
    data = b"x"
    with pytest.raises(TemporaryError, match=rf"^pushing blob {sha(data)}: POST .* 503"):
        remote(fake).write_blob(data, sha(data))
    with pytest.raises(NotFound, match=r"^reading blob"):
        remote(fake).read_blob(sha(b"missing"))


def test_mislabelled_blob_is_refused_before_sending() -> None:
    fake = FakeRegistry()
    with pytest.raises(OtamlError, match="hash to"):
        remote(fake).write_blob(b"abc", sha(b"abd"))
    assert fake.requests == []
