from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import httpx
import pytest

from edge_runtime import oci
from edge_runtime.errors import NotFound, OtamlError, TemporaryError, VerificationFailed, reason_of
from edge_runtime.oci import (
    MAX_ERROR_BODY_BYTES,
    MAX_MANIFEST_BYTES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    ForbiddenHost,
    RegistryAuthError,
    RegistryClient,
    base_url_for,
    config_labels,
    parse_reference,
    select_platform,
    sha256_digest,
)

DIGEST = "sha256:" + "0" * 64


def client(handler: object, **kwargs: object) -> RegistryClient:
    return RegistryClient("127.0.0.1:5000", "otaml/runtime", transport=httpx.MockTransport(handler), **kwargs)  # type: ignore[arg-type]


def test_parse_reference_forms() -> None:
    ref = parse_reference("127.0.0.1:5000/otaml/runtime:model-v3")
    assert (ref.registry, ref.repository, ref.tag, ref.ref) == (
        "127.0.0.1:5000",
        "otaml/runtime",
        "model-v3",
        "model-v3",
    )
    pinned = parse_reference(f"reg.example.com/a/b@{DIGEST}")
    assert pinned.ref == DIGEST
    assert str(pinned) == f"reg.example.com/a/b@{DIGEST}"
    assert parse_reference("localhost:5000/x").ref == "latest"
    with pytest.raises(OtamlError, match="no registry host"):
        parse_reference("otaml/runtime:v1")
    with pytest.raises(OtamlError, match="invalid"):
        parse_reference("127.0.0.1:5000/Upper/Case")


def test_plain_http_only_for_loopback_or_insecure() -> None:
    assert base_url_for("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert base_url_for("localhost:5000") == "http://localhost:5000"
    assert base_url_for("registry.example.com") == "https://registry.example.com"
    assert base_url_for("10.0.0.5:5000", insecure=True) == "http://10.0.0.5:5000"


def test_select_platform_and_labels() -> None:
    index = {
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": DIGEST,
                "size": 1,
                "platform": {"os": "linux", "architecture": "amd64"},
            },
            {
                "mediaType": OCI_MANIFEST,
                "digest": "sha256:" + "1" * 64,
                "size": 1,
                "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
            },
        ],
    }
    assert select_platform(index, "linux", "arm64").digest.endswith("1" * 64)
    with pytest.raises(NotFound, match=r"no linux/riscv64 manifest \(it has: linux/amd64, linux/arm64/v8\)"):
        select_platform(index, "linux", "riscv64")
    assert config_labels(b'{"config": {"Labels": {"a": "b"}}}') == {"a": "b"}
    assert config_labels(b'{"config": {}}') == {}


@pytest.mark.parametrize(
    ("status", "error", "text"),
    [
        (404, NotFound, "not found"),
        (401, RegistryAuthError, "check the registry credentials"),
        (403, RegistryAuthError, "check the registry credentials"),
        (429, TemporaryError, "retry later"),
        (503, TemporaryError, "retry later"),
        (400, OtamlError, "MANIFEST_INVALID"),
        (415, OtamlError, "415"),
    ],
)
def test_status_codes_map_to_the_error_tree(status: int, error: type[Exception], text: str) -> None:
    body = {"errors": [{"code": "MANIFEST_INVALID", "message": "bad"}]}
    with client(lambda _r: httpx.Response(status, json=body)) as c, pytest.raises(error, match=text):
        c.get_manifest("model-v1")


def test_connection_errors_are_temporary() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with client(refuse) as c, pytest.raises(TemporaryError, match="is the registry up"):
        c.head_manifest("production")


def test_head_manifest_returns_descriptor_or_none() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/production"):
            headers = {"Docker-Content-Digest": DIGEST, "Content-Type": OCI_INDEX, "Content-Length": "42"}
            return httpx.Response(200, headers=headers)
        return httpx.Response(404)

    with client(handler) as c:
        desc = c.head_manifest("production")
        assert desc is not None
        assert (desc.digest, desc.size, desc.media_type) == (DIGEST, 42, OCI_INDEX)
        assert c.head_manifest("staging") is None


def test_blob_digest_is_verified() -> None:
    with client(lambda _r: httpx.Response(200, content=b"evil")) as c, pytest.raises(VerificationFailed):
        c.get_blob(sha256_digest(b"good"))
    with client(lambda _r: httpx.Response(200, content=b"good")) as c:
        assert c.get_blob(sha256_digest(b"good")) == b"good"


def test_bearer_challenge_gets_a_token_with_basic_credentials() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example.com":
            assert request.headers["authorization"].startswith("Basic ")
            assert request.url.params["scope"] == "repository:otaml/runtime:pull"
            return httpx.Response(200, json={"token": "T0K"})
        seen.append(request.headers.get("authorization"))
        if request.headers.get("authorization") != "Bearer T0K":
            challenge = (
                'Bearer realm="https://auth.example.com/token",service="reg",scope="repository:otaml/runtime:pull"'
            )
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return httpx.Response(200, content=b"{}", headers={"Content-Type": OCI_MANIFEST})

    with client(handler, auth=("u", "p"), token_hosts=("auth.example.com",)) as c:
        c.get_manifest("v1")
        c.get_manifest("v2")  # the token is reused
    assert seen == [None, "Bearer T0K", "Bearer T0K"]
    # Without the allow-list the credentials never leave for another host.
    seen.clear()
    with client(handler, auth=("u", "p")) as c, pytest.raises(ForbiddenHost, match=r"'auth\.example\.com'") as caught:
        c.get_manifest("v1")
    assert seen == [None]
    assert reason_of(caught.value) == "forbidden-host"


