from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from edge_runtime.bundle import (
    MODEL_JSON,
    MODEL_ONNX,
    BundleError,
    FieldReference,
    GoldenVectors,
    ModelCard,
    OnnxInfo,
    ReferenceHistogram,
    bundle_digest,
    load_bundle,
    write_bundle,
)
from edge_runtime.features import FeatureSpec

ONNX_BYTES = b"not really onnx, the bundle module does not parse it"


def make_card(**overrides: object) -> ModelCard:
    fields: dict[str, object] = {
        "name": "pump",
        "version": "3",
        "detector": "iforest",
        "features": FeatureSpec(("temperature", "pressure"), window=4),
        "threshold": 0.5,
        "onnx": OnnxInfo(sha256=hashlib.sha256(ONNX_BYTES).hexdigest(), opset=17),
        "golden": GoldenVectors(readings=[[1.0, 2.0], [1.5, 2.5]], scores=[0.1, 0.2], tolerance=1e-4),
        "metrics": {"f1": 0.9},
        "mlflow": {"run_id": "abc", "model_uri": "models:/pump/3"},
    }
    fields.update(overrides)
    return ModelCard(**fields)  # type: ignore[arg-type]


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    card = make_card()
    bundle = write_bundle(tmp_path / "b", card, ONNX_BYTES)
    assert bundle.card == card
    assert (tmp_path / "b" / MODEL_ONNX).read_bytes() == ONNX_BYTES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary leftovers


def test_rewriting_a_bundle_replaces_it_whole(tmp_path: Path) -> None:
    write_bundle(tmp_path / "b", make_card(), ONNX_BYTES)
    write_bundle(tmp_path / "b", make_card(version="4"), ONNX_BYTES)
    assert load_bundle(tmp_path / "b").card.version == "4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_write_refuses_a_card_whose_hash_does_not_match(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not match"):
        write_bundle(tmp_path / "b", make_card(), ONNX_BYTES + b"x")
    assert not (tmp_path / "b").exists()


def test_tampered_model_is_refused_with_both_hashes(tmp_path: Path) -> None:
    write_bundle(tmp_path / "b", make_card(), ONNX_BYTES)
    (tmp_path / "b" / MODEL_ONNX).write_bytes(ONNX_BYTES + b"tampered")
    with pytest.raises(BundleError, match="changed or corrupted"):
        load_bundle(tmp_path / "b")


def _edit_card(path: Path, edit: object) -> None:
    data = json.loads((path / MODEL_JSON).read_text())
    edit(data)  # type: ignore[operator]
    (path / MODEL_JSON).write_text(json.dumps(data))


