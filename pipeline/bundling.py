"""Model bundles from a training result: one per ONNX variant (fp32, and int8 when quantization applies).

Each bundle is written with :func:`edge_runtime.bundle.write_bundle` (the schema's owner) and carries the
registered version, its ``models:/NAME/VERSION`` URI and run id, the threshold, the test metrics, and
golden vectors scored with that variant's own ONNX file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_runtime.bundle import ModelCard, OnnxInfo, write_bundle
from edge_runtime.features import FeatureSpec
from pipeline.golden import golden_vectors
from pipeline.onnx_export import ExportedModel, declared_opset
from pipeline.parity import ParityReport
from pipeline.quantization import QuantizedModel
from pipeline.thresholds import Threshold


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
) -> dict[str, Path]:
    """Write ``root/<variant>/`` for every variant; return variant name -> bundle directory."""
    paths: dict[str, Path] = {}
    for variant in bundle_variants:
        card = card_for(
            variant,
            provenance=provenance,
            detector=detector,
            spec=spec,
            threshold=threshold,
            metrics=metrics,
            golden_readings=golden_readings,
            score_scale=score_scale,
        )
        paths[variant.name] = write_bundle(root / variant.name, card, variant.onnx_bytes).path
    return paths