def test_basic_challenge_without_credentials_says_so() -> None:
    handler = lambda _r: httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})  # noqa: E731
    with client(handler) as c, pytest.raises(RegistryAuthError, match="needs credentials"):
        c.get_manifest("v1")


def test_tampered_manifest_by_digest_is_refused() -> None:
    handler = lambda _r: httpx.Response(200, content=b"{}", headers={"Content-Type": OCI_MANIFEST})  # noqa: E731
    with client(handler) as c, pytest.raises(VerificationFailed):
        c.get_manifest(DIGEST)


class Endless:
    """A response body that counts what the client pulled: proves a cap stops reading early."""

    CHUNK = b"x" * (256 * 1024)

    def __init__(self, total: int = 64 * 1024 * 1024) -> None:
        self.total = total
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        while self.pulled < self.total:
            self.pulled += len(self.CHUNK)
            yield self.CHUNK


def test_oversized_manifest_is_refused_while_streaming() -> None:
    body = Endless()
    with client(lambda _r: httpx.Response(200, content=body)) as c, pytest.raises(OtamlError, match="limit") as info:
        c.get_manifest("production")
    assert not isinstance(info.value, (VerificationFailed, TemporaryError))
    assert body.pulled <= MAX_MANIFEST_BYTES + len(Endless.CHUNK)


def test_declared_oversized_manifest_is_refused_before_reading() -> None:
    body = Endless()
    headers = {"Content-Length": str(MAX_MANIFEST_BYTES + 1)}
    refused = pytest.raises(OtamlError, match=f"{MAX_MANIFEST_BYTES + 1} bytes, over the")
    with client(lambda _r: httpx.Response(200, headers=headers, content=body)) as c, refused:
        c.get_manifest("production")
    assert body.pulled == 0


def test_blob_max_bytes_caps_what_is_read() -> None:
    body = Endless()
    with client(lambda _r: httpx.Response(200, content=body)) as c, pytest.raises(OtamlError, match="1000-byte"):
        c.get_blob(DIGEST, max_bytes=1000)
    assert body.pulled == len(Endless.CHUNK)
    data = b"x" * 1000
    with client(lambda _r: httpx.Response(200, content=data)) as c:
        assert c.get_blob(sha256_digest(data), max_bytes=1000) == data
        assert c.get_blob(sha256_digest(data)) == data  # no cap by default (layers)


def test_image_labels_caps_the_config_blob(monkeypatch: pytest.MonkeyPatch) -> None:
    config = json.dumps({"config": {"Labels": {"a": "b"}}, "pad": "x" * 2000}).encode()
    manifest = json.dumps(
        {"mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": 1}}
    ).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        if "/manifests/" in request.url.path:
            return httpx.Response(200, headers={"Content-Type": OCI_MANIFEST}, content=manifest)
        return httpx.Response(200, content=config)

    with client(handler) as c:
        assert c.image_labels("production") == {"a": "b"}
        monkeypatch.setattr(oci.client, "MAX_SMALL_BLOB_BYTES", 1000)
        with pytest.raises(OtamlError, match="1000-byte limit"):
            c.image_labels("production")


def test_endless_error_body_is_read_only_in_part() -> None:
    body = Endless()
    with client(lambda _r: httpx.Response(503, content=body)) as c, pytest.raises(TemporaryError, match="503"):
        c.get_blob(DIGEST)
    assert body.pulled <= MAX_ERROR_BODY_BYTES + len(Endless.CHUNK)


def test_compressed_error_body_of_a_streamed_request_is_reported() -> None:
    errors = json.dumps({"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]}).encode()
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    not_found = pytest.raises(NotFound, match="BLOB_UNKNOWN: blob unknown")
    with client(lambda _r: httpx.Response(404, headers=headers, content=gzip.compress(errors))) as c, not_found:
        c.get_blob(DIGEST)


def test_a_redirect_from_https_to_plain_http_is_refused() -> None:
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        if request.url.scheme == "https":
            return httpx.Response(307, headers={"Location": f"http://cdn.example.com/{DIGEST}"})
        return httpx.Response(200, content=b"{}")

    c = RegistryClient("reg.example.com", "otaml/runtime", transport=httpx.MockTransport(handler))
    with c, pytest.raises(ForbiddenHost, match="from https to plain http") as caught:
        c.get_blob(DIGEST, max_bytes=1000)
    assert reason_of(caught.value) == "forbidden-host"
    assert asked == [f"https://reg.example.com/v2/otaml/runtime/blobs/{DIGEST}"]  # the http URL is never asked


def test_an_https_registry_never_sends_credentials_to_a_plain_http_realm() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            raise AssertionError("the token endpoint must not be asked")
        challenge = 'Bearer realm="http://reg.example.com/token",service="reg"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    c = RegistryClient("reg.example.com", "otaml/runtime", transport=httpx.MockTransport(handler), auth=("u", "p"))
    with c, pytest.raises(ForbiddenHost, match="plain-http token realm"):
        c.get_manifest("v1")


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"[1, 2]", "malformed-image"), (b'{"token": 7}', "malformed-image"), (b"\xff\xfe", "malformed-image")],
    ids=["array", "token-not-a-string", "not-json"],
)
def test_a_malformed_token_response_is_refused_with_its_reason(body: bytes, reason: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(200, content=body)
        challenge = 'Bearer realm="http://127.0.0.1:5000/token",service="reg"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    with client(handler) as c, pytest.raises(OtamlError) as caught:
        c.get_manifest("v1")
    assert reason_of(caught.value) == reason
