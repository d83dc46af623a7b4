"""The read side of the OCI distribution API: references, descriptors, manifests, blobs, labels.

Used by the device agent (resolve a tag, pick its platform, read labels) and by ``registry.oci.remote``
which adds pushing on top through :meth:`RegistryClient.request`. httpx only; every failure is converted
at this boundary into the tree of :mod:`edge_runtime.errors`:

    404                                          -> NotFound
    connection errors, timeouts, 429, 5xx        -> TemporaryError (retry with back-off)
    401, 403                                     -> RegistryAuthError (check the credentials)
    digest mismatch on a blob or manifest        -> VerificationFailed
    anything else (400 MANIFEST_INVALID, 415...) -> OtamlError naming the registry's error code
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from edge_runtime.errors import NotFound, OtamlError, TemporaryError, VerificationFailed

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])

# Labels (image config) and annotations (manifest, index) otaml writes on model images; the agent reads them.
LABEL_MODEL_NAME = "io.otaml.model.name"
LABEL_MODEL_VERSION = "io.otaml.model.version"
LABEL_BUNDLE_DIGEST = "io.otaml.bundle.digest"
LABEL_MLFLOW_RUN_ID = "io.otaml.mlflow.run_id"
LABEL_DETECTOR = "io.otaml.model.detector"
MODEL_PATH = "/opt/model"  # where the bundle layer puts the bundle inside the image

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # what distribution itself accepts
# Cap for small JSON blobs read whole into memory: image configs, signature payloads, model.json.
MAX_SMALL_BLOB_BYTES = 4 * 1024 * 1024
MAX_ERROR_BODY_BYTES = 64 * 1024  # enough for any registry error document; the rest is not read
DEFAULT_TIMEOUT = 30.0
_NO_LIMIT = 1 << 62

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REPOSITORY = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class RegistryAuthError(OtamlError):
    """The registry refused the credentials (401/403)."""

    reason = "registry-auth"


def sha256_digest(data: bytes) -> str:
    """The OCI digest string of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is a well-formed sha256 digest, else raise OtamlError."""
    if not _DIGEST.match(digest):
        raise OtamlError(f"digest {digest!r} is not of the form sha256:<64 lowercase hex digits>")
    return digest


def check_tag(tag: str) -> str:
    """Return ``tag`` if the distribution spec allows it, else raise OtamlError."""
    if not _TAG.match(tag):
        raise OtamlError(f"tag {tag!r} is invalid: use up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'")
    return tag


@dataclass(frozen=True)
class Reference:
    """``registry/repository`` plus a tag or a digest (or both: the digest wins)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def ref(self) -> str:
        """What goes into ``/v2/<repo>/manifests/<ref>``."""
        return self.digest or self.tag or "latest"

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, check_tag(tag), None)

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, None, check_digest(digest))

    def __str__(self) -> str:
        name = f"{self.registry}/{self.repository}"
        if self.digest:
            return f"{name}@{self.digest}"
        return f"{name}:{self.tag or 'latest'}"


def parse_reference(text: str) -> Reference:
    """Parse ``host[:port]/repo[:tag][@sha256:...]``; the host part is required (no Docker Hub default)."""
    rest = text.strip().removeprefix("docker://")
    digest = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        check_digest(digest)
    host, sep, path = rest.partition("/")
    if not sep or not path or not ("." in host or ":" in host or host == "localhost"):
        raise OtamlError(
            f"image reference {text!r} has no registry host: write it as HOST[:PORT]/REPOSITORY[:TAG], "
            "e.g. 127.0.0.1:5000/otaml/runtime:model-v1"
        )
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
        check_tag(tag)
    if not _REPOSITORY.match(path):
        raise OtamlError(f"repository {path!r} in {text!r} is invalid: use lowercase [a-z0-9._-] path components")
    return Reference(host, path, tag, digest)


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Platform:
        return cls(str(data.get("os", "")), str(data.get("architecture", "")), data.get("variant") or None)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    """A pointer to content: media type, digest, size (plus platform/annotations in an index)."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Descriptor:
        try:
            platform = data.get("platform")
            return cls(
                media_type=str(data["mediaType"]),
                digest=check_digest(str(data["digest"])),
                size=int(data["size"]),
                platform=Platform.from_json(platform) if platform else None,
                annotations=dict(data.get("annotations") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise OtamlError(f"malformed descriptor {dict(data)!r}: {exc}") from exc


def load_json(data: bytes, what: str) -> dict[str, Any]:
    """Decode a manifest/index/config, raising OtamlError (not JSONDecodeError) on garbage."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OtamlError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise OtamlError(f"{what} is not a JSON object")
    return value


