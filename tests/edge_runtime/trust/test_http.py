"""The trust client against a real HTTP server (http.server in a thread) with python-tuf's real urllib3 fetcher.

This covers for real what ``fakes.DirectoryFetcher`` stands in for elsewhere: files served by path, 404 for the
root version after the newest, bodies in chunks, and the connection itself.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.trust.client import TrustClient, TrustSettings
from edge_runtime.trust.errors import MetadataUnavailable, NotApproved, OversizedMetadata, RollbackRefused
from otaml.ports import free_port
from registry.tuf import keys
from tests.registry.tuf.fleet import Fleet, image, make_fleet

pytestmark = pytest.mark.integration


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Fleet, str]]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    fleet = make_fleet(tmp_path / "repo")
    fleet.approve(image(7))
    handler = functools.partial(_QuietHandler, directory=str(fleet.path))
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fleet, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def client_for(tmp_path: Path, fleet: Fleet, url: str) -> TrustClient:
    trusted_root = tmp_path / "device-root.json"
    trusted_root.write_bytes(fleet.store.read("1.root.json"))
    return TrustClient(TrustSettings(url, trusted_root, tmp_path / "device-tuf"))


def test_approvals_rotation_and_rollback_over_real_http(tmp_path: Path, served: tuple[Fleet, str]) -> None:
    fleet, url = served
    client = client_for(tmp_path, fleet, url)
    assert client.approval(image(7).digest, channel="production", model="pump-anomaly").version == 7
    with pytest.raises(NotApproved):
        client.approval(image(8).digest, channel="production", model="pump-anomaly")

    old_timestamp = fleet.store.read("timestamp.json")
    new_key = keys.generate()
    fleet.repo.rotate(
        "targets",
        add=[new_key.public_key],
        remove=[fleet.targets_keys[0].public_key.keyid],
        root_signers=fleet.root_keys[:2],
        role_signers=[new_key, fleet.targets_keys[1]],
    )
    fleet.targets_keys = [new_key, fleet.targets_keys[1], fleet.targets_keys[2]]
    fleet.approve(image(8))
    assert client.approval(image(8).digest, channel="production", model="pump-anomaly").version == 8
    assert (tmp_path / "device-tuf" / "root_history" / "2.root.json").is_file()  # walked the chain, stopped at 404

    (fleet.path / "timestamp.json").write_bytes(old_timestamp)  # the server now replays an older publication
    with pytest.raises(RollbackRefused):
        client.refresh()


def test_an_oversized_file_over_real_http_is_cut_at_its_cap(tmp_path: Path, served: tuple[Fleet, str]) -> None:
    fleet, url = served
    (fleet.path / "timestamp.json").write_bytes(b" " * (4 * 1024 * 1024))
    with pytest.raises(OversizedMetadata, match="cap of 16384 bytes"):
        client_for(tmp_path, fleet, url).refresh()


def test_a_repository_nobody_listens_on_is_unavailable(tmp_path: Path, served: tuple[Fleet, str]) -> None:
    fleet, _ = served
    client = client_for(tmp_path, fleet, f"http://127.0.0.1:{free_port()}/")
    with pytest.raises(MetadataUnavailable, match="retrying later"):
        client.refresh()


def test_a_rollout_record_over_real_http(tmp_path: Path, served: tuple[Fleet, str]) -> None:
    """The delegated rollouts role fetched by the real urllib3 fetcher: record, then its halt on the next poll."""
    from edge_runtime.fleet.rollout import RolloutRecord

    fleet, url = served
    assert fleet.rollouts_key is not None
    fleet.approve(image(8))
    record = RolloutRecord(
        rollout_id="pump-anomaly-v8-http", model="pump-anomaly", channel="production", version=8, stable_version=7,
        waves=(50, 100),
    )  # fmt: skip
    fleet.repo.publish_rollout(record, fleet.rollouts_key)
    client = client_for(tmp_path, fleet, url)
    client.refresh()
    assert client.rollout("production", "pump-anomaly") == record
    fleet.repo.publish_rollout(RolloutRecord.from_dict({**record.to_dict(), "state": "halted"}), fleet.rollouts_key)
    client.refresh()
    halted = client.rollout("production", "pump-anomaly")
    assert halted is not None
    assert halted.state == "halted"
    assert client.rollout("staging", "pump-anomaly") is None
