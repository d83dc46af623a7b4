"""An in-memory registry behind ``httpx.MockTransport`` (the I/O seam) and a tiny two-platform base image."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import httpx

from edge_runtime.oci import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, Platform
from registry.oci.image import Blob, Index, Manifest, canonical_json
from registry.oci.layout import Layout


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeRegistry:
    """Just enough of the distribution API: blobs (HEAD/GET, monolithic/chunked upload, mount), manifests, tags."""

    def __init__(self) -> None:
        self.blobs: dict[str, dict[str, bytes]] = {}  # repo -> digest -> bytes
        self.manifests: dict[str, dict[str, tuple[bytes, str]]] = {}  # repo -> ref -> (bytes, type)
        self.uploads: dict[str, bytearray] = {}
        self.requests: list[tuple[str, str]] = []
        self.blob_bytes_received = 0
        self.fail: Callable[[httpx.Request], httpx.Response | None] = lambda _r: None

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        failure = self.fail(request)
        if failure is not None:
            return failure
        path = request.url.path
        if path == "/v2/":
            return httpx.Response(200, json={})
        repo, kind, rest = self._split(path)
        blobs = self.blobs.setdefault(repo, {})
        if kind == "blobs" and rest.startswith("uploads"):
            return self._upload(request, repo, rest)
        if kind == "blobs":
            if rest not in blobs:
                return httpx.Response(404, json={"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]})
            body = b"" if request.method == "HEAD" else blobs[rest]
            return httpx.Response(200, content=body, headers={"Content-Length": str(len(blobs[rest]))})
        if kind == "manifests":
            return self._manifest(request, repo, rest)
        if kind == "tags":
            tags = sorted(r for r in self.manifests.get(repo, {}) if not r.startswith("sha256:"))
            return httpx.Response(200, json={"name": repo, "tags": tags})
        return httpx.Response(404)

    @staticmethod
    def _split(path: str) -> tuple[str, str, str]:
        for kind in ("/blobs/", "/manifests/", "/tags/"):
            if kind in path:
                repo, rest = path[len("/v2/") :].split(kind, 1)
                return repo, kind.strip("/"), rest
        return "", "", ""

    def _upload(self, request: httpx.Request, repo: str, rest: str) -> httpx.Response:
        blobs = self.blobs.setdefault(repo, {})
        if request.method == "POST":
            mount, source = request.url.params.get("mount"), request.url.params.get("from")
            if mount and source and mount in self.blobs.get(source, {}):
                blobs[mount] = self.blobs[source][mount]
                return httpx.Response(201)
            uid = f"u{len(self.uploads)}"
            self.uploads[uid] = bytearray()
            return httpx.Response(202, headers={"Location": f"/v2/{repo}/blobs/uploads/{uid}?_state=x"})
        uid = rest.split("/", 1)[1]
        self.uploads[uid] += request.content
        self.blob_bytes_received += len(request.content)
        if request.method == "PATCH":
            return httpx.Response(202, headers={"Location": f"/v2/{repo}/blobs/uploads/{uid}?_state=y"})
        data = bytes(self.uploads.pop(uid))
        if sha(data) != request.url.params["digest"]:
            return httpx.Response(400, json={"errors": [{"code": "DIGEST_INVALID", "message": "digest mismatch"}]})
        blobs[sha(data)] = data
        return httpx.Response(201)

    def _manifest(self, request: httpx.Request, repo: str, ref: str) -> httpx.Response:
        store = self.manifests.setdefault(repo, {})
        if request.method == "PUT":
            data = request.content
            store[ref] = store[sha(data)] = (data, request.headers["content-type"])
            return httpx.Response(201, headers={"Docker-Content-Digest": sha(data)})
        if ref not in store:
            return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})
        data, media_type = store[ref]
        headers = {"Content-Type": media_type, "Docker-Content-Digest": sha(data), "Content-Length": str(len(data))}
        return httpx.Response(200, content=b"" if request.method == "HEAD" else data, headers=headers)


def tar_gz(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip layer and its diff_id."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0), sha(raw.getvalue())


def write_fake_base(root: Path, platforms: tuple[str, ...] = ("amd64", "arm64"), tag: str = "base") -> Layout:
    """An OCI layout holding a tiny multi-platform 'runtime' image under ``tag``."""
    layout = Layout(root, create=True)
    entries = []
    for arch in platforms:
        layer, diff_id = tar_gz({"etc/os-release": f"fake {arch}\n".encode()})
        config = {
            "architecture": arch,
            "os": "linux",
            "config": {"User": "10001:10001", "Labels": {"org.opencontainers.image.title": "otaml-runtime"}},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "fake base"}],
        }
        config_blob = Blob.of(canonical_json(config), OCI_CONFIG)
        layer_blob = Blob.of(layer, OCI_LAYER_GZIP)
        for blob in (config_blob, layer_blob):
            layout.write_blob(blob.data, blob.descriptor.digest)
        manifest = Manifest(config_blob.descriptor, (layer_blob.descriptor,)).blob(Platform("linux", arch))
        layout.write_manifest(manifest.data, OCI_MANIFEST)
        entries.append(manifest.descriptor)
    index = Index(tuple(entries)).blob()
    layout.write_manifest(index.data, index.descriptor.media_type, tag)
    return layout
