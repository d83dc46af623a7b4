"""``bake`` against a real docker-registry, checked with skopeo (an independent client)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_runtime.bundle import Bundle
from edge_runtime.oci import LABEL_BUNDLE_DIGEST, LABEL_MODEL_NAME, LABEL_MODEL_VERSION, RegistryClient
from registry.bake import bake, tag
from registry.oci.layout import Layout
from registry.oci.remote import Remote
from tests.conftest import require
from tests.registry.oci.fakes import sha, write_fake_base

pytestmark = pytest.mark.integration


def skopeo(*args: str) -> str:
    require(shutil.which("skopeo") is not None, "skopeo", "apt-get install -y skopeo")
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, check=True, timeout=300).stdout


@pytest.fixture(scope="module")
def small_base(oci_registry: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny two-platform base pushed with skopeo, so the registry holds something otaml did not write."""
    layout = tmp_path_factory.mktemp("small-base") / "layout"
    write_fake_base(layout)
    ref = f"{oci_registry}/test/base:base"
    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{layout}:base", f"docker://{ref}")
    return ref


def test_bake_push_is_incremental_and_skopeo_sees_both_platforms(
    oci_registry: str, small_base: str, model_bundle: Bundle, tmp_path: Path
) -> None:
    to = f"{oci_registry}/test/model"
    first = bake(small_base, model_bundle.path, to, "model-v1")
    assert first.bytes_uploaded > first.layer_size  # base layers mounted or copied, model layer + configs sent
    second = bake(small_base, model_bundle.path, to, "model-v1")
    assert (second.index_digest, second.bytes_uploaded) == (first.index_digest, 0)

    raw = json.loads(skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{to}:model-v1"))
    assert {m["platform"]["architecture"] for m in raw["manifests"]} == {"amd64", "arm64"}
    for arch in ("amd64", "arm64"):
        info = json.loads(skopeo("inspect", "--tls-verify=false", "--override-arch", arch, f"docker://{to}:model-v1"))
        assert info["Architecture"] == arch
        assert info["Labels"][LABEL_MODEL_NAME] == "pump-anomaly"
        assert info["Labels"][LABEL_MODEL_VERSION] == "1"
        assert info["Labels"][LABEL_BUNDLE_DIGEST] == model_bundle.digest
        assert len(info["Layers"]) == 2

    # Round trip: skopeo copies the whole index to a layout, and our layout reader reads it back.
    out = tmp_path / "copy"
    skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{to}:model-v1", f"oci:{out}:model-v1")
    _data, _, digest = Layout(out).read_manifest("model-v1")
    assert digest == first.index_digest
    with RegistryClient(oci_registry, "test/model") as client:
        labels = client.image_labels("model-v1", "linux", "arm64")
    assert labels[LABEL_BUNDLE_DIGEST] == model_bundle.digest


def test_tags_immutable_and_channels_move_on_a_real_registry(
    oci_registry: str, small_base: str, model_bundle: Bundle, tmp_path: Path
) -> None:
    from registry.oci.errors import TagConflict
    from tests.fixtures.bundles import build_bundle

    to = f"{oci_registry}/test/tags"
    v1 = bake(small_base, model_bundle.path, to, "model-v1")
    v2 = bake(small_base, build_bundle(tmp_path / "v2", version="2", seed=3).path, to)
    assert v2.tags == ("model-v2",)
    assert v2.bytes_uploaded < v1.bytes_uploaded  # the base layers are already there
    with pytest.raises(TagConflict):
        tag(f"{to}:model-v2", "model-v1")
    assert tag(f"{to}:model-v1", "production") == v1.index_digest
    assert tag(f"{to}:model-v2", "production") == v2.index_digest
    with RegistryClient(oci_registry, "test/tags") as client:
        desc = client.head_manifest("production")
    assert desc is not None
    assert desc.digest == v2.index_digest
    assert Remote(RegistryClient(oci_registry, "test/tags")).tags() == ["model-v1", "model-v2", "production"]


def test_chunked_upload_to_a_real_registry(oci_registry: str) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    store = Remote(RegistryClient(oci_registry, "test/chunked"), chunk_size=300_000)
    assert store.write_blob(data, sha(data)) == len(data)
    assert store.read_blob(sha(data)) == data
    assert store.write_blob(data, sha(data)) == 0