def with_reference(d: dict) -> dict:
    hist = {"edges": [1.0, 2.0], "fractions": [0.25, 0.5, 0.25]}
    d["field_reference"] = {
        "rows": 100,
        "sensors": [{"name": "temperature", **hist}, {"name": "pressure", **hist}],
        "score": dict(hist),
    }
    return d["field_reference"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: with_reference(d)["sensors"].reverse(), "must list the feature spec's sensors in order"),
        (lambda d: with_reference(d)["score"].update(edges=[2.0, 1.0]), "strictly increasing"),
        (lambda d: with_reference(d)["score"].update(edges=[1.0, 1.0]), "strictly increasing"),
        (lambda d: with_reference(d)["score"].update(fractions=[0.5, 0.5]), "2 edges make 3 buckets"),
        (lambda d: with_reference(d)["score"].update(fractions=[0.5, 0.5, 0.5]), "sum to 1"),
        (lambda d: with_reference(d)["score"].update(fractions=[-0.5, 1.0, 0.5]), "must be >= 0"),
        (lambda d: with_reference(d)["score"].update(edges=[1.0, float("inf")]), "edge 1 is inf"),
        (lambda d: with_reference(d).update(rows=0), "rows 0 must be >= 1"),
        (lambda d: with_reference(d).update(rows="many"), "field 'rows'"),
        (lambda d: with_reference(d).pop("score"), "missing field 'score'"),
        (lambda d: d.update(field_reference=[]), "field_reference must be an object"),
    ],
)
def test_invalid_field_references_name_the_field(tmp_path: Path, edit: object, message: str) -> None:
    write_bundle(tmp_path / "b", make_card(), ONNX_BYTES)
    _edit_card(tmp_path / "b", edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(tmp_path / "b")


def test_field_reference_round_trips_and_is_optional(tmp_path: Path) -> None:
    hist = ReferenceHistogram((1.0, 2.0), (0.25, 0.5, 0.25))
    reference = FieldReference((("temperature", hist), ("pressure", hist)), hist, rows=100, source="test")
    card = make_card(field_reference=reference)
    assert write_bundle(tmp_path / "with", card, ONNX_BYTES).card == card
    without = write_bundle(tmp_path / "without", make_card(), ONNX_BYTES)
    assert without.card.field_reference is None
    assert "field_reference" not in json.loads((tmp_path / "without" / MODEL_JSON).read_text())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("name"), "missing field 'name'"),
        (lambda d: d.update(schema_version=99), "schema_version 99 is not supported"),
        (lambda d: d["score"].update(threshold="high"), "threshold"),
        (lambda d: d["score"].update(semantics="lower_is_worse"), "semantics"),
        (lambda d: d["onnx"].update(sha256="xyz"), "64 lowercase hex"),
        (lambda d: d["onnx"].update(quantization="int4"), "quantization"),
        (lambda d: d["onnx"].update(file="../evil.onnx"), "hold 'model.onnx'"),
        (lambda d: d["onnx"].update(file="weights.onnx"), "onnx file 'weights.onnx' is not supported"),
        (lambda d: d["golden"].update(scores=["x", 0.2]), "golden score 0 is 'x'"),
        (lambda d: d["golden"].update(scores=[None, 0.2]), "golden score 0 is None"),
        (lambda d: d["golden"].update(scores=[float("nan"), 0.2]), "golden score 0 is nan"),
        (lambda d: d["golden"].update(scores=[10**400, 0.2]), "golden score 0 is 1000"),
        (lambda d: d["golden"].update(readings=[[1.0, "x"], [1.5, 2.5]]), r"golden reading 0\[1\] is 'x'"),
        (lambda d: d["golden"].update(readings=[[1.0, None], [1.5, 2.5]]), r"golden reading 0\[1\] is None"),
        (lambda d: d["golden"].update(readings=[[1.0, True], [1.5, 2.5]]), r"golden reading 0\[1\] is True"),
        (lambda d: d["golden"].update(tolerance=float("inf")), "golden tolerance is inf"),
        (lambda d: d["golden"].update(tolerance=float("nan")), "golden tolerance is nan"),
        (lambda d: d["golden"].update(tolerance=-1e-4), "golden tolerance -0.0001 must be a finite number > 0"),
        (lambda d: d["golden"].update(tolerance=0), "golden tolerance 0.0 must be a finite number > 0"),
        (lambda d: d["golden"].update(tolerance="1e-4"), "golden"),
        (lambda d: d["golden"].update(scores=[0.1]), "as many scores as readings"),
        (lambda d: d["golden"].update(readings=[[1.0], [2.0]]), "must list 2 values"),
        (lambda d: d["features"].update(window=True), "window"),
        (lambda d: d["features"].update(sensors=[]), "at least one sensor"),
    ],
)
def test_invalid_cards_name_the_field(tmp_path: Path, edit: object, message: str) -> None:
    write_bundle(tmp_path / "b", make_card(), ONNX_BYTES)
    _edit_card(tmp_path / "b", edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(tmp_path / "b")


def test_missing_directory_and_files_are_explained(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"no model\.json"):
        load_bundle(tmp_path / "empty")
    (tmp_path / "empty" / MODEL_JSON).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path / "empty")


def test_digest_changes_with_either_file(tmp_path: Path) -> None:
    write_bundle(tmp_path / "a", make_card(), ONNX_BYTES)
    write_bundle(tmp_path / "b", make_card(version="4"), ONNX_BYTES)
    assert bundle_digest(tmp_path / "a").startswith("sha256:")
    assert bundle_digest(tmp_path / "a") != bundle_digest(tmp_path / "b")
    assert bundle_digest(tmp_path / "a") == load_bundle(tmp_path / "a").digest


def test_public_dict_hides_golden_readings() -> None:
    public = make_card().public_dict()
    assert public["golden"] == {"count": 2, "tolerance": 1e-4}
    assert public["onnx"]["quantization"] == "none"


def test_write_refuses_a_model_file_the_digest_would_not_cover(tmp_path: Path) -> None:
    """bundle_digest and the baked layer hash model.onnx: a card naming another file is refused up front."""
    card = make_card(onnx=OnnxInfo(sha256=hashlib.sha256(ONNX_BYTES).hexdigest(), opset=17, file="weights.onnx"))
    with pytest.raises(BundleError, match=r"'weights\.onnx' is not supported"):
        write_bundle(tmp_path / "b", card, ONNX_BYTES)
    assert not (tmp_path / "b").exists()
