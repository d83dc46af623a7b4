"""The one place the device's TUF client reads the network: every read capped in size and in total time.

ngclient trusts a length signed in the metadata above a file more than its own configured cap (a compromised
timestamp key could sign a huge snapshot length); this wrapper applies the device's cap to every file whatever
the metadata says, and stops a slow drip after ``max_seconds``, not only after a silent socket timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

from tuf.api import exceptions
from tuf.ngclient import FetcherInterface

from edge_runtime.trust.limits import MetadataLimits


def role_of(url: str) -> str:
    """The role whose cap applies to ``url`` (``timestamp.json``, ``<N>.root.json``, ...); targets otherwise."""
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    for role in ("root", "snapshot", "timestamp"):
        if name == f"{role}.json" or name.endswith(f".{role}.json"):
            return role
    return "targets"


class CappedFetcher(FetcherInterface):
    """Wraps any fetcher (the real urllib3 one, or a test double) with per-role size caps and a total deadline."""

    def __init__(
        self, inner: FetcherInterface, limits: MetadataLimits, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._inner = inner
        self._limits = limits
        self._clock = clock

    def _fetch(self, url: str) -> Iterator[bytes]:
        cap = self._limits.cap(role_of(url))
        deadline = self._clock() + self._limits.max_seconds
        chunks = self._inner.fetch(url)
        return self._bounded(url, chunks, cap, deadline)

    def _bounded(self, url: str, chunks: Iterator[bytes], cap: int, deadline: float) -> Iterator[bytes]:
        received = 0
        try:
            for chunk in chunks:
                received += len(chunk)
                if received > cap:
                    raise exceptions.DownloadLengthMismatchError(
                        f"{url} is larger than its cap of {cap} bytes (got {received} so far)"
                    )
                if self._clock() > deadline:
                    raise exceptions.SlowRetrievalError(
                        f"{url} took longer than {self._limits.max_seconds:g} s ({received} bytes so far)"
                    )
                yield chunk
        except exceptions.DownloadError:
            raise
        except Exception as exc:  # a transport error mid-body: ngclient expects DownloadError only
            raise exceptions.DownloadError(f"reading {url}: {exc}") from exc
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
