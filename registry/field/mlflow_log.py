"""Field reports into MLflow, against the registered model version they describe.

For each report, :func:`log_to_mlflow` opens a run in the experiment of the version's training run, tagged
``otaml.kind=field`` and ``otaml.model_version`` (so the runs table lists field reports beside the training
runs and can compare them), and logs ``field_*`` metrics there; with MLflow 3 the metrics are also linked to
the version's logged model (``model_id``), so its page shows them beside the offline ones. The version itself
gets ``field_*`` tags (devices, readings, anomaly ratio, most drifting sensor, the report run), which the
Model Registry UI shows next to its offline tags. Successive reports use increasing steps, which draws drift
over time.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from registry.field.report import ALL_GROUPS, FieldReport

FIELD_KIND = "field"


class FieldLogError(RuntimeError):
    """The report could not be logged (no such version, or the tracking server refused it)."""


def _metric_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", text)


def field_metrics(report: FieldReport, version: str) -> dict[str, float]:
    """The ``field_*`` metrics of ``version`` (all its devices; ``field_group_<g>_*`` per device group)."""
    metrics: dict[str, float] = {}
    for stats in report.groups:
        if stats.version != version:
            continue
        prefix = "field_" if stats.group == ALL_GROUPS else f"field_group_{_metric_name(stats.group)}_"
        metrics[f"{prefix}devices"] = stats.devices
        metrics[f"{prefix}readings"] = stats.readings
        metrics[f"{prefix}input_error_ratio"] = stats.input_error_ratio
        if stats.anomaly_ratio is not None:
            metrics[f"{prefix}anomaly_ratio"] = stats.anomaly_ratio
        for key, value in stats.score.items():
            if value is not None:
                metrics[f"{prefix}score_{key}"] = value
        if stats.group == ALL_GROUPS:
            for drift in stats.drift:
                metrics[f"field_psi_{_metric_name(drift.feature)}"] = drift.psi_max
                metrics[f"field_psi_over_alert_{_metric_name(drift.feature)}"] = drift.over_alert
    return metrics


def log_to_mlflow(report: FieldReport, model: str, version: str, tracking_uri: str, step: int | None = None) -> str:
    """Log ``version``'s part of ``report`` against ``models:/model/version``; return the field run's id."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    stats = report.overall(version)
    if stats is None:
        raise FieldLogError(f"the report has no summaries of {model} version {version}; nothing to log.")
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        mv = client.get_model_version(model, version)
    except MlflowException as exc:
        raise FieldLogError(
            f"{model} version {version} is not in the Model Registry at {tracking_uri}: {exc.message}. "
            "Check the name, the version and MLFLOW_TRACKING_URI."
        ) from exc
    try:
        experiment_id = client.get_run(mv.run_id).info.experiment_id if mv.run_id else "0"
        now = int(time.time() * 1000)
        run = client.create_run(
            experiment_id,
            run_name=f"field {model} v{version}",
            tags={
                "otaml.kind": FIELD_KIND,
                "otaml.model": model,
                "otaml.model_version": version,
                "otaml.training_run": mv.run_id or "",
            },
        )
        run_id = run.info.run_id
        step = now // 1000 if step is None else step
        model_id = getattr(mv, "model_id", None)
        for key, value in field_metrics(report, version).items():
            client.log_metric(run_id, key, float(value), timestamp=now, step=step, model_id=model_id)
        client.log_dict(run_id, _version_part(report, version), "field_report.json")
        client.set_terminated(run_id)
        top = stats.drift[0] if stats.drift else None
        tags = {
            "field_devices": str(stats.devices),
            "field_readings": str(stats.readings),
            "field_anomaly_ratio": "-" if stats.anomaly_ratio is None else f"{stats.anomaly_ratio:.4g}",
            "field_top_drift": "-" if top is None else f"{top.feature} PSI {top.psi_max:.3g}",
            "field_report_run": run_id,
            "field_updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now / 1000)),
        }
        for key, value in tags.items():
            client.set_model_version_tag(model, version, key, value)
    except MlflowException as exc:
        raise FieldLogError(f"logging the field report of {model} v{version} failed: {exc.message}") from exc
    return run_id


def _version_part(report: FieldReport, version: str) -> dict[str, Any]:
    data = report.to_dict()
    data["groups"] = [g for g in data["groups"] if g["version"] == version]
    return json.loads(json.dumps(data))
