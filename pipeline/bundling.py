"""Model bundles from a training result: one per ONNX variant (fp32, and int8 when quantization applies).

Each bundle is written with :func:`edge_runtime.bundle.write_bundle` (the schema's owner) and carries the
registered version, its ``models:/NAME/VERSION`` URI and run id, the threshold, the test metrics,
golden vectors scored with that variant's own ONNX file, and the field reference the device measures drift
against (:func:`field_reference`): per raw sensor, :data:`SENSOR_BUCKETS` quantile buckets of the rows the
detector was fitted on; for the score, buckets at quantiles :data:`SCORE_QUANTILES` of that variant's scores
of the same rows, with the threshold as an edge (so the histogram splits exactly at the alarm level).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_runtime.bundle import FieldReference, ModelCard, OnnxInfo, ReferenceHistogram, write_bundle
from edge_runtime.features import FeatureSpec
from pipeline.golden import golden_vectors
from pipeline.onnx_export import ExportedModel, declared_opset
from pipeline.parity import ParityReport, onnx_scores
from pipeline.quantization import QuantizedModel
from pipeline.thresholds import Threshold

SENSOR_BUCKETS = 10
SCORE_QUANTILES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
REFERENCE_SOURCE = "fitted rows of the training split"


def reference_histogram(values: npt.ArrayLike, edges: npt.ArrayLike) -> ReferenceHistogram:
    """Shares of ``values`` in the buckets of ``edges`` (deduplicated; ``le`` semantics, open outer buckets)."""
    inner = np.unique(np.asarray(edges, dtype=np.float64))
    inner = inner[np.isfinite(inner)]
    data = np.asarray(values, dtype=np.float64)
    data = data[np.isfinite(data)]
    counts = np.bincount(np.searchsorted(inner, data, side="left"), minlength=inner.size + 1)
    shares = counts / max(int(counts.sum()), 1)
    return ReferenceHistogram(tuple(inner.tolist()), tuple(shares.tolist()))


def field_reference(
    spec: FeatureSpec,
    readings: npt.NDArray[np.float64],
    scores: npt.NDArray[np.float64],
    threshold: float,
    buckets: int = SENSOR_BUCKETS,
) -> FieldReference:
    """Training histograms of each raw sensor (quantile edges) and of the scores (quantiles + the threshold)."""
    if readings.ndim != 2 or readings.shape[1] != spec.n_sensors or readings.shape[0] != scores.shape[0]:
        raise ValueError(
            f"field reference needs readings (n, {spec.n_sensors}) and n scores; "
            f"got {readings.shape} and {scores.shape}."
        )
    levels = np.arange(1, buckets) / buckets
    sensors = []
    for j, name in enumerate(spec.sensors):
        column = readings[:, j][np.isfinite(readings[:, j])]
        edges = np.quantile(column, levels) if column.size else np.empty(0)
        sensors.append((name, reference_histogram(column, edges)))
    score_edges = np.append(np.quantile(scores, SCORE_QUANTILES), threshold)
    return FieldReference(
        sensors=tuple(sensors),
        score=reference_histogram(scores, score_edges),
        rows=int(readings.shape[0]),
        source=REFERENCE_SOURCE,
    )


@dataclass(frozen=True)
class Variant:
    """One ONNX file to bundle: ``name`` is ``"fp32"`` or ``"int8"``."""

    name: str
    onnx_bytes: bytes
    quantization: str
    note: str


@dataclass(frozen=True)
class Provenance:
    """Where a bundle comes from: the registered version and its run."""

    model_name: str
    version: str
    run_id: str
    tracking_uri: str

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}/{self.version}"


def variants(fp32: ExportedModel, int8: QuantizedModel, parity: ParityReport) -> list[Variant]:
    """The fp32 variant, plus int8 when quantization produced one; notes say what happened."""
    if int8.onnx_bytes is None:
        return [Variant("fp32", fp32.onnx_bytes, "none", int8.note)]
    note = int8.note
    if parity.int8 is not None and not parity.int8.passed:
        note += f"; below parity target ({parity.int8.agreement:.4f} < {parity.int8.target}), not shipped"
    return [
        Variant("fp32", fp32.onnx_bytes, "none", f"fp32 graph; the int8 variant ({int8.mode}) is a separate bundle"),
        Variant("int8", int8.onnx_bytes, int8.mode, note),
    ]


def shipped_variant(fp32: ExportedModel, int8: QuantizedModel, parity: ParityReport) -> str:
    """int8 when it passes parity and is smaller than fp32, else fp32."""
    ok = parity.int8 is not None and parity.int8.passed
    return "int8" if ok and int8.size is not None and int8.size < fp32.size else "fp32"


def card_for(
    variant: Variant,
    *,
    provenance: Provenance,
    detector: str,
    spec: FeatureSpec,
    threshold: Threshold,
    metrics: dict[str, float],
    golden_readings: npt.NDArray[np.float64],
    score_scale: float,
    reference: FieldReference | None = None,
) -> ModelCard:
    return ModelCard(
        name=provenance.model_name,
        version=provenance.version,
        detector=detector,
        features=spec,
        threshold=threshold.value,
        threshold_method=threshold.method,
        onnx=OnnxInfo(
            sha256=hashlib.sha256(variant.onnx_bytes).hexdigest(),
            opset=declared_opset(variant.onnx_bytes),
            quantization=variant.quantization,
            quantization_note=variant.note,
        ),
        golden=golden_vectors(variant.onnx_bytes, spec, golden_readings, score_scale, variant.quantization),
        mlflow={
            "run_id": provenance.run_id,
            "model_uri": provenance.model_uri,
            "tracking_uri": provenance.tracking_uri,
        },
        metrics={k: float(v) for k, v in metrics.items() if np.isfinite(v)},
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        field_reference=reference,
    )


def write_bundles(
    root: Path,
    bundle_variants: list[Variant],
    *,
    provenance: Provenance,
    detector: str,
    spec: FeatureSpec,
    threshold: Threshold,
    metrics: dict[str, float],
    golden_readings: npt.NDArray[np.float64],
    score_scale: float,
    reference_readings: npt.NDArray[np.float64] | None = None,
    reference_features: npt.NDArray[np.float64] | None = None,
) -> dict[str, Path]:
    """Write ``root/<variant>/`` for every variant; return variant name -> bundle directory.

    With ``reference_readings`` (raw, n x sensors) and the feature rows of the same readings, each bundle
    carries a field reference whose score buckets come from that variant's own scores.
    """
    paths: dict[str, Path] = {}
    for variant in bundle_variants:
        reference = None
        if reference_readings is not None and reference_features is not None:
            scores = onnx_scores(variant.onnx_bytes, reference_features)
            reference = field_reference(spec, reference_readings, scores, threshold.value)
        card = card_for(
            variant,
            provenance=provenance,
            detector=detector,
            spec=spec,
            threshold=threshold,
            metrics=metrics,
            golden_readings=golden_readings,
            score_scale=score_scale,
            reference=reference,
        )
        paths[variant.name] = write_bundle(root / variant.name, card, variant.onnx_bytes).path
    return paths
