"""The model bundle: ``model.onnx`` plus ``model.json``, the contract between training and devices.

This module owns the schema. ``pipeline`` writes bundles with :func:`write_bundle`, ``registry``
bakes them into images, and the device reads them with :func:`load_bundle`, which validates
everything and raises :class:`BundleError` with a message that names the field and the fix.

``model.json`` (schema version 1)::

    {
      "schema_version": 1,
      "name": "pump-anomaly", "version": "3", "detector": "iforest",
      "created_at": "2026-11-26T22:00:00Z",
      "mlflow": {"run_id": "...", "model_uri": "models:/pump-anomaly/3", "tracking_uri": "..."},
      "features": {"sensors": ["temperature", ...], "window": 16, "stats": ["mean", ...],
                   "lags": 15, "normalize": "window"},       # lags, normalize: optional (0, "none")
      "score": {"semantics": "higher_is_more_anomalous", "threshold": 0.61, "threshold_method": "..."},
      "onnx": {"file": "model.onnx", "sha256": "...", "opset": 17, "input_name": "features",
               "output_name": "score", "quantization": "none" | "int8-dynamic", "quantization_note": "..."},
      "metrics": {"f1": 0.9, ...},
      "golden": {"readings": [[...], ...], "scores": [...], "tolerance": 1e-4},
      "field_reference": {                                    # optional: the device's drift reference
        "rows": 12000, "source": "training split",
        "sensors": [{"name": "temperature", "edges": [...], "fractions": [...]}, ...],   # spec order
        "score": {"edges": [...], "fractions": [...]}
      }
    }

``field_reference`` holds fixed-bucket histograms of the training data: ``edges`` are the inner bucket
bounds (strictly increasing, finite), so ``len(edges) + 1`` buckets with open outer ones, bucket ``i``
holding values ``edges[i-1] < x <= edges[i]`` (Prometheus ``le`` semantics); ``fractions`` are the share of
training rows in each bucket. A bundle without it still loads; the device then reports no drift.

Golden vectors are raw readings of one stream, scored from an empty history; the runtime replays
them at start-up and refuses to become ready unless every score matches within ``tolerance``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.errors import OtamlError
from edge_runtime.features import FeatureSpec, FeatureSpecError

SCHEMA_VERSION = 1
MODEL_JSON = "model.json"
MODEL_ONNX = "model.onnx"
SCORE_SEMANTICS = "higher_is_more_anomalous"
QUANTIZATION_MODES = ("none", "int8-dynamic")


class BundleError(OtamlError, ValueError):
    """A model bundle is missing, malformed or does not match its own metadata."""


@dataclass(frozen=True)
class GoldenVectors:
    """Raw readings of one stream (from an empty history) and the scores the model must give."""

    readings: list[list[float]]
    scores: list[float]
    tolerance: float = 1e-4


@dataclass(frozen=True)
class ReferenceHistogram:
    """A fixed-bucket histogram: ``len(edges) + 1`` buckets (open outer ones), training share per bucket."""

    edges: tuple[float, ...]
    fractions: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "fractions": list(self.fractions)}


@dataclass(frozen=True)
class FieldReference:
    """What the device compares its field data with: per raw sensor (spec order) and for the score."""

    sensors: tuple[tuple[str, ReferenceHistogram], ...]
    score: ReferenceHistogram
    rows: int
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "source": self.source,
            "sensors": [{"name": name, **hist.to_dict()} for name, hist in self.sensors],
            "score": self.score.to_dict(),
        }


@dataclass(frozen=True)
class OnnxInfo:
    sha256: str
    opset: int
    input_name: str = "features"
    output_name: str = "score"
    quantization: str = "none"
    quantization_note: str = ""
    file: str = MODEL_ONNX


@dataclass(frozen=True)
class ModelCard:
    """The parsed, validated content of ``model.json``."""

    name: str
    version: str
    detector: str
    features: FeatureSpec
    threshold: float
    onnx: OnnxInfo
    golden: GoldenVectors
    threshold_method: str = ""
    mlflow: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION
    field_reference: FieldReference | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema_version": self.schema_version,
            "name": self.name,
            "version": self.version,
            "detector": self.detector,
            "created_at": self.created_at,
            "mlflow": dict(self.mlflow),
            "features": self.features.to_dict(),
            "score": {
                "semantics": SCORE_SEMANTICS,
                "threshold": self.threshold,
                "threshold_method": self.threshold_method,
            },
            "onnx": {
                "file": self.onnx.file,
                "sha256": self.onnx.sha256,
                "opset": self.onnx.opset,
                "input_name": self.onnx.input_name,
                "output_name": self.onnx.output_name,
                "quantization": self.onnx.quantization,
                "quantization_note": self.onnx.quantization_note,
            },
            "metrics": dict(self.metrics),
            "golden": {
                "readings": self.golden.readings,
                "scores": self.golden.scores,
                "tolerance": self.golden.tolerance,
            },
        }
        # Absent, not null, when missing: bundles written before field metrics keep their exact bytes.
        if self.field_reference is not None:
            data["field_reference"] = self.field_reference.to_dict()
        return data

    def public_dict(self) -> dict[str, Any]:
        """What a device shows about its model (``GET /v1/model``): everything but the golden data."""
        data = self.to_dict()
        golden = data.pop("golden")
        data["golden"] = {"count": len(golden["readings"]), "tolerance": golden["tolerance"]}
        return data


@dataclass(frozen=True)
class Bundle:
    """A bundle directory on disk and its validated card."""

    path: Path
    card: ModelCard

    @property
    def onnx_path(self) -> Path:
        return self.path / self.card.onnx.file

    @property
    def digest(self) -> str:
        return bundle_digest(self.path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bundle_digest(path: Path) -> str:
    """``sha256:<hex>`` over the bundle's files (name and content hash of each, sorted by name)."""
    h = hashlib.sha256()
    for name in (MODEL_JSON, MODEL_ONNX):
        file = Path(path) / name
        if not file.is_file():
            raise BundleError(f"Bundle {path} has no {name}; a bundle holds {MODEL_JSON} and {MODEL_ONNX}.")
        h.update(f"{name}\0{sha256_file(file)}\n".encode())
    return "sha256:" + h.hexdigest()


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise BundleError(f"{where}: missing field '{key}'. Re-export the bundle with `otaml train`.")
    value = data[key]
    # bool is an int in Python, but `true` is never a valid number here.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _types(kind)):
        raise BundleError(f"{where}: field '{key}' has value {value!r}; expected {_kind_name(kind)}.")
    return value


