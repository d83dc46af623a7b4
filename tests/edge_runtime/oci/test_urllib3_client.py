"""The device's registry client over a real HTTP server: what its transport adds to the shared core (the
hostile-registry suite in tests/edge_runtime/agent runs every attack against it too)."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest

from edge_runtime.errors import MalformedContent, NotFound, RegistryUnavailable, reason_of
from edge_runtime.oci import OCI_MANIFEST, Urllib3RegistryClient, sha256_digest
from otaml.ports import free_port

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST}).encode()
ANSWERS: dict[str, tuple[int, dict[str, str], bytes]] = {
    "/v2/r/manifests/v1": (200, {"Content-Type": OCI_MANIFEST}, MANIFEST),
    "/v2/r/manifests/gz": (200, {"Content-Type": OCI_MANIFEST, "Content-Encoding": "gzip"}, gzip.compress(MANIFEST)),
    "/v2/r/manifests/bad-gzip": (200, {"Content-Type": OCI_MANIFEST, "Content-Encoding": "gzip"}, b"not gzip" * 8),
    "/v2/r/manifests/gone": (
        404,
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        gzip.compress(json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "gone"}]}).encode()),
    ),
}


ASKED: list[str] = []  # request targets as the server saw them (absolute when it was asked as a proxy)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        ASKED.append(self.path)
        status, headers, body = ANSWERS.get(urlsplit(self.path).path, (404, {}, b"{}"))
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def registry() -> Iterator[str]:
    ASKED.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_reads_a_manifest_plain_and_gzip_encoded(registry: str) -> None:
    with Urllib3RegistryClient(registry, "r") as client:
        for ref in ("v1", "gz"):
            data, media_type, digest = client.get_manifest(ref)
            assert (data, media_type, digest) == (MANIFEST, OCI_MANIFEST, sha256_digest(MANIFEST))


def test_a_body_that_does_not_decode_is_malformed(registry: str) -> None:
    with Urllib3RegistryClient(registry, "r") as client, pytest.raises(MalformedContent) as caught:
        client.get_manifest("bad-gzip")
    assert reason_of(caught.value) == "malformed-image"
    assert "Content-Encoding does not decode" in str(caught.value)


def test_a_compressed_error_body_names_the_registry_error(registry: str) -> None:
    with Urllib3RegistryClient(registry, "r") as client, pytest.raises(NotFound, match="MANIFEST_UNKNOWN: gone"):
        client.get_manifest("gone")


def test_a_registry_that_is_down_is_a_temporary_error() -> None:
    down = Urllib3RegistryClient(f"127.0.0.1:{free_port()}", "r", timeout=2)
    with down, pytest.raises(RegistryUnavailable, match="is the registry up") as caught:
        down.head_manifest("v1")
    assert reason_of(caught.value) == "registry-unavailable"


def test_the_proxy_from_the_environment_is_used_unless_no_proxy_spares_the_host(
    registry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", f"http://{registry}")  # the test server answers as the proxy too
    monkeypatch.setenv("no_proxy", "")
    with Urllib3RegistryClient("registry.example.com", "r", insecure=True) as client:
        assert client.get_manifest("v1")[0] == MANIFEST
    assert ASKED == ["http://registry.example.com/v2/r/manifests/v1"]  # asked as a proxy, for the registry
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with Urllib3RegistryClient(registry, "r") as client:
        assert client.get_manifest("v1")[0] == MANIFEST
    assert ASKED[-1] == "/v2/r/manifests/v1"  # direct
