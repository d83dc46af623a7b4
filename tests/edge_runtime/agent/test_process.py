"""ProcessRuntime: images from an OCI layout, services as real ``python -m edge_runtime serve`` processes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_runtime.agent.canary import HttpProber, golden_from_layers
from edge_runtime.agent.process import ProcessRuntime
from edge_runtime.agent.runtime import ContainerSpec
from edge_runtime.agent.source import RegistrySource
from edge_runtime.bundle import Bundle
from edge_runtime.errors import NotFound
from otaml.demo_embedded import LayoutClient, minimal_base_image
from otaml.ports import free_port
from registry.bake import bake
from registry.oci.layout import Layout

pytestmark = pytest.mark.integration


def test_pull_start_stop_from_a_layout(tmp_path: Path, model_bundle: Bundle) -> None:
    base = minimal_base_image(tmp_path / "base", "linux/amd64")
    baked = bake(base, model_bundle.path, f"oci:{tmp_path / 'images'}", tag="model-v1")
    client = LayoutClient(Layout(tmp_path / "images"))
    runtime = ProcessRuntime(client, tmp_path / "device")
    ref = f"embedded.invalid/demo@{baked.digest}"

    pulled = runtime.pull(ref, "linux/amd64")
    assert pulled.bytes_fetched >= baked.layer_size
    assert runtime.has_image(ref)
    assert runtime.list_images() == [ref]
    assert runtime.pull(ref, "linux/amd64").bytes_fetched == 0  # blobs already in the local store
    resolved = RegistrySource(client, "demo", "model-v1").resolve(baked.digest, "linux/amd64")
    assert golden_from_layers(runtime, resolved.layers, ref).scores == list(model_bundle.card.golden.scores)

    port = free_port()
    spec = ContainerSpec(name="svc", image=ref, env={"OTAML_PORT": str(port), "OTAML_HOST": "127.0.0.1"})
    runtime.start(spec)
    try:
        prober = HttpProber(timeout_s=1)
        deadline = time.monotonic() + 60
        while not prober.ready(port):
            assert runtime.status("svc").running, runtime.logs("svc")
            assert time.monotonic() < deadline, runtime.logs("svc")
            time.sleep(0.2)
        assert [c.name for c in runtime.list_containers()] == ["svc"]
    finally:
        runtime.stop("svc", timeout_s=5)
    with pytest.raises(NotFound):
        runtime.status("svc")
    runtime.stop("svc", timeout_s=5)  # idempotent
    runtime.remove_image(ref)
    assert runtime.list_images() == []


class CountingClient(LayoutClient):
    """The layout, counting the blobs fetched from it (the registry side of the cache)."""

    def __init__(self, layout: Layout) -> None:
        super().__init__(layout)
        self.blobs: list[str] = []

    def get_blob(self, digest: str, max_bytes: int | None = None) -> bytes:
        self.blobs.append(digest)
        return super().get_blob(digest, max_bytes)


def test_devices_sharing_a_blob_cache_fetch_each_blob_once(tmp_path: Path, model_bundle: Bundle) -> None:
    from otaml.local_fleet import BlobCache

    base = minimal_base_image(tmp_path / "base", "linux/amd64")
    baked = bake(base, model_bundle.path, f"oci:{tmp_path / 'images'}", tag="model-v1")
    client = CountingClient(Layout(tmp_path / "images"))
    cache = BlobCache(tmp_path / "cache")
    ref = f"embedded.invalid/demo@{baked.digest}"
    devices = [ProcessRuntime(client, tmp_path / f"device-{i}", blob_cache=cache.path) for i in range(3)]
    fetched = [d.pull(ref, "linux/amd64").bytes_fetched for d in devices]

    assert fetched[0] >= baked.layer_size
    assert fetched[1:] == [0, 0]  # from the cache, not the registry
    assert len(client.blobs) == len(set(client.blobs)) == cache.fetched
    for device in devices:
        bundle = tmp_path / device.root.name / "images" / baked.digest.removeprefix("sha256:") / "opt/model"
        assert (bundle / "model.json").read_bytes() == (model_bundle.path / "model.json").read_bytes()
        assert device.read_blob(baked.layer_digest) == client.layout.read_blob(baked.layer_digest)


def test_a_failed_fetch_leaves_nothing_in_the_cache(tmp_path: Path) -> None:
    from otaml.local_fleet import BlobCache

    cache = BlobCache(tmp_path / "cache")
    digest = "sha256:" + "a" * 64

    def broken(_digest: str) -> bytes:
        raise NotFound("the registry has no such blob")

    with pytest.raises(NotFound):
        cache.path(digest, broken)
    assert list((tmp_path / "cache").iterdir()) == []
    path, fetched = cache.path(digest, lambda _d: b"blob")
    assert (path.read_bytes(), fetched) == (b"blob", 4)
    assert cache.path(digest, broken) == (path, 0)  # a hit: the registry is not asked again
