"""The demo's deliberately faulty versions, each caught by a different guard.

Both are registered the way ``otaml train`` registers versions (an MLflow run holding the ONNX model and the
bundle, the ``shipped_bundle`` tag), but without training: no parity was measured, so the promotion gates refuse
them and the operator has to force them. The model itself is v2's in both:

- :func:`register_broken_version`: the expected scores in ``model.json`` are off by :data:`GOLDEN_SHIFT`, which the
  device's canary (the service's golden self-test) must catch — a *platform* failure.
- :func:`register_alarming_version`: the threshold is moved below the whole training score histogram the bundle
  carries, so the model alarms on (nearly) every reading. The golden self-test passes (scores are unchanged) and
  the container is healthy: only the field metrics show it, and a rollout's *model* health must halt it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edge_runtime.bundle import Bundle, load_bundle, write_bundle
from edge_runtime.features import batch_features

GOLDEN_SHIFT = 0.5


def register_broken_version(source_bundle: Path, model_name: str, out_dir: Path, *, tracking_uri: str) -> str:
    """Register a new version of ``model_name`` from ``source_bundle`` with spoilt golden scores; return it."""
    source = load_bundle(source_bundle)
    golden = dataclasses.replace(
        source.card.golden, scores=[float(s) + GOLDEN_SHIFT for s in source.card.golden.scores]
    )
    return _register(
        source, model_name, out_dir, tracking_uri, "broken", "golden vectors do not match the model", golden=golden
    )


def alarming_threshold(source: Bundle) -> float:
    """A threshold below the training score histogram the bundle carries (``field_reference``) by its own span."""
    reference = source.card.field_reference
    if reference is None or not reference.score.edges:
        raise ValueError(f"{source.path} carries no training score histogram (field_reference)")
    edges = reference.score.edges
    return float(edges[0] - (edges[-1] - edges[0]) - 1e-6)


def register_alarming_version(source_bundle: Path, model_name: str, out_dir: Path, *, tracking_uri: str) -> str:
    """Register a new version of ``model_name`` from ``source_bundle`` whose threshold flags most normal readings."""
    source = load_bundle(source_bundle)
    return _register(
        source,
        model_name,
        out_dir,
        tracking_uri,
        "alarming",
        "threshold moved below every training score: alarms on every reading",
        threshold=alarming_threshold(source),
        threshold_method="demo: below the training score histogram",
    )


def _register(
    source: Bundle, model_name: str, out_dir: Path, tracking_uri: str, kind: str, what: str, **changes: Any
) -> str:
    import mlflow

    from pipeline.tracking import SHIPPED_BUNDLE_TAG, log_onnx, register, session, set_version_tags

    onnx_bytes = source.onnx_path.read_bytes()
    with (
        session(tracking_uri) as (_uri, experiment_id),
        mlflow.start_run(run_name=f"demo: {what}", experiment_id=experiment_id) as run,
    ):
        mlflow.set_tags({"otaml.kind": f"demo-{kind}", "otaml.detector": source.card.detector})
        example = batch_features(source.card.features, source.card.golden.readings)[:5]
        model_uri = log_onnx(onnx_bytes, example=example)
        version = register(model_uri, model_name, {"detector": source.card.detector, "demo": what})
        card = dataclasses.replace(
            source.card,
            version=version,
            mlflow={
                "run_id": run.info.run_id,
                "model_uri": f"models:/{model_name}/{version}",
                "tracking_uri": tracking_uri,
            },
            **changes,
        )
        bundle = write_bundle(out_dir / f"{model_name}-v{version}-{kind}", card, onnx_bytes)
        mlflow.log_artifacts(str(bundle.path), "bundle/fp32")
        set_version_tags(model_name, version, {SHIPPED_BUNDLE_TAG: "bundle/fp32"})
    return version
