"""The I/O seam of the trust client, faked: a fetcher that serves a repository directory (or an attacker's).

What it fakes, the HTTP transfer, is exercised for real by ``test_http.py`` (a real HTTP server, the real
urllib3 fetcher).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface

from edge_runtime.trust.client import TrustClient, TrustSettings
from edge_runtime.trust.limits import MetadataLimits
from registry.tuf.repository import FleetRepository
from registry.tuf.store import DirectoryStore
from tests.registry.tuf.fleet import Fleet

BASE_URL = "http://repo.test/tuf/"
CHUNK = 16 * 1024


class DirectoryFetcher(FetcherInterface):
    """Serves ``root``'s files under :data:`BASE_URL`; ``overrides`` replace a file's body (bytes or chunks)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.overrides: dict[str, bytes | Iterable[bytes]] = {}
        self.status: dict[str, int] = {}
        self.requests: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.requests.append(url)
        if not url.startswith(BASE_URL):
            raise DownloadHTTPError(f"no such host for {url}", 404)
        name = url.removeprefix(BASE_URL)
        if name in self.status:
            raise DownloadHTTPError(f"HTTP {self.status[name]} for {url}", self.status[name])
        if name in self.overrides:
            body = self.overrides[name]
            return iter([body]) if isinstance(body, bytes) else iter(body)
        path = self.root / name
        if "/" in name or not path.is_file():
            raise DownloadHTTPError(f"404 for {url}", 404)
        data = path.read_bytes()
        return iter([data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""])


@dataclass
class Device:
    """A device provisioned with the fleet's first root, talking to the repository through ``fetcher``."""

    client: TrustClient
    fetcher: DirectoryFetcher
    settings: TrustSettings

    def restarted(self) -> Device:
        """The same device after a restart: a new client over the same trusted root and metadata directory."""
        return Device(TrustClient(self.settings, fetcher=self.fetcher), self.fetcher, self.settings)


def provision(tmp_path: Path, fleet: Fleet, limits: MetadataLimits | None = None) -> Device:
    home = tmp_path / "device"
    home.mkdir(parents=True, exist_ok=True)
    trusted_root = home / "root.json"
    trusted_root.write_bytes(fleet.store.read("1.root.json"))
    settings = TrustSettings(
        metadata_url=BASE_URL,
        trusted_root=trusted_root,
        metadata_dir=home / "tuf",
        limits=limits or MetadataLimits(),
    )
    fetcher = DirectoryFetcher(fleet.path)
    return Device(TrustClient(settings, fetcher=fetcher), fetcher, settings)


def attacker_copy(fleet: Fleet, path: Path) -> FleetRepository:
    """A copy of the published repository that an attacker controls, signing with the online keys it stole
    (snapshot and timestamp: the keys that live on a server)."""
    shutil.copytree(fleet.path, path)
    return FleetRepository(
        DirectoryStore(path), snapshot_signer=fleet.snapshot_key, timestamp_signer=fleet.timestamp_key, now=fleet.clock
    )
