"""``pipeline.runs`` against a real sqlite MLflow store laid out as ``pipeline.training.train`` lays it out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.patches import Rectangle

from edge_runtime.errors import InputError, NotFound
from pipeline.runs import (
    INFO_COLUMNS,
    KEY_METRICS,
    VERSION_COLUMNS,
    detector_runs,
    latest_training_run,
    plot_runs,
    version_runs,
)
from pipeline.tracking import DEFAULT_EXPERIMENT

MODEL = "runs-test"


@dataclass(frozen=True)
class Store:
    uri: str
    old_parent: str
    new_parent: str
    versions: Mapping[str, str]  # detector run id -> registered version


def _training_run(client: Any, experiment_id: str, detectors: Mapping[str, dict[str, float]], chosen: str) -> str:
    """A parent run tagged like train()'s, with one nested run per detector, each registered as a version."""
    parent = client.create_run(experiment_id, tags={"otaml.kind": "train"}, run_name="train")
    pid = parent.info.run_id
    for name, metrics in detectors.items():
        run = client.create_run(
            experiment_id,
            run_name=name,
            tags={
                "mlflow.parentRunId": pid,
                "otaml.detector": name,
                "otaml.chosen": str(name == chosen).lower(),
                "otaml.parity_status": "pass",
                "otaml.quantization": "none",
            },
        )
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
        client.create_model_version(MODEL, f"{run.info.artifact_uri}/onnx-model", run_id=run.info.run_id)
    client.set_terminated(pid)
    return str(pid)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('runs') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment(DEFAULT_EXPERIMENT)
    client.create_registered_model(MODEL)
    old = _training_run(client, experiment_id, {"iforest": {"test_f1": 0.1, "val_pr_auc": 0.2}}, "iforest")
    new = _training_run(
        client,
        experiment_id,
        {
            "iforest": {"test_f1": 0.5, "val_pr_auc": 0.4, "zz_extra": 1.0},
            "pca": {"test_f1": 0.7, "val_pr_auc": 0.8, "onnx_fp32_bytes": 4170.0},
        },
        "pca",
    )
    versions = {str(v.run_id): str(v.version) for v in client.search_model_versions(f"name='{MODEL}'")}
    return Store(uri, old, new, versions)


def test_detector_runs_of_the_newest_training_run_with_versions_and_ordered_metrics(store: Store) -> None:
    table = detector_runs(tracking_uri=store.uri)
    assert list(table.index) == ["iforest", "pca"]
    assert list(table.columns[: len(INFO_COLUMNS)]) == list(INFO_COLUMNS)
    metrics = list(table.columns[len(INFO_COLUMNS) :])
    assert metrics == ["val_pr_auc", "test_f1", "onnx_fp32_bytes", "zz_extra"]  # KEY_METRICS order, then the rest
    assert metrics[:3] == [m for m in KEY_METRICS if m in metrics]
    assert table.loc["pca", "test_f1"] == 0.7
    assert np.isnan(table.loc["pca", "zz_extra"])
    assert list(table["chosen"]) == [False, True]
    assert set(table["model"]) == {MODEL}
    for run_id, version in zip(table["run_id"], table["version"], strict=True):
        assert store.versions[run_id] == version
    assert latest_training_run(tracking_uri=store.uri) == store.new_parent


def test_detector_runs_of_a_named_training_run(store: Store) -> None:
    table = detector_runs(store.old_parent, tracking_uri=store.uri)
    assert list(table.index) == ["iforest"]
    assert table.loc["iforest", "test_f1"] == 0.1
    assert bool(table.loc["iforest", "chosen"])


def test_missing_runs_raise_not_found_with_the_remedy(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no MLflow run 'nope'"):
        detector_runs("nope", tracking_uri=store.uri)
    with pytest.raises(NotFound, match=r"no training run in MLflow experiment 'elsewhere'.*train first"):
        latest_training_run(experiment="elsewhere", tracking_uri=store.uri)


def test_version_runs_lists_every_version_newest_first_with_its_run_metrics(store: Store) -> None:
    table = version_runs(MODEL, tracking_uri=store.uri)
    assert list(table.index) == ["3", "2", "1"]  # registered in order: old iforest, new iforest, new pca
    assert list(table.columns[: len(VERSION_COLUMNS)]) == list(VERSION_COLUMNS)
    assert list(table["detector"]) == ["pca", "iforest", "iforest"]
    assert list(table["test_f1"]) == [0.7, 0.5, 0.1]
    assert store.versions[table.loc["1", "run_id"]] == "1"
    assert str(table["created"].dt.tz) == "UTC"
    with pytest.raises(NotFound, match="no registered versions of model 'unknown'"):
        version_runs("unknown", tracking_uri=store.uri)


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {"chosen": [False, True, False], "val_pr_auc": [0.2, 0.8, 0.5], "test_f1": [0.1, 0.7, np.nan]},
        index=pd.Index(["iforest", "pca", "autoencoder"], name="detector"),
    )


def test_plot_runs_draws_a_bar_per_detector_and_metric_and_outlines_the_chosen() -> None:
    fig = plot_runs(_table(), metrics=("val_pr_auc", "test_f1", "test_roc_auc"))  # no test_roc_auc: left out
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["val_pr_auc", "test_f1"]
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bars) == 3 * 2
    heights = sorted(round(b.get_height(), 6) for b in bars)
    assert heights == [0.0, 0.1, 0.2, 0.5, 0.7, 0.8]  # a missing value is drawn as an empty bar
    legend = ax.get_legend()
    assert legend is not None
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["iforest", "pca (chosen)", "autoencoder"]
    outlined = {round(b.get_height(), 6) for b in bars if b.get_linewidth() > 0}
    assert outlined == {0.8, 0.7}


def test_plot_runs_defaults_to_alarm_rates_when_the_runs_had_no_labels() -> None:
    table = pd.DataFrame(
        {"chosen": [True, False], "val_alarm_rate": [0.01, 0.02], "test_alarm_rate": [0.015, 0.03]},
        index=pd.Index(["iforest", "pca"], name="detector"),
    )
    (ax,) = plot_runs(table).axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["val_alarm_rate", "test_alarm_rate"]


def test_plot_runs_without_any_requested_metric_says_which_exist() -> None:
    with pytest.raises(InputError, match=r"none of the metrics \['test_roc_auc'\].*val_alarm_rate"):
        plot_runs(_table(), metrics=["test_roc_auc"])