def select_platform(index: bytes | Mapping[str, Any], os: str, arch: str, variant: str | None = None) -> Descriptor:
    """The manifest descriptor for ``os/arch[/variant]`` in an image index; NotFound if it has none.

    ``arm64`` without a variant matches ``arm64`` and ``arm64/v8`` (the same thing to a runtime).
    """
    data = load_json(index, "image index") if isinstance(index, bytes) else index
    candidates = [Descriptor.from_json(m) for m in data.get("manifests", [])]
    for desc in candidates:
        p = desc.platform
        if p is None or p.os != os or p.architecture != arch:
            continue
        if variant is None or p.variant == variant or (arch == "arm64" and {variant, p.variant} <= {None, "v8"}):
            return desc
    have = ", ".join(str(d.platform) for d in candidates if d.platform) or "none"
    want = "/".join(p for p in (os, arch, variant) if p)
    raise NotFound(f"the image index has no {want} manifest (it has: {have}); bake the image for that platform")


def config_labels(config: bytes | Mapping[str, Any]) -> dict[str, str]:
    """The ``config.Labels`` of an image configuration (empty when there are none)."""
    data = load_json(config, "image config") if isinstance(config, bytes) else config
    labels = (data.get("config") or {}).get("Labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]") if host.count(":") <= 1 or host.startswith("[") else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def base_url_for(registry: str, insecure: bool = False) -> str:
    """``https://host`` unless the host is loopback or ``insecure`` (plain HTTP), or a URL is given."""
    if registry.startswith(("http://", "https://")):
        return registry.rstrip("/")
    scheme = "http" if insecure or _is_loopback(registry) else "https"
    return f"{scheme}://{registry}"


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


