"""The read side of the OCI distribution API: a client for one repository on one registry.

:class:`RegistryReader` holds everything that makes a read safe against a hostile registry; it speaks HTTP
through one primitive (send one request, follow nothing), implemented twice:

    edge_runtime.oci.urllib3_client   Urllib3RegistryClient   the device's (urllib3: python-tuf's fetcher already
                                                              loads it, so the agent holds one HTTP client)
    edge_runtime.oci.httpx_client     RegistryClient          the MLOps side (``registry.oci.remote`` pushes
                                                              through :meth:`RegistryClient.request`; tests swap
                                                              in ``httpx.MockTransport``)

This module imports neither library. Every failure is converted at this boundary into the tree of
:mod:`edge_runtime.errors`:

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
deadline (socket timeouts are per read: a server dripping a byte a second never trips them), and redirects
are followed here, at most :data:`MAX_REDIRECTS` times (blob redirects to a CDN host are normal), never from
https to plain http, and without the credentials once they leave the origin they were meant for. Credentials
go to a token realm only on the registry's own host or one in ``token_hosts``.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Mapping
from typing import Any, Generic, Self, TypedDict, TypeVar
from urllib.parse import urlencode, urljoin, urlsplit

from edge_runtime.errors import (
    MalformedContent,
    NotFound,
    OtamlError,
    OversizedContent,
    RegistryUnavailable,
    TemporaryError,
    VerificationFailed,
)
from edge_runtime.oci.types import (
    _DIGEST,
    INDEX_TYPES,
    MANIFEST_ACCEPT,
    MANIFEST_TYPES,
    Descriptor,
    Reference,
    _excerpt,
    check_digest,
    config_labels,
    load_json,
    select_platform,
    sha256_digest,
)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # what distribution itself accepts
# Cap for small JSON blobs read whole into memory: image configs, signature payloads, model.json.
MAX_SMALL_BLOB_BYTES = 4 * 1024 * 1024
MAX_ERROR_BODY_BYTES = 64 * 1024  # enough for any registry error document; the rest is not read
MAX_TOKEN_BYTES = 256 * 1024  # a bearer token response (JWTs are a few kB)
MAX_REDIRECTS = 5  # a blob redirect to a CDN is one hop
DEFAULT_TIMEOUT = 30.0  # per connect / read / write
DEFAULT_DEADLINE = 120.0  # for a whole capped read: 4 MiB at 35 kB/s
_NO_LIMIT = 1 << 62
_REDIRECTS = (301, 302, 303, 307, 308)

R = TypeVar("R")


class RegistryAuthError(OtamlError):
    """The registry refused the credentials (401/403)."""

    reason = "registry-auth"


class ForbiddenHost(OtamlError):
    """The registry sent the client to a host it may not go to (a token realm elsewhere, https to http)."""

    reason = "forbidden-host"


class BodyError(Exception):
    """Raised by a transport while a body streams; :meth:`RegistryReader.read_capped` converts it.

    ``undecodable``: the Content-Encoding does not decode (MalformedContent); otherwise the connection broke
    (RegistryUnavailable).
    """

    def __init__(self, message: str, *, undecodable: bool = False) -> None:
        super().__init__(message)
        self.undecodable = undecodable


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


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.scheme, (parts.hostname or "").lower(), port or (443 if parts.scheme == "https" else 80)


def _with_query(url: str, params: Mapping[str, str] | None) -> str:
    if not params:
        return url
    return url + ("&" if urlsplit(url).query else "?") + urlencode(dict(params))


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


def _registry_errors(body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    try:
        errors = json.loads(text).get("errors") or []
        return "; ".join(f"{e.get('code', '?')}: {e.get('message', '')}".strip() for e in errors) or text[:200]
    except (ValueError, AttributeError):
        return text[:200]


class ReaderOptions(TypedDict, total=False):
    """What every registry client takes besides its transport (defaults as :class:`RegistryReader`'s)."""

    auth: tuple[str, str] | None
    timeout: float
    insecure: bool
    deadline: float
    token_hosts: Collection[str]


class RegistryReader(ABC, Generic[R]):
    """One repository on one registry, over a transport that returns responses of type ``R``.

    Thread-compatible, not thread-safe; close() or use ``with``. Subclasses implement the five transport
    primitives (``_transmit``, ``_status``, ``_header``, ``_body``, ``_chunks``, ``_close``) and nothing else.
    """

    def __init__(
        self,
        registry: str,
        repository: str,
        *,
        auth: tuple[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        insecure: bool = False,
        deadline: float = DEFAULT_DEADLINE,
        token_hosts: Collection[str] = (),
    ) -> None:
        self.base_url = base_url_for(registry, insecure)
        self.repository = repository
        self.timeout = timeout
        self.deadline = deadline
        self.token_hosts = frozenset(h.lower() for h in token_hosts) | {_host_of(self.base_url)}
        self._auth = auth
        self._authorization: str | None = None

    # -- the transport (one request, no redirects followed) ------------------------------------------

    @abstractmethod
    def _transmit(self, method: str, url: str, headers: dict[str, str], content: bytes | None, stream: bool) -> R:
        """Send one request; its body is read already unless ``stream``. Transport failures raise
        RegistryUnavailable, an unusable URL MalformedContent."""

    @abstractmethod
    def _status(self, response: R) -> int: ...

    @abstractmethod
    def _header(self, response: R, name: str) -> str | None:
        """A response header, case-insensitively."""

    @abstractmethod
    def _body(self, response: R) -> bytes:
        """The whole body of a response sent without ``stream``."""

    @abstractmethod
    def _chunks(self, response: R) -> Iterator[bytes]:
        """The decoded body of a streamed response, chunk by chunk; :class:`BodyError` when it breaks."""

    @abstractmethod
    def _close(self, response: R) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    # ------------------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
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
    ) -> R:
        """Send one request with auth (answering a 401 challenge once) and map failures to otaml errors.

        Returns the response when its status is in ``ok`` (or is 404 and ``allow_404``). With ``stream``
        its body is not read yet: read it with :meth:`read_capped`, or close the response.
        """
        url = _with_query(self.url(path), params)
        response = self._send(method, url, headers, content, stream)
        challenge = self._header(response, "www-authenticate")
        if self._status(response) == 401 and challenge is not None:
            self._close(response)
            self._authorization = self._answer_challenge(challenge)
            response = self._send(method, url, headers, content, stream)
        status = self._status(response)
        if status in ok or (allow_404 and status == 404):
            return response
        where = f"{method} {url}"
        if method == "HEAD":
            detail = ""
            self._close(response)
        elif stream:  # read only the start of an error body: a hostile registry may send an endless one
            try:
                head = self.read_capped(response, MAX_ERROR_BODY_BYTES, where, truncate=True, deadline_s=self.deadline)
            except (TemporaryError, MalformedContent):
                head = b""
            detail = _registry_errors(head)
        else:
            detail = _registry_errors(self._body(response))
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

    def _send(self, method: str, url: str, headers: Mapping[str, str] | None, content: bytes | None, stream: bool) -> R:
        all_headers = dict(headers or {})
        if self._authorization:
            all_headers.setdefault("Authorization", self._authorization)
        return self._follow(method, url, all_headers, content, stream)

    def _follow(self, method: str, url: str, headers: dict[str, str], content: bytes | None, stream: bool) -> R:
        """Send, following redirects: at most MAX_REDIRECTS, never to plain http from an https registry, and
        without ``Authorization`` once the request leaves its origin."""
        first = url
        for hop in range(MAX_REDIRECTS + 1):
            if self.base_url.startswith("https://") and urlsplit(url).scheme != "https":
                raise ForbiddenHost(
                    f"{self.base_url} redirected to {url}: refusing a redirect from https to plain http"
                    if hop
                    else f"{method} {url}: refusing plain http for the https registry {self.base_url}"
                )
            response = self._transmit(method, url, headers, content, stream)
            location = self._header(response, "location")
            if self._status(response) not in _REDIRECTS or not location:
                return response
            status = self._status(response)
            self._close(response)
            target = urljoin(url, location.strip())
            if urlsplit(target).scheme not in ("http", "https") or not urlsplit(target).hostname:
                raise MalformedContent(f"{method} {url}: the registry redirected to an invalid URL {location!r}")
            if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
                method, content = "GET", None
                headers = {k: v for k, v in headers.items() if k.lower() not in ("content-type", "content-length")}
            if _origin(target) != _origin(url):
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = target
        raise RegistryUnavailable(
            f"{method} {first}: more than {MAX_REDIRECTS} redirects; the registry (or its CDN) is misconfigured"
        )

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
        headers: dict[str, str] = {}
        if self._auth is not None:
            basic = base64.b64encode(f"{self._auth[0]}:{self._auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        try:
            response = self._follow("GET", _with_query(realm, query), headers, None, True)
        except RegistryUnavailable as exc:
            raise RegistryUnavailable(f"getting a token from {realm}: {exc}") from exc
        status = self._status(response)
        if status in (401, 403):
            self._close(response)
            raise RegistryAuthError(f"token endpoint {realm} refused the credentials ({status}); check them")
        if status != 200:
            self._close(response)
            raise RegistryUnavailable(f"token endpoint {realm} answered {status}; retry later")
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
        if self._status(response) == 404:
            return None
        digest = self._header(response, "docker-content-digest")
        if not digest:
            # Some registries omit the digest header on HEAD; fall back to reading the manifest.
            data, media_type, digest = self.get_manifest(ref)
            return Descriptor(media_type, digest, len(data))
        if not _DIGEST.match(digest):
            raise MalformedContent(
                f"HEAD manifests/{ref} answered the digest {_excerpt(digest)}, not sha256:<64 lowercase hex digits>"
            )
        length = self._header(response, "content-length") or "0"
        return Descriptor(
            (self._header(response, "content-type") or "").split(";")[0],
            digest,
            int(length) if length.isdigit() else 0,
        )

    def read_capped(
        self,
        response: R,
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
            declared = self._header(response, "content-length") or ""
            if not truncate and declared.isdigit() and int(declared) > max_bytes:
                raise OversizedContent(
                    f"{what} is {declared} bytes, over the {max_bytes}-byte limit; refusing to read it"
                )
            body = bytearray()
            # The chunks are decoded (Content-Encoding), so the cap bounds what is held in memory.
            for chunk in self._chunks(response):
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
        except BodyError as exc:
            if exc.undecodable:
                raise MalformedContent(f"{what}: its Content-Encoding does not decode: {exc}") from exc
            raise RegistryUnavailable(f"{what}: {exc}; retry later") from exc
        finally:
            self._close(response)

    def get_manifest(self, ref: str) -> tuple[bytes, str, str]:
        """``(bytes, media type, digest)`` of a manifest or index; the digest is checked against ``ref``.

        At most :data:`MAX_MANIFEST_BYTES` are read: a larger manifest raises :class:`OversizedContent`.
        """
        response = self.request("GET", f"manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}, stream=True)
        data = self.read_capped(response, MAX_MANIFEST_BYTES, f"manifest {ref}", deadline_s=self.deadline)
        digest = sha256_digest(data)
        if ref.startswith("sha256:") and digest != ref:
            raise VerificationFailed(f"manifest {ref} arrived with digest {digest}: refusing tampered content")
        media_type = (self._header(response, "content-type") or "").split(";")[0]
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

    @classmethod
    def for_reference(cls, ref: Reference, **kwargs: Any) -> Self:
        return cls(ref.registry, ref.repository, **kwargs)
