"""A registry repository as a :class:`Store`: the push side of the distribution API on ``edge_runtime.oci``.

Blobs: HEAD first (nothing is sent when the registry has it), then an optional cross-repository
mount, then a monolithic upload (POST, then PUT ``?digest=`` with the bytes) or, with ``chunk_size``,
a chunked one (POST, PATCH each chunk with ``Content-Range``, PUT ``?digest=``). Manifests are PUT
by digest or tag and the registry's ``Docker-Content-Digest`` is checked against ours.
"""

from __future__ import annotations

from typing import Any

import httpx

from edge_runtime.errors import OtamlError, VerificationFailed
from edge_runtime.oci import Descriptor, RegistryClient, check_digest, check_tag, sha256_digest
from registry.oci.errors import doing


class Remote:
    """One repository on one registry. Takes a ready :class:`RegistryClient` (auth/transport live there)."""

    def __init__(self, client: RegistryClient, *, chunk_size: int | None = None) -> None:
        if chunk_size is not None and chunk_size <= 0:
            raise OtamlError(f"chunk_size {chunk_size} must be a positive number of bytes (or None for monolithic)")
        self.client = client
        self.chunk_size = chunk_size

    def describe(self) -> str:
        host = self.client.base_url.split("://", 1)[-1]
        return f"{host}/{self.client.repository}"

    def close(self) -> None:
        self.client.close()

    # -- read ----------------------------------------------------------------------------------------

    def resolve(self, ref: str) -> Descriptor | None:
        with doing(f"resolving {self.describe()}:{ref}"):
            return self.client.head_manifest(ref)

    def read_manifest(self, ref: str) -> tuple[bytes, str, str]:
        with doing(f"reading manifest {self.describe()}:{ref}"):
            return self.client.get_manifest(ref)

    def read_blob(self, digest: str) -> bytes:
        with doing(f"reading blob {digest}"):
            return self.client.get_blob(digest)

    def has_blob(self, digest: str) -> bool:
        with doing(f"checking blob {digest}"):
            return self._has_blob(digest)

    def _has_blob(self, digest: str) -> bool:
        response = self.client.request("HEAD", f"blobs/{check_digest(digest)}", allow_404=True)
        return response.status_code == 200

    def tags(self) -> list[str]:
        found: list[str] = []
        path: str = "tags/list"
        params: dict[str, str] | None = {"n": "1000"}
        with doing(f"listing tags of {self.describe()}"):
            while True:
                response = self.client.request("GET", path, params=params, allow_404=True)
                if response.status_code == 404:
                    return []
                body: dict[str, Any] = response.json()
                found.extend(body.get("tags") or [])
                link = response.links.get("next", {}).get("url")
                if not link:
                    return sorted(found)
                path, params = link, None

    # -- write ---------------------------------------------------------------------------------------

    def write_blob(self, data: bytes, digest: str, *, mount_from: str | None = None) -> int:
        with doing(f"pushing blob {digest}"):
            if sha256_digest(data) != digest:
                raise OtamlError(f"its bytes hash to {sha256_digest(data)}: refusing to upload mislabelled content")
            if self._has_blob(digest):
                return 0
            params = {"mount": digest, "from": mount_from} if mount_from else None
            response = self.client.request("POST", "blobs/uploads/", params=params, ok=(201, 202))
            if response.status_code == 201:  # mounted from another repository: nothing uploaded
                return 0
            location = self._location(response)
            if self.chunk_size is None:
                self.client.request(
                    "PUT",
                    self._with_digest(location, digest),
                    content=data,
                    headers={"Content-Type": "application/octet-stream"},
                    ok=(201,),
                )
                return len(data)
            for start in range(0, len(data), self.chunk_size):
                chunk = data[start : start + self.chunk_size]
                response = self.client.request(
                    "PATCH",
                    location,
                    content=chunk,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{start}-{start + len(chunk) - 1}",
                    },
                    ok=(202,),
                )
                location = self._location(response)
            self.client.request("PUT", self._with_digest(location, digest), ok=(201,))
            return len(data)

    def write_manifest(self, data: bytes, media_type: str, tag: str | None = None) -> str:
        digest = sha256_digest(data)
        ref = check_tag(tag) if tag else digest
        with doing(f"pushing manifest {self.describe()}:{ref}"):
            response = self.client.request(
                "PUT", f"manifests/{ref}", content=data, headers={"Content-Type": media_type}, ok=(201,)
            )
            echoed = response.headers.get("docker-content-digest")
            if echoed and echoed != digest:
                raise VerificationFailed(f"registry stored it as {echoed}, not {digest}: it rewrote the manifest")
        return digest

    def _location(self, response: httpx.Response) -> str:
        location = response.headers.get("location")
        if not location:
            raise OtamlError(f"registry answered {response.status_code} without a Location header for the upload")
        return str(httpx.URL(self.client.url("/")).join(location)) if location.startswith("/") else location

    @staticmethod
    def _with_digest(location: str, digest: str) -> str:
        return str(httpx.URL(location).copy_merge_params({"digest": digest}))