def _types(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in _types(kind))


def _finite(value: object, where: str) -> float:
    # bool is an int, but `true` is never a number here; int() of a huge int overflows float().
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BundleError(f"{where} is {value!r}; expected a finite number. Re-export the bundle.")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise BundleError(f"{where} is {value!r}; expected a finite number. Re-export the bundle.")
    return number


def _histogram(data: Any, where: str) -> ReferenceHistogram:
    if not isinstance(data, dict):
        raise BundleError(f"{where} must be an object with 'edges' and 'fractions', got {data!r}.")
    edges = [_finite(v, f"{where} edge {i}") for i, v in enumerate(_require(data, "edges", list, where))]
    fractions = [_finite(v, f"{where} fraction {i}") for i, v in enumerate(_require(data, "fractions", list, where))]
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise BundleError(f"{where}: edges {edges!r} must be strictly increasing. Re-export the bundle.")
    if len(fractions) != len(edges) + 1:
        raise BundleError(
            f"{where}: {len(edges)} edges make {len(edges) + 1} buckets, but {len(fractions)} fractions are given. "
            "Re-export the bundle."
        )
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-3:
        raise BundleError(
            f"{where}: fractions {fractions!r} must be >= 0 and sum to 1 (they sum to {sum(fractions):.6g}). "
            "Re-export the bundle."
        )
    return ReferenceHistogram(tuple(edges), tuple(fractions))


