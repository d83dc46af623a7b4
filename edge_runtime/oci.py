"""The read side of the OCI distribution API: references, descriptors, manifests, blobs, labels.

Used by the device agent (resolve a tag, pick its platform, read labels) and by ``registry.oci.remote``
which adds pushing on top through :meth:`RegistryClient.request`. httpx only; every failure is converted
at this boundary into the tree of :mod:`edge_runtime.errors`:

    404                                          -> NotFound
    connection errors, timeouts, 429, 5xx,       -> RegistryUnavailable (a TemporaryError: retry with back-off)
      a body slower than the total deadline,
      more than MAX_REDIRECTS redirects
    401, 403                                     -> RegistryAuthError (check the credentials)
    a token realm on another host                -> ForbiddenHost (allow it with ``token_hosts``)
    digest mismatch on a blob or manifest        -> VerificationFailed
    not JSON, an array where an object belongs,  -> MalformedContent (reason ``malformed-image``)
      a bad descriptor, digest or size
    a document over its cap                      -> OversizedContent (reason ``oversized``; names the cap)
    anything else (400 MANIFEST_INVALID, 415...) -> OtamlError naming the registry's error code

The registry is not trusted before verification: every document read whole into memory has a cap (manifests
and indexes :data:`MAX_MANIFEST_BYTES`, configs and signature payloads :data:`MAX_SMALL_BLOB_BYTES`, token
responses :data:`MAX_TOKEN_BYTES`, error bodies :data:`MAX_ERROR_BODY_BYTES`), every capped read a total
deadline (httpx's timeouts are per read: a server dripping a byte a second never trips them), and redirects
are followed at most :data:`MAX_REDIRECTS` times (blob redirects to a CDN host are normal), never from https
to plain http. Credentials go to a token realm only on the registry's own host or one in ``token_hosts``.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from edge_runtime.errors import (
    MalformedContent,
    NotFound,
    OtamlError,
    OversizedContent,
    RegistryUnavailable,
    TemporaryError,
    VerificationFailed,
)

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
MAX_TOKEN_BYTES = 256 * 1024  # a bearer token response (JWTs are a few kB)
MAX_REDIRECTS = 5  # a blob redirect to a CDN is one hop
DEFAULT_TIMEOUT = 30.0  # per connect / read / write (httpx)
DEFAULT_DEADLINE = 120.0  # for a whole capped read: 4 MiB at 35 kB/s
_NO_LIMIT = 1 << 62

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REPOSITORY = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class RegistryAuthError(OtamlError):
    """The registry refused the credentials (401/403)."""

    reason = "registry-auth"


class ForbiddenHost(OtamlError):
    """The registry sent the client to a host it may not go to (a token realm elsewhere, https to http)."""

    reason = "forbidden-host"


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
    def from_json(cls, data: object) -> Descriptor:
        """Parse a descriptor; :class:`MalformedContent` names what is wrong with one that breaks the spec."""
        if not isinstance(data, Mapping):
            raise MalformedContent(f"malformed descriptor {_excerpt(data)}: expected a JSON object")
        try:
            platform = data.get("platform")
            if platform is not None and not isinstance(platform, Mapping):
                raise TypeError("platform is not a JSON object")
            annotations = data.get("annotations") or {}
            if not isinstance(annotations, Mapping):
                raise TypeError("annotations is not a JSON object")
            size = data["size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError(f"size {size!r} is not a non-negative integer")
            return cls(
                media_type=str(data["mediaType"]),
                digest=check_digest(str(data["digest"])),
                size=size,
                platform=Platform.from_json(platform) if platform else None,
                annotations={str(k): str(v) for k, v in annotations.items()},
            )
        except (KeyError, TypeError, ValueError, OtamlError) as exc:
            raise MalformedContent(f"malformed descriptor {_excerpt(data)}: {exc}") from exc


def _excerpt(value: Any, limit: int = 200) -> str:
    """A bounded repr of hostile content for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def load_json(data: bytes, what: str) -> dict[str, Any]:
    """Decode a manifest/index/config, raising :class:`MalformedContent` (not JSONDecodeError) on garbage."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedContent(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise MalformedContent(f"{what} is a JSON {type(value).__name__}, not the JSON object the OCI spec requires")
    return value


def _object_list(value: Any, what: str) -> list[Mapping[str, Any]]:
    """``value`` as a list of JSON objects (``None`` is an empty list); MalformedContent otherwise."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise MalformedContent(f"{what} is not a list of JSON objects: {_excerpt(value)}")
    return value


