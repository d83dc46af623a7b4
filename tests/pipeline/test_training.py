from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bundle import bundle_digest, load_bundle
from edge_runtime.errors import InputError
from edge_runtime.features import StreamWindow
from edge_runtime.scoring import Scorer
from pipeline.baseline import raw_iforest_metrics
from pipeline.detectors import DETECTORS, UnknownDetector, anomaly_scores
from pipeline.parity import device_session
from pipeline.synth import synth_telemetry
from pipeline.telemetry import Telemetry, load_telemetry, telemetry_from_frame
from pipeline.thresholds import BEST_F1, BEST_F1_CAPPED, BEST_F1_POOLED, BEST_F1_POOLED_CAPPED, Threshold, alarm_limit
from pipeline.tracking import download_bundle
from pipeline.training import (
    ALARM_RATE_RULE,
    BEST_PR_AUC_RULE,
    FittedDetector,
    TrainConfig,
    TrainReport,
    choose,
    fit_detector,
    prepare,
    prepare_all,
    resolve_detectors,
    train,
)

SMALL = TrainConfig(max_train_rows=2000, parity_rows=800, golden_count=32)


@pytest.fixture(scope="module")
def telemetry() -> Telemetry:
    return telemetry_from_frame(synth_telemetry(devices=2, days=1.5, seed=1))


def _replay(bundle_path: Path) -> float:
    """Max |score - golden| when replayed as edge_runtime.scoring's self-test does; checks the tolerance."""
    bundle = load_bundle(bundle_path)
    golden = bundle.card.golden
    features = StreamWindow(bundle.card.features).push(np.array(golden.readings))
    scores = device_session(bundle.onnx_path.read_bytes()).run(None, {"features": features.astype(np.float32)})[0]
    worst = float(np.abs(scores - np.array(golden.scores)).max())
    assert worst <= golden.tolerance, (bundle_path, worst, golden.tolerance)
    # And the device's own self-test accepts the bundle.
    result = Scorer.load(bundle).self_test()
    assert result.ok, result.message
    return worst


def _check_registered(report: TrainReport, telemetry: Telemetry, tracking_uri: str) -> None:
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    assert client.get_run(report.parent_run_id).info.status == "FINISHED"
    for d in report.detectors:
        mv = client.get_model_version(report.model_name, d.version)
        assert mv.run_id == d.run_id
        assert mv.tags["detector"] == d.detector
        assert mv.tags["dataset_fingerprint"] == telemetry.fingerprint
        assert mv.tags["parity_status"] == d.parity_status
        assert mv.tags["quantization"] == d.quantization
        assert mv.tags["chosen"] == str(d.chosen).lower()
        assert mv.tags["shipped_bundle"] == f"bundle/{d.shipped}"
        run = client.get_run(d.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["detector"] == d.detector
        assert run.data.metrics["parity_fp32_agreement"] == d.parity["fp32"]["agreement"]
        artifacts = {a.path for a in client.list_artifacts(d.run_id)}
        assert {"parity.json", "plots", "bundle"} <= artifacts
        plots = {Path(a.path).name for a in client.list_artifacts(d.run_id, "plots")}
        assert {"score_over_time.png", "score_histogram.png"} <= plots
        bundles = {Path(a.path).name for a in client.list_artifacts(d.run_id, "bundle")}
        assert set(d.bundle_paths) == bundles
        # The registered (ONNX) model carries its schema and an example, so MLflow can validate requests.
        info = mlflow.models.get_model_info(mv.source)
        n_features = load_bundle(d.bundle_path).card.features.n_features
        assert info.signature is not None
        assert info.signature.inputs.to_dict() == [
            {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, n_features)}, "name": "features"}
        ]
        assert info.signature.outputs.input_names() == ["score"]
        assert info.saved_input_example_info is not None
        example = mlflow.models.Model.load(mv.source).load_input_example(mlflow.artifacts.download_artifacts(mv.source))
        assert np.asarray(example["features"]).shape[1] == n_features


