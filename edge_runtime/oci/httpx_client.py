""":class:`RegistryClient`: the registry read core (:mod:`edge_runtime.oci.client`) over httpx.

The MLOps side's client: ``registry.oci.remote`` pushes through :meth:`RegistryClient.request` (it returns an
``httpx.Response``), and tests swap in ``httpx.MockTransport``. The device's agent uses
:class:`edge_runtime.oci.urllib3_client.Urllib3RegistryClient` instead and never imports httpx.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Unpack

import httpx

from edge_runtime.errors import MalformedContent, RegistryUnavailable
from edge_runtime.oci.client import BodyError, ReaderOptions, RegistryReader


class RegistryClient(RegistryReader[httpx.Response]):
    """One repository on one registry over httpx (``transport`` is the I/O seam)."""

    def __init__(
        self,
        registry: str,
        repository: str,
        *,
        transport: httpx.BaseTransport | None = None,
        **options: Unpack[ReaderOptions],
    ) -> None:
        super().__init__(registry, repository, **options)
        # Redirects are followed by RegistryReader (its rules: the cap, no https -> http, credentials stay home).
        self._http = httpx.Client(transport=transport, timeout=self.timeout, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def _transmit(
        self, method: str, url: str, headers: dict[str, str], content: bytes | None, stream: bool
    ) -> httpx.Response:
        try:
            request = self._http.build_request(method, url, headers=headers, content=content)
            return self._http.send(request, stream=stream)
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise RegistryUnavailable(
                f"{method} {url}: {type(exc).__name__}: {exc}; is the registry up? retry later"
            ) from exc
        except httpx.InvalidURL as exc:
            raise MalformedContent(f"{method} {url}: the registry sent an invalid URL: {exc}") from exc

    def _status(self, response: httpx.Response) -> int:
        return response.status_code

    def _header(self, response: httpx.Response, name: str) -> str | None:
        return response.headers.get(name)

    def _body(self, response: httpx.Response) -> bytes:
        return response.content

    def _chunks(self, response: httpx.Response) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes()  # decodes Content-Encoding
        except httpx.DecodingError as exc:
            raise BodyError(str(exc), undecodable=True) from exc
        except httpx.TransportError as exc:
            raise BodyError(f"{type(exc).__name__}: {exc}") from exc

    def _close(self, response: httpx.Response) -> None:
        response.close()
