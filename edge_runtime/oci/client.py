"""The read side of the OCI distribution API: a client for one repository on one registry.

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
import ipaddress
import re
import time
from collections.abc import Collection, Mapping
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
DEFAULT_TIMEOUT = 30.0  # per connect / read / write (httpx)
DEFAULT_DEADLINE = 120.0  # for a whole capped read: 4 MiB at 35 kB/s
_NO_LIMIT = 1 << 62


class RegistryAuthError(OtamlError):
    """The registry refused the credentials (401/403)."""

    reason = "registry-auth"


class ForbiddenHost(OtamlError):
    """The registry sent the client to a host it may not go to (a token realm elsewhere, https to http)."""

    reason = "forbidden-host"


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
