""":class:`Urllib3RegistryClient`: the registry read core (:mod:`edge_runtime.oci.client`) over urllib3.

The device's client. python-tuf's ngclient fetcher already loads urllib3, so reading the registry through it
costs the agent no second HTTP stack (httpx, httpcore, h11, idna and http.cookiejar are ~3.5 MB of RSS).
Server certificates are verified against the system's CA store (``SSL_CERT_FILE``/``SSL_CERT_DIR`` honoured), as
for the TUF metadata; ``http_proxy``/``https_proxy``/``all_proxy``/``no_proxy`` are honoured as python-tuf and
httpx do. Caps, deadlines, redirects and credentials follow :class:`~edge_runtime.oci.client.RegistryReader`'s
rules, whatever the client.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Unpack
from urllib.parse import urlsplit
from urllib.request import getproxies

import urllib3
from urllib3.exceptions import DecodeError, HTTPError, LocationParseError

from edge_runtime.errors import MalformedContent, RegistryUnavailable
from edge_runtime.oci.client import BodyError, ReaderOptions, RegistryReader

_CHUNK = 64 * 1024


class Urllib3RegistryClient(RegistryReader[urllib3.BaseHTTPResponse]):
    """One repository on one registry over urllib3 (``pool`` is the I/O seam: any ``urllib3.PoolManager``)."""

    def __init__(
        self,
        registry: str,
        repository: str,
        *,
        pool: urllib3.PoolManager | None = None,
        **options: Unpack[ReaderOptions],
    ) -> None:
        super().__init__(registry, repository, **options)
        # No retries and no redirects here: RegistryReader follows redirects by its rules, the agent backs off.
        self._timeout = urllib3.Timeout(connect=self.timeout, read=self.timeout)
        self._pool = pool or urllib3.PoolManager(num_pools=4, timeout=self._timeout, retries=False)
        self._proxied: dict[str, urllib3.ProxyManager] = {}
        proxies = {} if pool is not None else getproxies()
        self._proxies = {k: v for k, v in proxies.items() if k in ("http", "https", "all")}
        self._no_proxy = [h.strip().lstrip(".").lower() for h in proxies.get("no", "").split(",") if h.strip()]

    def close(self) -> None:
        self._pool.clear()
        for manager in self._proxied.values():
            manager.clear()

    def _manager(self, url: str) -> urllib3.PoolManager:
        """The pool for ``url``: a proxy's when the environment names one for its scheme and ``no_proxy`` spares
        it not."""
        parts = urlsplit(url)
        proxy = self._proxies.get(parts.scheme) or self._proxies.get("all")
        host = (parts.hostname or "").lower()
        if not proxy or any(h in ("*", host) or host.endswith("." + h) for h in self._no_proxy):
            return self._pool
        if proxy not in self._proxied:
            self._proxied[proxy] = urllib3.ProxyManager(proxy, num_pools=4, timeout=self._timeout, retries=False)
        return self._proxied[proxy]

    def _transmit(
        self, method: str, url: str, headers: dict[str, str], content: bytes | None, stream: bool
    ) -> urllib3.BaseHTTPResponse:
        try:
            return self._manager(url).request(
                method,
                url,
                body=content,
                headers=headers,
                preload_content=not stream,
                decode_content=True,
                redirect=False,
                retries=False,
            )
        except LocationParseError as exc:
            raise MalformedContent(f"{method} {url}: the registry sent an invalid URL: {exc}") from exc
        except (HTTPError, OSError, ValueError) as exc:  # connect/read timeouts, refused, reset, TLS, bad status line
            raise RegistryUnavailable(
                f"{method} {url}: {type(exc).__name__}: {exc}; is the registry up? retry later"
            ) from exc

    def _status(self, response: urllib3.BaseHTTPResponse) -> int:
        return response.status

    def _header(self, response: urllib3.BaseHTTPResponse, name: str) -> str | None:
        value = response.headers.get(name)
        return None if value is None else str(value)

    def _body(self, response: urllib3.BaseHTTPResponse) -> bytes:
        return response.data

    def _chunks(self, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        try:
            while True:
                # read1: whatever has arrived (stream() would wait for a full chunk, so a server dripping a
                # byte a second would never reach the caller's deadline check); at most _CHUNK decoded bytes.
                chunk = response.read1(_CHUNK, decode_content=True)
                if not chunk:
                    return
                yield chunk
        except DecodeError as exc:
            raise BodyError(str(exc), undecodable=True) from exc
        except (HTTPError, OSError) as exc:
            raise BodyError(f"{type(exc).__name__}: {exc}") from exc

    def _close(self, response: urllib3.BaseHTTPResponse) -> None:
        # A body left unread (over its cap, an error page) is not drained: the connection is dropped instead.
        response.close()
        response.release_conn()