def select_platform(index: bytes | Mapping[str, Any], os: str, arch: str, variant: str | None = None) -> Descriptor:
    """The manifest descriptor for ``os/arch[/variant]`` in an image index; NotFound if it has none.

    ``arm64`` without a variant matches ``arm64`` and ``arm64/v8`` (the same thing to a runtime).
    """
    data = load_json(index, "image index") if isinstance(index, bytes) else index
    candidates = [Descriptor.from_json(m) for m in _object_list(data.get("manifests"), "the index's manifests")]
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
    inner = data.get("config") or {}
    labels = inner.get("Labels") or {} if isinstance(inner, Mapping) else None
    if not isinstance(labels, Mapping):
        raise MalformedContent(f"the image config's config.Labels is not a JSON object: {_excerpt(data)}")
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


def _host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


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
        deadline: float = DEFAULT_DEADLINE,
        token_hosts: Collection[str] = (),
    ) -> None:
        self.base_url = base_url_for(registry, insecure)
        self.repository = repository
        self.deadline = deadline
        self.token_hosts = frozenset(h.lower() for h in token_hosts) | {_host_of(self.base_url)}
        self._auth = auth
        self._authorization: str | None = None
        self._http = httpx.Client(
            transport=transport,
            timeout=timeout,
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            event_hooks={"request": [self._check_redirect]},
        )

    def _check_redirect(self, request: httpx.Request) -> None:
        # httpx drops the Authorization header on a redirect to another origin; a downgrade to plain http
        # would still expose the request and its answer, so it is refused.
        if self.base_url.startswith("https://") and request.url.scheme != "https":
            raise ForbiddenHost(
                f"{self.base_url} redirected to {request.url}: refusing a redirect from https to plain http"
            )

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
                head = self.read_capped(
                    response, MAX_ERROR_BODY_BYTES, f"{method} {url}", truncate=True, deadline_s=self.deadline
                )
            except (TemporaryError, MalformedContent):
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
            raise RegistryUnavailable(f"{where}: registry answered {status} {detail}".rstrip() + "; retry later")
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
        except httpx.TooManyRedirects as exc:
            raise RegistryUnavailable(
                f"{method} {url}: more than {MAX_REDIRECTS} redirects; the registry (or its CDN) is misconfigured"
            ) from exc
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise RegistryUnavailable(
                f"{method} {url}: {type(exc).__name__}: {exc}; is the registry up? retry later"
            ) from exc
        except httpx.InvalidURL as exc:
            raise MalformedContent(f"{method} {url}: the registry sent an invalid URL: {exc}") from exc

    def _answer_challenge(self, header: str) -> str:
        scheme, params = _parse_challenge(header)
        if scheme == "basic":
            if self._auth is None:
                raise RegistryAuthError(f"{self.base_url} needs credentials: pass a user and password")
            return "Basic " + base64.b64encode(f"{self._auth[0]}:{self._auth[1]}".encode()).decode()
        if scheme != "bearer" or "realm" not in params:
            raise OtamlError(f"{self.base_url} sent an authentication challenge otaml cannot answer: {header!r}")
        realm = params["realm"]
        realm_url = urlsplit(realm)
        if realm_url.scheme not in ("http", "https") or _host_of(realm) not in self.token_hosts:
            raise ForbiddenHost(
                f"{self.base_url} names the token realm {realm!r}, which is not on the registry's host: refusing to "
                f"send credentials there. If that token service is genuine, allow its host "
                f"({_host_of(realm) or '?'!r}) in the registry's token hosts."
            )
        if self.base_url.startswith("https://") and realm_url.scheme != "https":
            raise ForbiddenHost(f"{self.base_url} names a plain-http token realm {realm!r}; refusing to use it")
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        try:
            request = self._http.build_request("GET", realm, params=query)
            if self._auth is not None:
                basic = base64.b64encode(f"{self._auth[0]}:{self._auth[1]}".encode()).decode()
                request.headers["Authorization"] = f"Basic {basic}"
            response = self._http.send(request, stream=True)
        except (httpx.RequestError, httpx.InvalidURL) as exc:
            raise RegistryUnavailable(f"getting a token from {realm}: {exc}; retry later") from exc
        if response.status_code in (401, 403):
            response.close()
            raise RegistryAuthError(
                f"token endpoint {realm} refused the credentials ({response.status_code}); check them"
            )
        if response.status_code != 200:
            response.close()
            raise RegistryUnavailable(f"token endpoint {realm} answered {response.status_code}; retry later")
        body = load_json(
            self.read_capped(response, MAX_TOKEN_BYTES, f"token response of {realm}", deadline_s=self.deadline),
            f"token response of {realm}",
        )
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
            raise MalformedContent(f"token endpoint {realm} returned no usable token")
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
        if not _DIGEST.match(digest):
            raise MalformedContent(
                f"HEAD manifests/{ref} answered the digest {_excerpt(digest)}, not sha256:<64 lowercase hex digits>"
            )
        length = response.headers.get("content-length", "0")
        return Descriptor(
            response.headers.get("content-type", "").split(";")[0],
            digest,
            int(length) if length.isdigit() else 0,
        )

    @staticmethod
    def read_capped(
        response: httpx.Response,
        max_bytes: int,
        what: str,
        *,
        truncate: bool = False,
        deadline_s: float | None = None,
    ) -> bytes:
        """The body of a streamed ``response``, never holding more than ``max_bytes`` (then closes it).

        Over the cap: raise :class:`OversizedContent` naming it (a registry serving it is broken or hostile), or
        with ``truncate`` return the first ``max_bytes``. Checks Content-Length first, then counts what arrives.
        Slower than ``deadline_s`` in total: :class:`RegistryUnavailable`.
        """
        started = time.monotonic()
        try:
            declared = response.headers.get("content-length", "")
            if not truncate and declared.isdigit() and int(declared) > max_bytes:
                raise OversizedContent(
                    f"{what} is {declared} bytes, over the {max_bytes}-byte limit; refusing to read it"
                )
            body = bytearray()
            # iter_bytes decodes Content-Encoding, so the cap bounds what is held in memory.
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    if truncate:
                        return bytes(body[:max_bytes])
                    raise OversizedContent(f"{what} exceeds the {max_bytes}-byte limit; refusing to read more of it")
                if deadline_s is not None and time.monotonic() - started > deadline_s:
                    raise RegistryUnavailable(
                        f"{what} did not arrive within the {deadline_s:g} s deadline ({len(body)} bytes so far); "
                        "the registry is too slow or hostile: retry later"
                    )
            return bytes(body)
        except httpx.DecodingError as exc:
            raise MalformedContent(f"{what}: its Content-Encoding does not decode: {exc}") from exc
        except httpx.TransportError as exc:
            raise RegistryUnavailable(f"{what}: {type(exc).__name__}: {exc}; retry later") from exc
        finally:
            response.close()

    def get_manifest(self, ref: str) -> tuple[bytes, str, str]:
        """``(bytes, media type, digest)`` of a manifest or index; the digest is checked against ``ref``.

        At most :data:`MAX_MANIFEST_BYTES` are read: a larger manifest raises :class:`OversizedContent`.
        """
        response = self.request("GET", f"manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}, stream=True)
        data = self.read_capped(response, MAX_MANIFEST_BYTES, f"manifest {ref}", deadline_s=self.deadline)
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
        untrusted registry (configs, signature payloads, JSON): a larger blob raises :class:`OversizedContent`
        before more than ``max_bytes`` is held, and the read has the total deadline. ``None`` reads any size
        (layers).
        """
        response = self.request("GET", f"blobs/{check_digest(digest)}", stream=True)
        if max_bytes is None:  # a layer: any size, any time (containerd pulls layers on the device, not this)
            data = self.read_capped(response, _NO_LIMIT, f"blob {digest}")
        else:
            data = self.read_capped(response, max_bytes, f"blob {digest}", deadline_s=self.deadline)
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
        config = Descriptor.from_json(manifest.get("config"))
        return config_labels(self.get_blob(config.digest, max_bytes=MAX_SMALL_BLOB_BYTES))