def parse_field_reference(data: Any, features: FeatureSpec, where: str = MODEL_JSON) -> FieldReference:
    """Validate a decoded ``field_reference`` section against the card's feature spec."""
    where = f"{where} field_reference"
    if not isinstance(data, dict):
        raise BundleError(f"{where} must be an object, got {type(data).__name__}.")
    rows = _require(data, "rows", int, where)
    if rows < 1:
        raise BundleError(f"{where}: rows {rows!r} must be >= 1 (the training rows the histograms count).")
    sensors = _require(data, "sensors", list, where)
    names = [entry.get("name") if isinstance(entry, dict) else None for entry in sensors]
    if names != list(features.sensors):
        raise BundleError(
            f"{where}: sensors {names!r} must list the feature spec's sensors in order, {list(features.sensors)!r}. "
            "Re-export the bundle."
        )
    return FieldReference(
        sensors=tuple(
            (name, _histogram(entry, f"{where} sensor {name!r}")) for name, entry in zip(names, sensors, strict=True)
        ),
        score=_histogram(_require(data, "score", dict, where), f"{where} score"),
        rows=rows,
        source=str(data.get("source", "")),
    )


def parse_card(data: Any, where: str = MODEL_JSON) -> ModelCard:
    """Validate a decoded ``model.json`` and return its card."""
    if not isinstance(data, dict):
        raise BundleError(f"{where}: expected a JSON object, got {type(data).__name__}.")
    schema = _require(data, "schema_version", int, where)
    if schema != SCHEMA_VERSION:
        raise BundleError(
            f"{where}: schema_version {schema} is not supported by this runtime (it reads {SCHEMA_VERSION}). "
            "Update the runtime image or re-export the bundle."
        )
    try:
        features = FeatureSpec.from_dict(_require(data, "features", dict, where))
    except FeatureSpecError as exc:
        raise BundleError(f"{where}: {exc}") from exc
    score = _require(data, "score", dict, where)
    semantics = _require(score, "semantics", str, f"{where} score")
    if semantics != SCORE_SEMANTICS:
        raise BundleError(f"{where}: score semantics {semantics!r} is not supported; expected {SCORE_SEMANTICS!r}.")
    threshold = float(_require(score, "threshold", (int, float), f"{where} score"))
    if not math.isfinite(threshold):
        raise BundleError(f"{where}: score threshold must be finite, got {threshold!r}.")
    onnx = _require(data, "onnx", dict, where)
    sha = _require(onnx, "sha256", str, f"{where} onnx")
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise BundleError(f"{where}: onnx sha256 {sha!r} is not 64 lowercase hex digits.")
    quantization = _require(onnx, "quantization", str, f"{where} onnx")
    if quantization not in QUANTIZATION_MODES:
        raise BundleError(f"{where}: onnx quantization {quantization!r} is not one of {list(QUANTIZATION_MODES)}.")
    onnx_info = OnnxInfo(
        sha256=sha,
        opset=_require(onnx, "opset", int, f"{where} onnx"),
        input_name=_require(onnx, "input_name", str, f"{where} onnx"),
        output_name=_require(onnx, "output_name", str, f"{where} onnx"),
        quantization=quantization,
        quantization_note=str(onnx.get("quantization_note", "")),
        file=_require(onnx, "file", str, f"{where} onnx"),
    )
    # Schema 1 fixes the name: bundle_digest and the baked layer hash exactly model.json + model.onnx.
    # The field stays so a later schema can relax this without changing the card's shape.
    if onnx_info.file != MODEL_ONNX:
        raise BundleError(
            f"{where}: onnx file {onnx_info.file!r} is not supported; schema {SCHEMA_VERSION} bundles hold "
            f"{MODEL_ONNX!r}. Re-export the bundle with `otaml train`."
        )
    golden_raw = _require(data, "golden", dict, where)
    readings = _require(golden_raw, "readings", list, f"{where} golden")
    scores = _require(golden_raw, "scores", list, f"{where} golden")
    if not readings or len(readings) != len(scores):
        raise BundleError(
            f"{where}: golden vectors need as many scores as readings and at least one; "
            f"got {len(readings)} readings and {len(scores)} scores."
        )
    for i, row in enumerate(readings):
        if not isinstance(row, list) or len(row) != features.n_sensors:
            raise BundleError(f"{where}: golden reading {i} must list {features.n_sensors} values, got {row!r}.")
    tolerance = _finite(
        _require(golden_raw, "tolerance", (int, float), f"{where} golden"), f"{where}: golden tolerance"
    )
    # inf would silently disable the self-test; 0 or negative would always fail it (NaN is refused above).
    # No absolute upper bound: the pipeline scales the tolerance with the scores, which may be large.
    if not tolerance > 0:
        raise BundleError(
            f"{where}: golden tolerance {tolerance!r} must be a finite number > 0 (the pipeline writes about "
            "1e-4 of the score scale). Re-export the bundle."
        )
    golden = GoldenVectors(
        readings=[
            [_finite(v, f"{where}: golden reading {i}[{j}]") for j, v in enumerate(row)]
            for i, row in enumerate(readings)
        ],
        scores=[_finite(v, f"{where}: golden score {i}") for i, v in enumerate(scores)],
        tolerance=tolerance,
    )
    metrics = data.get("metrics", {})
    if not isinstance(metrics, dict):
        raise BundleError(f"{where}: 'metrics' must be an object, got {metrics!r}.")
    mlflow_info = data.get("mlflow", {})
    if not isinstance(mlflow_info, dict):
        raise BundleError(f"{where}: 'mlflow' must be an object, got {mlflow_info!r}.")
    reference = data.get("field_reference")
    field_reference = None if reference is None else parse_field_reference(reference, features, where)
    return ModelCard(
        name=_require(data, "name", str, where),
        version=str(_require(data, "version", (str, int), where)),
        detector=_require(data, "detector", str, where),
        features=features,
        threshold=threshold,
        threshold_method=str(score.get("threshold_method", "")),
        onnx=onnx_info,
        golden=golden,
        mlflow={str(k): str(v) for k, v in mlflow_info.items()},
        metrics={str(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        created_at=str(data.get("created_at", "")),
        schema_version=schema,
        field_reference=field_reference,
    )


def load_bundle(path: str | os.PathLike[str], verify_hash: bool = True) -> Bundle:
    """Read and validate a bundle directory; check the ONNX file against its sha256."""
    root = Path(path)
    card_path = root / MODEL_JSON
    if not root.is_dir():
        raise BundleError(f"Bundle directory {root} does not exist. Pass the directory that holds {MODEL_JSON}.")
    if not card_path.is_file():
        raise BundleError(f"{root} has no {MODEL_JSON}; is this a model bundle? Export one with `otaml train`.")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{card_path} is not valid JSON: {exc}.") from exc
    card = parse_card(data, str(card_path))
    onnx_path = root / card.onnx.file
    if not onnx_path.is_file():
        raise BundleError(f"{root} has no {card.onnx.file}, which {MODEL_JSON} names as the model.")
    if verify_hash:
        actual = sha256_file(onnx_path)
        if actual != card.onnx.sha256:
            raise BundleError(
                f"{onnx_path} has sha256 {actual} but {MODEL_JSON} says {card.onnx.sha256}: the model file was "
                "changed or corrupted. Refusing to serve it; re-copy or re-export the bundle."
            )
    return Bundle(path=root, card=card)


def write_bundle(path: str | os.PathLike[str], card: ModelCard, onnx_bytes: bytes) -> Bundle:
    """Write ``model.onnx`` and ``model.json`` atomically: a half-written bundle never appears at ``path``."""
    root = Path(path)
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    if digest != card.onnx.sha256:
        raise BundleError(f"card sha256 {card.onnx.sha256} does not match the ONNX bytes ({digest}).")
    parse_card(card.to_dict())  # the same checks a device will make
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        (tmp / card.onnx.file).write_bytes(onnx_bytes)
        (tmp / MODEL_JSON).write_text(json.dumps(card.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for file in tmp.iterdir():
            file.chmod(0o644)
        tmp.chmod(0o755)
        if root.exists():
            old = root.with_name(f".{root.name}.old")
            if old.exists():
                _rmtree(old)
            root.rename(old)
            tmp.rename(root)
            _rmtree(old)
        else:
            tmp.rename(root)
    except BaseException:
        if tmp.exists():
            _rmtree(tmp)
        raise
    return load_bundle(root)


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