def _registry_errors(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        return "; ".join(f"{e.get('code', '?')}: {e.get('message', '')}".strip() for e in errors) or response.text[:200]
    except (ValueError, AttributeError):
        return response.text[:200]


class RegistryClient:
    """One repository on one registry. Thread-compatible, not thread-safe; close() or use ``with``."""

    def __init__(
        self,
        registry: str,
        repository: str,
        *,
        auth: tuple[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        insecure: bool = False,
    ) -> None:
        self.base_url = base_url_for(registry, insecure)
        self.repository = repository
        self._auth = auth
        self._authorization: str | None = None
        self._http = httpx.Client(transport=transport, timeout=timeout, follow_redirects=True)

    @classmethod
    def for_reference(cls, ref: Reference, **kwargs: Any) -> RegistryClient:
        return cls(ref.registry, ref.repository, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, path: str) -> str:
        """Absolute URL of ``/v2/<repository>/<path>`` (``path`` may already be absolute, e.g. a Location)."""
        if path.startswith(("http://", "https://")):
            return path
        if path.startswith("/"):
            return self.base_url + path
        return f"{self.base_url}/v2/{self.repository}/{path}"

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        allow_404: bool = False,
        stream: bool = False,
    ) -> httpx.Response:
        """Send one request with auth (answering a 401 challenge once) and map failures to otaml errors.

        Returns the response when its status is in ``ok`` (or is 404 and ``allow_404``). With ``stream``
        its body is not read yet: read it with :meth:`read_capped`, or close the response.
        """
        url = self.url(path)
        response = self._send(method, url, headers, content, params, stream)
        if response.status_code == 401 and "www-authenticate" in response.headers:
            response.close()
            self._authorization = self._answer_challenge(response.headers["www-authenticate"])
            response = self._send(method, url, headers, content, params, stream)
        status = response.status_code
        if status in ok or (allow_404 and status == 404):
            return response
        if stream:  # read only the start of an error body: a hostile registry may send an endless one
            try:
                head = self.read_capped(response, MAX_ERROR_BODY_BYTES, f"{method} {url}", truncate=True)
            except TemporaryError:
                head = b""
            # The head is already decoded: drop the headers that would make httpx decode or size it again.
            kept = [(k, v) for k, v in response.headers.items() if k not in ("content-encoding", "content-length")]
            response = httpx.Response(status, headers=kept, content=head, request=response.request)
        where = f"{method} {url}"
        detail = _registry_errors(response) if method != "HEAD" else ""
        if status == 404:
            raise NotFound(f"{where}: not found (404) {detail}".rstrip() + "; check the repository, tag or digest")
        if status in (401, 403):
            raise RegistryAuthError(
                f"{where}: access denied ({status}) {detail}".rstrip()
                + "; check the registry credentials (--user/--password-stdin) and the repository's permissions"
            )
        if status == 429 or status >= 500:
            raise TemporaryError(f"{where}: registry answered {status} {detail}".rstrip() + "; retry later")
        raise OtamlError(f"{where}: registry refused the request ({status}) {detail}".rstrip())

    def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        content: bytes | None,
        params: Mapping[str, str] | None,
        stream: bool = False,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if self._authorization:
            all_headers.setdefault("Authorization", self._authorization)
        try:
            request = self._http.build_request(method, url, headers=all_headers, content=content, params=params)
            return self._http.send(request, stream=stream)
        except httpx.TransportError as exc:
            raise TemporaryError(
                f"{method} {url}: {type(exc).__name__}: {exc}; is the registry up? retry later"
            ) from exc

    def _answer_challenge(self, header: str) -> str:
        scheme, params = _parse_challenge(header)
        if scheme == "basic":
            if self._auth is None:
                raise RegistryAuthError(f"{self.base_url} needs credentials: pass a user and password")
            return "Basic " + base64.b64encode(f"{self._auth[0]}:{self._auth[1]}".encode()).decode()
        if scheme != "bearer" or "realm" not in params:
            raise OtamlError(f"{self.base_url} sent an authentication challenge otaml cannot answer: {header!r}")
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        try:
            response = self._http.get(params["realm"], params=query, auth=self._auth)
        except httpx.TransportError as exc:
            raise TemporaryError(f"getting a token from {params['realm']}: {exc}; retry later") from exc
        if response.status_code in (401, 403):
            raise RegistryAuthError(
                f"token endpoint {params['realm']} refused the credentials ({response.status_code}); check them"
            )
        if response.status_code != 200:
            raise TemporaryError(f"token endpoint {params['realm']} answered {response.status_code}; retry later")
        try:
            body = response.json()
            token = body.get("token") or body["access_token"]
        except (ValueError, KeyError, AttributeError) as exc:
            raise OtamlError(f"token endpoint {params['realm']} returned no token") from exc
        return f"Bearer {token}"

    # -- manifests and blobs -------------------------------------------------------------------------

    def head_manifest(self, ref: str) -> Descriptor | None:
        """Digest, size and media type of a tag or digest, or None when it does not exist."""
        response = self.request("HEAD", f"manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}, allow_404=True)
        if response.status_code == 404:
            return None
        digest = response.headers.get("docker-content-digest")
        if not digest:
            # Some registries omit the digest header on HEAD; fall back to reading the manifest.
            data, media_type, digest = self.get_manifest(ref)
            return Descriptor(media_type, digest, len(data))
        return Descriptor(
            response.headers.get("content-type", "").split(";")[0],
            check_digest(digest),
            int(response.headers.get("content-length", "0")),
        )

    @staticmethod
    def read_capped(response: httpx.Response, max_bytes: int, what: str, *, truncate: bool = False) -> bytes:
        """The body of a streamed ``response``, never holding more than ``max_bytes`` (then closes it).

        Over the cap: raise :class:`OtamlError` (a registry serving it is broken or hostile), or with
        ``truncate`` return the first ``max_bytes``. Checks Content-Length first, then counts what arrives.
        """
        try:
            declared = response.headers.get("content-length", "")
            if not truncate and declared.isdigit() and int(declared) > max_bytes:
                raise OtamlError(f"{what} is {declared} bytes, over the {max_bytes}-byte limit; refusing to read it")
            body = bytearray()
            # iter_bytes decodes Content-Encoding, so the cap bounds what is held in memory.
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    if truncate:
                        return bytes(body[:max_bytes])
                    raise OtamlError(f"{what} exceeds the {max_bytes}-byte limit; refusing to read more of it")
            return bytes(body)
        except httpx.TransportError as exc:
            raise TemporaryError(f"{what}: {type(exc).__name__}: {exc}; retry later") from exc
        finally:
            response.close()

    def get_manifest(self, ref: str) -> tuple[bytes, str, str]:
        """``(bytes, media type, digest)`` of a manifest or index; the digest is checked against ``ref``.

        At most :data:`MAX_MANIFEST_BYTES` are read: a larger manifest raises :class:`OtamlError`.
        """
        response = self.request("GET", f"manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}, stream=True)
        data = self.read_capped(response, MAX_MANIFEST_BYTES, f"manifest {ref}")
        digest = sha256_digest(data)
        if ref.startswith("sha256:") and digest != ref:
            raise VerificationFailed(f"manifest {ref} arrived with digest {digest}: refusing tampered content")
        media_type = response.headers.get("content-type", "").split(";")[0]
        if media_type not in INDEX_TYPES | MANIFEST_TYPES:
            media_type = str(load_json(data, f"manifest {ref}").get("mediaType", media_type))
        return data, media_type, digest

    def get_blob(self, digest: str, max_bytes: int | None = None) -> bytes:
        """The blob's bytes, verified against ``digest``.

        Pass ``max_bytes`` (e.g. :data:`MAX_SMALL_BLOB_BYTES`) for anything read whole into memory from an
        untrusted registry (configs, signature payloads, JSON): a larger blob raises :class:`OtamlError`
        before more than ``max_bytes`` is held. ``None`` reads any size (layers).
        """
        response = self.request("GET", f"blobs/{check_digest(digest)}", stream=True)
        limit = max_bytes if max_bytes is not None else _NO_LIMIT
        data = self.read_capped(response, limit, f"blob {digest}")
        actual = sha256_digest(data)
        if actual != digest:
            raise VerificationFailed(
                f"blob {digest} arrived with digest {actual}: refusing corrupt or tampered content"
            )
        return data

    def image_labels(
        self, ref: str, os: str = "linux", arch: str = "amd64", variant: str | None = None
    ) -> dict[str, str]:
        """Config labels of ``ref``'s image for one platform (an index is resolved to that platform)."""
        data, media_type, _ = self.get_manifest(ref)
        manifest = load_json(data, f"manifest {ref}")
        if media_type in INDEX_TYPES:
            desc = select_platform(manifest, os, arch, variant)
            data, _, _ = self.get_manifest(desc.digest)
            manifest = load_json(data, f"manifest {desc.digest}")
        config = Descriptor.from_json(manifest.get("config") or {})
        return config_labels(self.get_blob(config.digest, max_bytes=MAX_SMALL_BLOB_BYTES))