def test_train_all_detectors_end_to_end(telemetry: Telemetry, tracking_uri: str, tmp_path: Path) -> None:
    messages: list[str] = []
    report = train(telemetry, detectors="all", out_dir=tmp_path / "bundles", config=SMALL, progress=messages.append)

    assert [d.detector for d in report.detectors] == list(DETECTORS)
    assert sorted(int(d.version) for d in report.detectors) == list(range(1, len(DETECTORS) + 1))
    assert [d.chosen for d in report.detectors].count(True) == 1
    assert report.chosen_report.detector == report.chosen
    assert report.selection_rule == BEST_PR_AUC_RULE
    assert report.tracking_uri == tracking_uri
    assert any("registered" in m for m in messages)
    assert {"roc_auc", "pr_auc"} <= set(report.baseline)
    _check_registered(report, telemetry, tracking_uri)

    for d in report.detectors:
        assert d.threshold_method in {BEST_F1, BEST_F1_CAPPED, BEST_F1_POOLED, BEST_F1_POOLED_CAPPED}
        # No shipped threshold is degenerate: a refused one says why and stays within the cap.
        assert d.validation["alarm_rate"] <= alarm_limit(d.validation["label_rate"])
        assert bool(d.threshold_note) == (d.threshold_method in {BEST_F1_CAPPED, BEST_F1_POOLED_CAPPED})
        assert {"precision", "recall", "f1", "roc_auc", "pr_auc"} <= set(d.metrics)
        # Parity numbers are measured, not placeholders.
        fp32 = d.parity["fp32"]
        assert d.parity["rows"] == 800
        assert 0.999 <= fp32["agreement"] <= 1.0
        assert 0.0 <= fp32["max_abs_diff"] < 1e-4 * d.parity["score_scale"]
        assert d.onnx_sizes["fp32"] == (d.bundle_paths["fp32"] / "model.onnx").stat().st_size
        for variant, path in d.bundle_paths.items():
            bundle = load_bundle(path)
            card = bundle.card
            assert card.version == d.version
            assert card.detector == d.detector
            assert card.mlflow["model_uri"] == f"models:/otaml-anomaly/{d.version}"
            assert card.mlflow["run_id"] == d.run_id
            assert card.threshold == d.threshold
            assert card.threshold_method == d.threshold_method
            assert card.onnx.quantization == ("int8-dynamic" if variant == "int8" else "none")
            assert len(card.golden.readings) == 32
            _replay(path)
        assert d.bundle_path == d.bundle_paths[d.shipped]

    by_name = {d.detector: d for d in report.detectors}
    for name in ("iforest", "iforest_raw", "iforest_lag"):
        assert set(by_name[name].bundle_paths) == {"fp32"}
        assert by_name[name].quantization == "none"
        assert "changes nothing" in load_bundle(by_name[name].bundle_path).card.onnx.quantization_note
    # Each bundle carries the feature group its detector read, and the device rebuilds exactly that.
    assert load_bundle(by_name["iforest_raw"].bundle_path).card.features.feature_names() == list(telemetry.sensors)
    assert load_bundle(by_name["kmeans_lag"].bundle_path).card.features.lags == SMALL.window - 1
    for d in (by_name[n] for n in ("pca", "autoencoder", "pca_lag", "kmeans_lag")):
        assert set(d.bundle_paths) == {"fp32", "int8"}
        assert d.parity["int8"] is not None
        assert d.onnx_sizes["int8"] == (d.bundle_paths["int8"] / "model.onnx").stat().st_size
        int8_passed = d.parity["int8"]["passed"]
        assert (d.shipped == "int8") == (int8_passed and d.onnx_sizes["int8"] < d.onnx_sizes["fp32"])
        assert d.parity_status == ("pass" if int8_passed else "int8-below-target")

    chosen = report.chosen_report
    fetched = download_bundle("otaml-anomaly", chosen.version, tmp_path / "fetched")
    assert bundle_digest(fetched) == bundle_digest(chosen.bundle_path)


