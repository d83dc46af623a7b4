"""Register model versions the way ``otaml train`` does (run metrics, bundle artifact, version tags), fast.

Training for real takes tens of seconds; promotion only needs what training leaves in MLflow: a run with
metrics, the bundle (whose card names the registered model and version) logged under ``bundle/<variant>``,
and a version whose ``shipped_bundle`` tag names it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Mapping
from pathlib import Path

from edge_runtime.bundle import load_bundle, write_bundle
from pipeline.tracking import SHIPPED_BUNDLE_TAG

GOOD_METRICS: dict[str, float] = {
    "test_f1": 0.9,
    "test_precision": 0.9,
    "test_recall": 0.9,
    "parity_fp32_agreement": 1.0,
}


# The repository's gates with latency limits no busy CI machine can miss: latency is measured in bench/ and
# in test_gates.py, never asserted by a timing-sensitive promotion test.
RELAXED_GATES = """
[default]
min_metrics = { test_f1 = 0.5 }
parity_metric = "parity_{variant}_agreement"
min_parity_agreement = 0.99
max_bundle_bytes = 5_000_000
max_latency_p50_ms = 10_000.0
max_latency_p99_ms = 10_000.0
latency_runs = 20
"""


def register_version(
    name: str,
    bundle_dir: Path,
    *,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    tracking_uri: str | None = None,
) -> str:
    """Log a run holding a copy of ``bundle_dir`` and ``metrics``; register it as a new version of ``name``."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    # The client API only: mlflow.set_tracking_uri / start_run would leak a global URI into later tests.
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with contextlib.suppress(MlflowException):  # already registered
        client.create_registered_model(name)
    version_tags = {
        "detector": "iforest",
        "quantization": "none",
        "parity_status": "pass",
        SHIPPED_BUNDLE_TAG: "bundle/fp32",
        **(tags or {}),
    }
    source = load_bundle(bundle_dir)
    run = client.create_run(experiment_id="0")
    now = int(time.time() * 1000)
    values = GOOD_METRICS if metrics is None else metrics
    client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()])
    mv = client.create_model_version(
        name, f"{run.info.artifact_uri}/bundle/fp32", run_id=run.info.run_id, tags=version_tags, await_creation_for=0
    )
    # Like the pipeline, the bundle's card names the registered model and version it ships as.
    card = dataclasses.replace(source.card, name=name, version=str(mv.version))
    with tempfile.TemporaryDirectory() as tmp:
        copy = write_bundle(Path(tmp) / "bundle", card, source.onnx_path.read_bytes())
        client.log_artifacts(run.info.run_id, str(copy.path), "bundle/fp32")
    client.set_terminated(run.info.run_id)
    return str(mv.version)
