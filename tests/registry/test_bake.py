from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.bundle import Bundle, BundleError
from edge_runtime.oci import LABEL_BUNDLE_DIGEST, LABEL_MODEL_VERSION, OCI_INDEX, config_labels, select_platform
from registry.bake import bake, tag
from registry.oci.errors import TagConflict
from registry.oci.layout import Layout
from tests.registry.oci.fakes import FakeRegistry, write_fake_base


@pytest.fixture
def base(tmp_path: Path) -> str:
    write_fake_base(tmp_path / "base")
    return f"oci:{tmp_path / 'base'}:base"


def read_index(layout: Layout, ref: str) -> dict[str, Any]:
    data, media_type, _ = layout.read_manifest(ref)
    assert media_type == OCI_INDEX
    return dict(json.loads(data))


def test_bake_appends_one_layer_to_every_platform(base: str, model_bundle: Bundle, tmp_path: Path) -> None:
    lines: list[str] = []
    result = bake(base, model_bundle.path, f"oci:{tmp_path / 'out'}", progress=lines.append)
    out = Layout(tmp_path / "out")
    assert result.tags == ("model-v1",)
    assert out.tags() == ["model-v1"]
    index = read_index(out, "model-v1")
    assert {m["platform"]["architecture"] for m in index["manifests"]} == {"amd64", "arm64"}
    assert index["annotations"][LABEL_BUNDLE_DIGEST] == model_bundle.digest
    for arch in ("amd64", "arm64"):
        manifest = json.loads(out.read_blob(select_platform(index, "linux", arch).digest))
        assert len(manifest["layers"]) == 2
        assert manifest["layers"][-1]["digest"] == result.layer_digest
        config = json.loads(out.read_blob(manifest["config"]["digest"]))
        assert config["architecture"] == arch
        assert config["rootfs"]["diff_ids"][-1] == result.diff_id
        assert config["history"][-1]["created_by"].startswith("otaml bake")
        labels = config_labels(config)
        assert labels[LABEL_MODEL_VERSION] == "1"
        assert labels["org.opencontainers.image.title"] == "otaml-runtime pump-anomaly"
        assert config["config"]["User"] == "10001:10001"  # the base's config survives
    layer = out.read_blob(result.layer_digest)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        assert sorted(tar.getnames()) == ["opt", "opt/model", "opt/model/model.json", "opt/model/model.onnx"]
        assert tar.extractfile("opt/model/model.onnx").read() == model_bundle.onnx_path.read_bytes()  # type: ignore[union-attr]
    assert any("model layer" in line for line in lines)
    assert result.bytes_uploaded > result.layer_size  # base layers were copied from the source layout


def test_same_bundle_same_base_same_digests(base: str, model_bundle: Bundle, tmp_path: Path) -> None:
    first = bake(base, model_bundle.path, f"oci:{tmp_path / 'a'}")
    copy = tmp_path / "bundle-copy"
    shutil.copytree(model_bundle.path, copy)
    second = bake(base, copy, f"oci:{tmp_path / 'b'}")
    assert first.index_digest == second.index_digest
    assert first.manifests == second.manifests
    again = bake(base, model_bundle.path, f"oci:{tmp_path / 'a'}")
    assert again.index_digest == first.index_digest
    assert again.bytes_uploaded == 0


def test_model_tags_are_immutable_unless_forced(base: str, model_bundle: Bundle, tmp_path: Path) -> None:
    from tests.fixtures.bundles import build_bundle

    out = f"oci:{tmp_path / 'out'}"
    first = bake(base, model_bundle.path, out, "model-v1")
    other = build_bundle(tmp_path / "other", version="1", seed=7)
    with pytest.raises(TagConflict, match=r"model-v1 .* already names"):
        bake(base, other.path, out, "model-v1")
    assert Layout(tmp_path / "out").resolve("model-v1").digest == first.index_digest  # type: ignore[union-attr]
    forced = bake(base, other.path, out, "model-v1", force=True)
    assert Layout(tmp_path / "out").resolve("model-v1").digest == forced.index_digest  # type: ignore[union-attr]


def test_channel_tags_move_and_model_tags_do_not(base: str, model_bundle: Bundle, tmp_path: Path) -> None:
    out = tmp_path / "out"
    v1 = bake(base, model_bundle.path, f"oci:{out}", "model-v1")
    assert tag(f"oci:{out}:model-v1", "production") == v1.index_digest
    assert Layout(out).resolve("production").digest == v1.index_digest  # type: ignore[union-attr]
    Layout(out).write_manifest(b'{"mediaType":"%s","manifests":[]}' % OCI_INDEX.encode(), OCI_INDEX, "other")
    tag(f"oci:{out}:other", "production")  # channel tags move freely
    with pytest.raises(TagConflict):
        tag(f"oci:{out}:other", "model-v1")


def test_single_manifest_base_gives_an_index(model_bundle: Bundle, tmp_path: Path) -> None:
    layout = write_fake_base(tmp_path / "multi", platforms=("arm64",))
    index = read_index(layout, "base")
    only = index["manifests"][0]
    data, media_type, _ = layout.read_manifest(only["digest"])
    layout.write_manifest(data, media_type, "bare")
    result = bake(f"oci:{tmp_path / 'multi'}:bare", model_bundle.path, f"oci:{tmp_path / 'out'}:model-v1")
    assert [m.platform for m in result.manifests] == ["linux/arm64"]
    assert read_index(Layout(tmp_path / "out"), "model-v1")["manifests"][0]["platform"]["architecture"] == "arm64"


def test_bake_to_a_registry_uploads_only_what_is_missing(base: str, model_bundle: Bundle) -> None:
    fake = FakeRegistry()
    transport = fake.transport()
    first = bake(base, model_bundle.path, "127.0.0.1:5000/otaml/runtime", transport=transport)
    assert first.bytes_uploaded == fake.blob_bytes_received > 0
    assert fake.manifests["otaml/runtime"]["model-v1"][1] == OCI_INDEX
    again = bake(base, model_bundle.path, "127.0.0.1:5000/otaml/runtime", transport=transport)
    assert (again.bytes_uploaded, again.index_digest) == (0, first.index_digest)


def test_a_broken_bundle_is_refused_before_anything_is_written(base: str, model_bundle: Bundle, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(model_bundle.path, broken)
    (broken / "model.onnx").chmod(0o644)
    (broken / "model.onnx").write_bytes(b"not the model")
    with pytest.raises(BundleError, match=r"^reading bundle"):
        bake(base, broken, f"oci:{tmp_path / 'out'}")
    assert not (tmp_path / "out").exists()