def test_failed_training_marks_runs_failed(
    telemetry: Telemetry, tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    def broken_export(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected export failure")

    monkeypatch.setattr("pipeline.training.export_onnx", broken_export)
    with pytest.raises(RuntimeError, match="injected"):
        train(telemetry, detectors="pca", out_dir=tmp_path, config=SMALL)
    assert mlflow.active_run() is None
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("otaml-train")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2  # parent + the pca run
    assert {r.info.status for r in runs} == {"FAILED"}
    assert client.search_registered_models() == []


def test_unlabelled_telemetry_uses_a_training_quantile(tracking_uri: str, tmp_path: Path) -> None:
    frame = synth_telemetry(devices=2, days=1, seed=2).drop(columns=["label"])
    telemetry = telemetry_from_frame(frame)
    assert not telemetry.has_labels
    report = train(telemetry, detectors=["pca"], out_dir=tmp_path, config=SMALL)
    (d,) = report.detectors
    assert d.threshold_method == "quantile-0.99-of-train"
    assert report.selection_rule == ALARM_RATE_RULE
    assert d.chosen
    assert set(d.metrics) == {"alarm_rate"}
    assert report.baseline == {}
    assert load_bundle(d.bundle_path).card.threshold_method == "quantile-0.99-of-train"


def test_training_leaves_no_global_mlflow_state(
    telemetry: Telemetry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two trainings against two stores in one process: each store gets only its own runs."""
    import mlflow
    from mlflow import MlflowClient

    first, second = (f"sqlite:///{tmp_path / name}" for name in ("a.db", "b.db"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", first)
    train(telemetry, detectors="pca", out_dir=tmp_path / "a", config=SMALL)
    assert mlflow.get_tracking_uri() == first
    monkeypatch.setenv("MLFLOW_TRACKING_URI", second)
    assert mlflow.get_tracking_uri() == second  # not pinned to the first store
    report = train(telemetry, detectors="pca", out_dir=tmp_path / "b", config=SMALL)
    assert report.tracking_uri == second
    for uri in (first, second):
        versions = MlflowClient(tracking_uri=uri).search_model_versions("name='otaml-anomaly'")
        assert [str(v.version) for v in versions] == ["1"]
    # Artifacts of a sqlite store live beside its database.
    assert (tmp_path / "mlruns").is_dir()
    assert report.detectors[0].run_id in {p.name for p in (tmp_path / "mlruns").rglob("*") if p.is_dir()}


def test_resolve_detectors() -> None:
    assert resolve_detectors("all") == DETECTORS
    assert "iforest_raw" in DETECTORS  # the baseline is always a candidate of "all"
    assert resolve_detectors(["autoencoder", "pca"]) == ("pca", "autoencoder")
    with pytest.raises(UnknownDetector, match="choose from"):
        resolve_detectors("svm")
    with pytest.raises(UnknownDetector):
        resolve_detectors([])


def test_cli_offers_every_detector() -> None:
    from otaml.cmd_train import DETECTOR_CHOICES

    assert (*DETECTORS, "all") == DETECTOR_CHOICES


def test_fit_detector_refuses_splits_of_another_feature_group(telemetry: Telemetry) -> None:
    config = TrainConfig(window=8)
    splits, fit_rows = prepare(telemetry, config, "iforest")
    with pytest.raises(InputError, match="prepare\\(telemetry, config, 'pca_lag'\\)"):
        fit_detector("pca_lag", splits, fit_rows, config)


def test_empty_model_name_is_rejected(telemetry: Telemetry, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="model name"):
        train(telemetry, detectors="pca", model_name=" ", out_dir=tmp_path)


@pytest.mark.integration
def test_train_against_a_postgres_backed_mlflow_server(
    telemetry: Telemetry, mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    report = train(telemetry, detectors=["iforest", "pca"], model_name="otaml-it", out_dir=tmp_path / "b", config=SMALL)
    assert report.tracking_uri == mlflow_server
    _check_registered(report, telemetry, mlflow_server)
    for d in report.detectors:
        for path in d.bundle_paths.values():
            _replay(path)
    chosen = report.chosen_report
    fetched = download_bundle("otaml-it", chosen.version, tmp_path / "fetched")
    assert bundle_digest(fetched) == bundle_digest(chosen.bundle_path)
    assert load_bundle(fetched).card.mlflow["tracking_uri"] == mlflow_server


@pytest.mark.parametrize("seed", [0, 1])
def test_chosen_detector_beats_isolation_forest_on_raw_values(seed: int) -> None:
    """The issue's bar: with defaults, the chosen detector ranks anomalies better than IsolationForest on raw values."""
    telemetry = telemetry_from_frame(synth_telemetry(devices=2, days=3, seed=seed))
    config = TrainConfig()
    splits, fit_rows = prepare(telemetry, config)
    fitted = [fit_detector(name, splits, fit_rows, config) for name in ("iforest", "pca", "autoencoder")]
    chosen, rule = choose(fitted)
    assert rule == BEST_PR_AUC_RULE
    best = next(f for f in fitted if f.name == chosen)
    assert best.validation["pr_auc"] == max(f.validation["pr_auc"] for f in fitted)
    baseline = raw_iforest_metrics(fit_rows, splits.test, seed=0)
    assert best.metrics["pr_auc"] > 2 * baseline["pr_auc"]
    assert best.metrics["roc_auc"] > baseline["roc_auc"]


def _fitted(name: str, pr_auc: float) -> FittedDetector:
    empty = np.empty(0)
    return FittedDetector(name, None, Threshold(0.5, "x"), empty, empty, {"pr_auc": pr_auc, "alarm_rate": 0.01}, {})


@pytest.mark.parametrize(
    ("scores", "chosen"),
    [
        ({"iforest_raw": 0.540, "pca_lag": 0.585, "iforest": 0.55}, "iforest_raw"),  # 8 % better: noise, keep
        ({"iforest_raw": 0.30, "pca_lag": 0.585, "iforest": 0.55}, "pca_lag"),  # clearly better: replace
        ({"iforest_raw": 0.60, "pca_lag": 0.585}, "iforest_raw"),  # the baseline is best
        ({"iforest": 0.4, "pca": 0.41}, "pca"),  # no baseline among the candidates: plain best
    ],
)
def test_choice_keeps_the_baseline_unless_clearly_beaten(scores: dict[str, float], chosen: str) -> None:
    fitted = [_fitted(name, pr) for name, pr in scores.items()]
    assert choose(fitted) == (chosen, BEST_PR_AUC_RULE)


def test_a_baseline_that_fails_parity_is_not_preferred() -> None:
    fitted = [_fitted("iforest_raw", 0.54), _fitted("pca_lag", 0.585)]
    assert choose(fitted, {"iforest_raw": False, "pca_lag": True})[0] == "pca_lag"


REAL_SLICE = Path(__file__).resolve().parents[1] / "data" / "nab_machine_temperature_slice.csv"


def test_on_real_telemetry_the_choice_never_loses_to_the_raw_isolation_forest() -> None:
    """NAB machine temperature (MIT, Numenta), 2014-01-06 to 02-10: one failure window in validation, one in test."""
    telemetry = load_telemetry(REAL_SLICE, label_column="label")
    config = TrainConfig()
    prepared = prepare_all(telemetry, config, DETECTORS)
    fitted = [fit_detector(name, *prepared[name], config) for name in DETECTORS]
    chosen, rule = choose(fitted)
    assert rule == BEST_PR_AUC_RULE
    best = next(f for f in fitted if f.name == chosen)
    baseline = next(f for f in fitted if f.name == "iforest_raw")
    assert best.validation["pr_auc"] >= baseline.validation["pr_auc"]
    assert best.metrics["roc_auc"] >= baseline.metrics["roc_auc"]
    assert best.metrics["roc_auc"] >= 0.9
    assert {"vus_pr", "pr_auc"} <= set(best.metrics)
    for f in fitted:  # no threshold flags far more than the failure windows
        assert f.validation["alarm_rate"] <= alarm_limit(f.validation["label_rate"])


def test_fit_detector_calibrates_on_every_labelled_reading_before_the_test_split(telemetry: Telemetry) -> None:
    config = SMALL
    splits, fit_rows = prepare(telemetry, config, "pca")
    assert splits.train.labels is not None
    assert splits.train.labels.any()
    assert splits.validation.has_both_classes
    fitted = fit_detector("pca", splits, fit_rows, config)
    assert fitted.threshold.method in {BEST_F1_POOLED, BEST_F1_POOLED_CAPPED}
    train_scores = anomaly_scores(fitted.pipeline, splits.train.features)
    pooled = np.concatenate([train_scores, fitted.validation_scores])
    labels = np.concatenate([splits.train.labels, splits.validation.labels])
    # The threshold is the pooled best F1: no other cut of the pooled scores has a better F1 within the cap.
    cuts = np.unique(pooled)
    flagged = pooled[None, :] >= cuts[:, None]
    tp = (flagged & (labels[None, :] == 1)).sum(axis=1)
    f1 = 2 * tp / (flagged.sum(axis=1) + labels.sum())
    rates = (fitted.validation_scores[None, :] >= cuts[:, None]).mean(axis=1)
    best = f1[rates <= alarm_limit(fitted.validation["label_rate"])].max()
    chosen = pooled >= fitted.threshold.value
    assert 2 * (chosen & (labels == 1)).sum() / (chosen.sum() + labels.sum()) == pytest.approx(best)
