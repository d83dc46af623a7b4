"""The demo's deliberately broken version: a bundle whose golden vectors do not match its model.

It is registered the way ``otaml train`` registers versions (an MLflow run holding the ONNX model and the
bundle, the ``shipped_bundle`` tag), but without training: no parity was measured, so the promotion gates
refuse it and the operator has to force it. The model itself is fine; the expected scores in ``model.json``
are off by :data:`GOLDEN_SHIFT`, which the device's canary (the service's golden self-test) must catch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edge_runtime.bundle import load_bundle, write_bundle
from edge_runtime.features import batch_features

GOLDEN_SHIFT = 0.5


def register_broken_version(source_bundle: Path, model_name: str, out_dir: Path, *, tracking_uri: str) -> str:
    """Register a new version of ``model_name`` from ``source_bundle`` with spoilt golden scores; return it."""
    import mlflow

    from pipeline.tracking import SHIPPED_BUNDLE_TAG, log_onnx, register, session, set_version_tags

    source = load_bundle(source_bundle)
    onnx_bytes = source.onnx_path.read_bytes()
    with (
        session(tracking_uri) as (_uri, experiment_id),
        mlflow.start_run(run_name="demo: broken golden vectors", experiment_id=experiment_id) as run,
    ):
        mlflow.set_tags({"otaml.kind": "demo-broken", "otaml.detector": source.card.detector})
        example = batch_features(source.card.features, source.card.golden.readings)[:5]
        model_uri = log_onnx(onnx_bytes, example=example)
        version = register(
            model_uri, model_name, {"detector": source.card.detector, "demo": "golden vectors do not match the model"}
        )
        golden = dataclasses.replace(
            source.card.golden, scores=[float(s) + GOLDEN_SHIFT for s in source.card.golden.scores]
        )
        card = dataclasses.replace(
            source.card,
            version=version,
            golden=golden,
            mlflow={
                "run_id": run.info.run_id,
                "model_uri": f"models:/{model_name}/{version}",
                "tracking_uri": tracking_uri,
            },
        )
        bundle = write_bundle(out_dir / f"{model_name}-v{version}-broken", card, onnx_bytes)
        mlflow.log_artifacts(str(bundle.path), "bundle/fp32")
        set_version_tags(model_name, version, {SHIPPED_BUNDLE_TAG: "bundle/fp32"})
    return version
