"""Compare detector runs, read back from MLflow: per training run or per registered version; a table and a plot.

:func:`pipeline.training.train` logs one parent run (tag ``otaml.kind = train``) and a nested run per
detector with ``test_*`` / ``val_*`` metrics, ``otaml.*`` tags, and a registered model version. This module
reads those back, so the comparison shows what MLflow recorded, not what a Python object remembers.
MLflow's exceptions are converted to :class:`pipeline.tracking.TrackingError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from edge_runtime.errors import InputError, NotFound
from pipeline.tracking import DEFAULT_EXPERIMENT, TrackingError, resolve_tracking_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient

# The metrics a comparison shows first; others the runs logged follow, sorted.
KEY_METRICS: tuple[str, ...] = (
    "val_pr_auc",
    "test_pr_auc",
    "test_roc_auc",
    "test_vus_pr",
    "test_f1",
    "test_precision",
    "test_recall",
    "val_alarm_rate",
    "test_alarm_rate",
    "threshold",
    "parity_fp32_agreement",
    "parity_int8_agreement",
    "onnx_fp32_bytes",
    "onnx_int8_bytes",
)
PLOT_METRICS: tuple[str, ...] = ("val_pr_auc", "test_pr_auc", "test_roc_auc", "test_f1")
# Without labels there is nothing to rank by; the alarm rates show how each threshold calibrated.
UNLABELLED_PLOT_METRICS: tuple[str, ...] = ("val_alarm_rate", "test_alarm_rate")
INFO_COLUMNS: tuple[str, ...] = ("run_id", "model", "version", "chosen", "parity_status", "quantization")
VERSION_COLUMNS: tuple[str, ...] = ("detector", "run_id", "created", "chosen", "parity_status", "quantization")


def _client(tracking_uri: str | None) -> MlflowClient:
    from mlflow import MlflowClient

    uri = tracking_uri or resolve_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def latest_training_run(*, experiment: str = DEFAULT_EXPERIMENT, tracking_uri: str | None = None) -> str:
    """Run id of the newest training (parent) run in ``experiment``."""
    client = _client(tracking_uri)
    try:
        exp = client.get_experiment_by_name(experiment)
        runs = (
            client.search_runs(
                [exp.experiment_id],
                filter_string="tags.`otaml.kind` = 'train'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if exp is not None
            else []
        )
    except Exception as exc:
        raise TrackingError(f"searching training runs in experiment {experiment!r} failed: {exc}") from exc
    if not runs:
        raise NotFound(
            f"no training run in MLflow experiment {experiment!r} at {tracking_uri or resolve_tracking_uri()}; "
            "train first (`otaml train` or pipeline.training.train) or pass the right tracking URI."
        )
    return str(runs[0].info.run_id)


def detector_runs(
    parent_run_id: str | None = None,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    tracking_uri: str | None = None,
) -> pd.DataFrame:
    """One row per detector run of a training run (default: the newest), indexed by ``detector``.

    Columns: :data:`INFO_COLUMNS` (``model``/``version``: the registered model version the run produced;
    ``chosen``: whether training chose it), then :data:`KEY_METRICS` the runs logged, then any other metrics.
    """
    client = _client(tracking_uri)
    parent = parent_run_id or latest_training_run(experiment=experiment, tracking_uri=tracking_uri)
    try:
        parent_run = client.get_run(parent)
        runs = client.search_runs(
            [parent_run.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent}'",
            order_by=["attributes.start_time ASC"],
        )
        versions = {r.info.run_id: client.search_model_versions(f"run_id = '{r.info.run_id}'") for r in runs}
    except Exception as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            raise NotFound(
                f"no MLflow run {parent!r}; pass the parent_run_id of a training run (TrainReport.parent_run_id)."
            ) from exc
        raise TrackingError(f"reading the detector runs of training run {parent!r} failed: {exc}") from exc
    if not runs:
        raise NotFound(f"run {parent!r} has no nested detector runs: is it a training run (tag otaml.kind=train)?")
    rows: list[dict[str, Any]] = []
    for run in runs:
        registered = sorted(versions[run.info.run_id], key=lambda v: int(v.version))
        rows.append(
            {
                **_run_row(run),
                "model": registered[-1].name if registered else None,
                "version": str(registered[-1].version) if registered else None,
            }
        )
    return _ordered(pd.DataFrame(rows).set_index("detector"), INFO_COLUMNS)


def version_runs(model_name: str, *, tracking_uri: str | None = None) -> pd.DataFrame:
    """One row per registered version of ``model_name`` (index ``version``, newest first) with its run's metrics.

    Columns: :data:`VERSION_COLUMNS` (``created``: registration time, UTC), then the metrics as in
    :func:`detector_runs`. Versions from any training run, so older candidates can be compared too.
    """
    client = _client(tracking_uri)
    try:
        registered = client.search_model_versions(f"name = '{model_name}'")
        runs = {v.run_id: client.get_run(v.run_id) for v in registered if v.run_id}
    except Exception as exc:
        raise TrackingError(f"reading the versions of model {model_name!r} failed: {exc}") from exc
    if not registered:
        raise NotFound(
            f"no registered versions of model {model_name!r} at {tracking_uri or resolve_tracking_uri()}; "
            "train first (training registers every detector) or check the model name and tracking URI."
        )
    rows: list[dict[str, Any]] = []
    for mv in sorted(registered, key=lambda v: int(v.version), reverse=True):
        run = runs.get(mv.run_id or "")
        rows.append(
            {
                **(_run_row(run) if run is not None else {"detector": mv.tags.get("detector")}),
                "version": str(mv.version),
                "created": pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC"),
            }
        )
    return _ordered(pd.DataFrame(rows).set_index("version"), VERSION_COLUMNS)


def _run_row(run: Any) -> dict[str, Any]:
    tags = run.data.tags
    return {
        "detector": tags.get("otaml.detector", run.info.run_name),
        "run_id": run.info.run_id,
        "chosen": tags.get("otaml.chosen") == "true",
        "parity_status": tags.get("otaml.parity_status"),
        "quantization": tags.get("otaml.quantization"),
        **run.data.metrics,
    }


def _ordered(table: pd.DataFrame, info: Sequence[str]) -> pd.DataFrame:
    """``info`` columns, then :data:`KEY_METRICS` present, then the other metrics sorted."""
    for column in info:
        if column not in table.columns:
            table[column] = None
    logged = set(table.columns) - set(info)
    metrics = [m for m in KEY_METRICS if m in logged] + sorted(logged - set(KEY_METRICS))
    return table[[*info, *metrics]]


def plot_runs(table: pd.DataFrame, metrics: Sequence[str] | None = None, *, title: str = "") -> Figure:
    """Grouped bars: one group per metric, one bar per detector (the chosen one outlined in black).

    Metrics the table lacks are left out; at least one must be present. By default :data:`PLOT_METRICS`,
    or :data:`UNLABELLED_PLOT_METRICS` when the runs had no labels (so no PR-AUC or F1).
    """

    def logged(names: Sequence[str]) -> list[str]:
        return [m for m in names if m in table.columns and table[m].notna().any()]

    if metrics is None:
        metrics = PLOT_METRICS if logged(PLOT_METRICS) else UNLABELLED_PLOT_METRICS
    present = logged(metrics)
    if not present or table.empty:
        raise InputError(
            f"none of the metrics {list(metrics)} is in the table (it has {list(table.columns)}); "
            "pass metrics=[...] that the runs logged, e.g. val_alarm_rate for unlabelled data."
        )
    detectors = [str(d) for d in table.index]
    chosen = table["chosen"].to_numpy(dtype=bool) if "chosen" in table.columns else np.zeros(len(detectors), bool)
    width = 0.8 / len(detectors)
    x = np.arange(len(present))
    fig = Figure(figsize=(max(6.0, 1.6 * len(present) + 2), 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, detector in enumerate(detectors):
        values = table.loc[detector, present].to_numpy(dtype=np.float64)
        label = f"{detector} (chosen)" if chosen[i] else detector
        ax.bar(
            x + (i - (len(detectors) - 1) / 2) * width,
            np.nan_to_num(values),
            width,
            label=label,
            edgecolor="black" if chosen[i] else "none",
            linewidth=1.5 if chosen[i] else 0,
        )
    ax.set_xticks(x, present, fontsize=8)
    ax.set_ylabel("value")
    ax.set_title(title or "detector runs compared (from MLflow)", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig
