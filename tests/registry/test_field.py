from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.field_metrics import PSI_ALERT
from registry.field import (
    ALL_GROUPS,
    FieldLogError,
    SimulatedDevice,
    aggregate,
    drift_timeline,
    log_to_mlflow,
    read_jsonl,
    render_text,
    retrain_advice,
    simulate_fleet,
    write_jsonl,
)
from tests.fixtures.field_bundles import TrainedField


def summary(version: str = "1", **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schema": 1,
        "model": "pump",
        "version": version,
        "since": "2026-12-01T00:00:00Z",
        "readings": 1000,
        "window": 800,
        "anomaly_ratio": 0.01,
        "threshold": 2.0,
        "score": {"p50": 1.5, "p90": 1.9, "p99": 2.0, "le": [1.0, 2.0, 3.0], "counts": [0, 400, 400, 0]},
        "drift": "ok",
        "psi_alert": PSI_ALERT,
        "drifting": 0,
        "features": 2,
        "psi": {"temperature": 0.05, "pressure": 0.01},
        "input_error_ratio": 0.0,
    }
    data.update(over)
    return data


def test_aggregate_per_version_and_group_merges_histograms_and_weights_ratios() -> None:
    entries = [
        ("d1", ["plant-a"], summary(window=800, anomaly_ratio=0.01)),
        (
            "d2",
            ["plant-a", "north"],
            summary(
                window=200,
                anomaly_ratio=0.11,
                psi={"temperature": 0.5},
                score={**summary()["score"], "counts": [0, 0, 200, 0]},
            ),
        ),
        ("d3", ["plant-b"], summary("2", anomaly_ratio=0.5, psi={"pressure": 0.3, "temperature": 0.1})),
    ]
    report = aggregate(entries, model="pump")
    v1 = report.overall("1")
    assert v1 is not None
    assert (v1.devices, v1.readings, v1.window_readings) == (2, 2000, 1000)
    assert v1.anomaly_ratio == pytest.approx((800 * 0.01 + 200 * 0.11) / 1000)
    assert v1.score_source == "merged_histogram"
    # merged counts [0, 400, 600, 0]: the median falls in (2, 3] at 100 of 600.
    assert v1.score["p50"] == pytest.approx(2.0 + (500 - 400) / 600)
    top = v1.drift[0]
    assert (top.feature, top.psi_max, top.devices, top.over_alert) == ("temperature", 0.5, 2, 1)
    assert top.psi_mean == pytest.approx(0.275)
    groups = {(g.version, g.group): g for g in report.groups}
    assert set(groups) == {("1", ALL_GROUPS), ("1", "plant-a"), ("1", "north"), ("2", ALL_GROUPS), ("2", "plant-b")}
    assert groups[("1", "north")].devices == 1
    assert report.versions == ["1", "2"]
    advice = retrain_advice(report, "2")
    assert advice.retrain
    assert "pressure" in advice.reasons[0]
    assert not retrain_advice(report, "1", min_share=0.75).retrain
    text = render_text(report)
    assert "plant-a" in text
    assert "temperature 0.50!" in text


def test_devices_with_other_edges_fall_back_to_weighted_quantiles() -> None:
    other = summary(window=600)
    other["score"] = {"p50": 3.0, "p90": 4.0, "p99": 5.0, "le": [1.0, 2.5], "counts": [0, 600, 0]}
    report = aggregate([("a", [], summary(window=200)), ("b", [], other)])
    v1 = report.overall("1")
    assert v1 is not None
    assert v1.score_source == "reading_weighted"
    assert v1.score["p50"] == pytest.approx((200 * 1.5 + 600 * 3.0) / 800)


def test_malformed_summaries_are_counted_and_never_crash() -> None:
    bad_score = summary()
    bad_score["score"] = {"le": [1.0], "counts": [1, 2, 3]}
    entries: list[Any] = [
        ("ok", ["g"], summary()),
        ("d", ["g"], "not a dict"),
        ("", ["g"], summary()),
        ("d", 5, summary()),
        ("d", ["g"], summary(version=3)),
        ("d", ["g"], summary(readings=-1)),
        ("d", ["g"], summary(anomaly_ratio=math.nan)),
        ("d", ["g"], summary(anomaly_ratio=1.5)),
        ("d", ["g"], bad_score),
        ("d", ["g"], summary(psi=[1, 2])),
        ("d", ["g"], summary(psi={"t": "high"})),
        ("only two",),
        None,
        ("other", ["g"], summary(model="another-model")),
        ("ok", ["g"], summary(readings=2000)),  # a later summary of the same device and version
    ]
    report = aggregate(entries, model="pump")
    assert report.summaries == len(entries)
    assert sum(report.malformed.values()) == 12
    assert report.malformed["bad_device_id"] == 1
    assert report.malformed["unreadable"] == 2
    assert report.other_models == 1
    assert report.superseded == 1
    v1 = report.overall("1")
    assert v1 is not None
    assert (v1.devices, v1.readings) == (1, 2000)
    assert "malformed summaries" in render_text(report)


def test_jsonl_round_trip_and_unreadable_lines(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_jsonl(path, [("d1", ["g"], summary()), ("d2", [], summary("2"))])
    with open(path, "a", encoding="utf-8") as f:
        f.write("{not json\n\n[1, 2]\n")
    report = aggregate(read_jsonl(path))
    assert report.versions == ["1", "2"]
    assert report.malformed == {"bad_device_id": 2}


def _devices(trained: TrainedField, shifted: str) -> list[SimulatedDevice]:
    streams = trained.train_readings
    train = np.concatenate(list(streams.values()))
    sigma = float(np.std(train[:, trained.sensors.index(shifted)]))
    path = trained.bundle.path
    return [
        SimulatedDevice("gw-1", ("plant-a",), path, streams),
        SimulatedDevice("gw-2", ("plant-b",), path, streams, shift={shifted: 3 * sigma}),
    ]


def test_simulated_devices_score_real_data_and_the_report_names_the_shifted_sensor(trained_field: TrainedField) -> None:
    shifted = trained_field.sensors[3]
    entries = simulate_fleet(_devices(trained_field, shifted), every=3000, window=5760)
    assert len(entries) > 4  # summaries over time, then a last one per device
    report = aggregate(entries)
    groups = {g.group: g for g in report.groups}
    assert groups["plant-a"].drift[0].over_alert == 0
    assert groups["plant-b"].drift[0].feature == shifted
    assert groups["plant-b"].drift[0].psi_max > PSI_ALERT
    assert groups["plant-b"].anomaly_ratio > groups["plant-a"].anomaly_ratio
    timeline = drift_timeline(entries)
    assert {row["device"] for row in timeline} == {"gw-1", "gw-2"}
    assert retrain_advice(report, trained_field.bundle.card.version).retrain
    with pytest.raises(ValueError, match="not sensors"):
        simulate_fleet([SimulatedDevice("x", (), trained_field.bundle.path, {}, shift={"nope": 1.0})])


def _log_and_check(report_entries: list[Any], uri: str, model: str, version: str) -> None:
    from mlflow import MlflowClient

    report = aggregate(report_entries, model=model)
    run_id = log_to_mlflow(report, model, version, uri, step=1)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.data.tags["otaml.kind"] == "field"
    assert run.data.tags["otaml.model_version"] == version
    stats = report.overall(version)
    assert stats is not None
    assert run.data.metrics["field_anomaly_ratio"] == pytest.approx(stats.anomaly_ratio)
    assert run.data.metrics["field_devices"] == stats.devices
    for drift in stats.drift:
        assert run.data.metrics[f"field_psi_{drift.feature}"] == pytest.approx(drift.psi_max)
    mv = client.get_model_version(model, version)
    assert mv.tags["field_report_run"] == run_id
    assert mv.tags["field_devices"] == str(stats.devices)
    assert client.get_run(mv.run_id).info.experiment_id == run.info.experiment_id
    with pytest.raises(FieldLogError, match="not in the Model Registry"):
        log_to_mlflow(aggregate([("d", [], summary("99", model=model))]), model, "99", uri)


def _register_version(uri: str, model: str) -> str:
    """A registered version made the way training does it: a run with a logged artifact, registered."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(f"field-{model}")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "test_f1", 0.9)
    client.set_terminated(run.info.run_id)
    client.create_registered_model(model)
    mv = client.create_model_version(model, f"runs:/{run.info.run_id}/onnx-model", run_id=run.info.run_id)
    return str(mv.version)


def test_log_to_mlflow_on_sqlite(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    version = _register_version(uri, "pump")
    entries = [("d1", ["a"], summary(version)), ("d2", ["b"], summary(version, psi={"temperature": 0.4}))]
    _log_and_check(entries, uri, "pump", version)


def test_log_to_mlflow_on_the_model_the_pipeline_registered(trained_field: TrainedField) -> None:
    card = trained_field.bundle.card
    entries = simulate_fleet(_devices(trained_field, trained_field.sensors[0]), every=100_000, window=5760)
    _log_and_check(copy.deepcopy(entries), trained_field.tracking_uri, card.name, card.version)


@pytest.mark.integration
def test_log_to_mlflow_on_a_postgres_backed_server(mlflow_server: str) -> None:
    version = _register_version(mlflow_server, "pump-field")
    entries = [("d1", ["a"], summary(version, model="pump-field"))]
    _log_and_check(entries, mlflow_server, "pump-field", version)
