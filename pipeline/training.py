"""Training end to end: features → splits → fit → threshold → evaluate → ONNX (+int8) → parity → MLflow → bundles.

:func:`train` runs one MLflow parent run and a nested run per detector. Each detector run logs its
parameters, metrics, plots, parity report, the sklearn and ONNX models, registers a new Model Registry
version, then writes and logs the bundles (which carry that version). A failure marks the runs FAILED.

Decisions (stated once, here; bundles are built by :mod:`pipeline.bundling`):

* Training rows: the training split minus labelled anomalies when labels exist (detectors learn what
  normal looks like; labels are for calibration and evaluation), then a seeded uniform sample of at most
  ``max_train_rows`` (20,000): IsolationForest draws 256 rows per tree anyway, PCA's covariance is stable
  long before that, and the autoencoder's epoch time grows linearly with rows.
* Threshold: :mod:`pipeline.thresholds` (best F1 on the labelled training and validation rows, else a
  training quantile).
* Features: each detector reads its own feature group (:func:`pipeline.detectors.feature_spec`: windowed
  statistics, raw readings, or lagged readings); the splits cut the same rows for every group, so all
  detectors are fitted, calibrated and compared on the same readings.
* Choice among detectors: the best validation PR-AUC when the validation split has both classes;
  otherwise the validation alarm rate closest to the nominal ``1 - quantile`` (the most stable calibration).
  A detector whose shipped model fails parity is chosen only if none passes. ``all`` includes the
  raw-value IsolationForest (``iforest_raw``, the baseline every report quotes), so it never ships a
  model that is worse on validation than that baseline. A detector replaces the baseline only when its
  validation PR-AUC is at least ``BASELINE_MARGIN`` (10 %) higher: on real data small validation
  differences between detectors did not carry over to the test split (SKAB in ``bench/bench_detect.py``).
* Shipped bundle: int8 when it passes parity and is smaller than fp32, else fp32.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.errors import InputError
from edge_runtime.features import FeatureSpec
from pipeline import bundling, plots, tracking
from pipeline.baseline import raw_iforest_metrics
from pipeline.detectors import BASELINE, DETECTORS, UnknownDetector, anomaly_scores, feature_spec, make_detector
from pipeline.evaluation import alarm_rate, detection_metrics, ranking_metrics
from pipeline.golden import pick_readings
from pipeline.onnx_export import export_onnx
from pipeline.parity import check_parity, score_scale
from pipeline.quantization import quantize_int8
from pipeline.splits import DEFAULT_FRACTIONS, Split, Splits, time_splits
from pipeline.telemetry import Telemetry
from pipeline.thresholds import DEFAULT_QUANTILE, Threshold, calibrate

Progress = Callable[[str], None]
BEST_PR_AUC_RULE = "best-pr-auc-on-validation"
BASELINE_MARGIN = 0.10
ALARM_RATE_RULE = "validation-alarm-rate-closest-to-nominal"


@dataclass(frozen=True)
class TrainConfig:
    window: int = 16
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    max_train_rows: int = 20_000
    quantile: float = DEFAULT_QUANTILE
    seed: int = 0
    golden_count: int = 64
    parity_rows: int = 5000


@dataclass(frozen=True)
class DetectorReport:
    """What training one detector produced."""

    detector: str
    run_id: str
    metrics: dict[str, float]  # test split (precision, recall, f1, roc_auc, pr_auc, ...)
    validation: dict[str, float]  # validation split (pr_auc, roc_auc, alarm_rate)
    threshold: float
    threshold_method: str
    parity: dict[str, Any]
    parity_status: str
    onnx_sizes: dict[str, int]  # "fp32" and, when quantized, "int8"
    quantization: str  # of the shipped bundle
    quantization_note: str
    version: str
    model_uri: str  # models:/NAME/VERSION
    bundle_path: Path  # the shipped bundle
    bundle_paths: dict[str, Path]
    shipped: str  # "fp32" or "int8"
    chosen: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    threshold_note: str = ""  # why a degenerate threshold was refused, when it was

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["bundle_path"] = str(self.bundle_path)
        data["bundle_paths"] = {k: str(v) for k, v in self.bundle_paths.items()}
        return data


@dataclass(frozen=True)
class TrainReport:
    model_name: str
    tracking_uri: str
    parent_run_id: str
    dataset: dict[str, Any]
    detectors: tuple[DetectorReport, ...]
    chosen: str
    selection_rule: str
    baseline: dict[str, float]  # raw-value IsolationForest on the test split
    timings: dict[str, float]

    @property
    def chosen_report(self) -> DetectorReport:
        return next(d for d in self.detectors if d.chosen)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "tracking_uri": self.tracking_uri,
            "parent_run_id": self.parent_run_id,
            "dataset": self.dataset,
            "chosen": self.chosen,
            "selection_rule": self.selection_rule,
            "baseline_iforest_raw": self.baseline,
            "timings": self.timings,
            "detectors": [d.to_dict() for d in self.detectors],
        }


def resolve_detectors(names: str | Sequence[str]) -> tuple[str, ...]:
    """``"all"``, one name, or a list of names → validated detector names, in :data:`DETECTORS` order."""
    wanted = [names] if isinstance(names, str) else list(names)
    if "all" in wanted:
        return DETECTORS
    unknown = [n for n in wanted if n not in DETECTORS]
    if unknown or not wanted:
        raise UnknownDetector(f"Unknown detector(s) {unknown or wanted}; choose from {list(DETECTORS)} or 'all'.")
    return tuple(d for d in DETECTORS if d in wanted)


def training_rows(split: Split, max_rows: int, seed: int) -> Split:
    """Normal rows of the training split (all rows without labels), uniformly subsampled to ``max_rows``."""
    rows = split if split.labels is None else split.take(split.labels == 0)
    if rows.n_rows < 2:
        raise InputError(
            f"only {rows.n_rows} normal training rows: the training split (the first part of each stream) is "
            "nearly all labelled anomalous. Provide more normal data or check the label column."
        )
    if rows.n_rows > max_rows:
        pick = np.sort(np.random.default_rng(seed).choice(rows.n_rows, size=max_rows, replace=False))
        rows = rows.take(pick)
    return rows


class _Clock:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


@dataclass
class FittedDetector:
    """One detector after fitting and calibration, before export."""

    name: str
    pipeline: Any
    threshold: Threshold
    validation_scores: npt.NDArray[np.float64]
    test_scores: npt.NDArray[np.float64]
    validation: dict[str, float]
    metrics: dict[str, float]


def prepare(telemetry: Telemetry, config: TrainConfig, detector: str = "iforest") -> tuple[Splits, Split]:
    """The time-ordered splits of ``detector``'s features and the rows it is fitted on."""
    spec = feature_spec(detector, telemetry.sensors, config.window)
    splits = time_splits(telemetry, spec, fractions=config.fractions)
    return splits, training_rows(splits.train, config.max_train_rows, config.seed)


def prepare_all(telemetry: Telemetry, config: TrainConfig, names: Sequence[str]) -> dict[str, tuple[Splits, Split]]:
    """:func:`prepare` for every detector, featurizing once per distinct feature group."""
    by_spec: dict[FeatureSpec, tuple[Splits, Split]] = {}
    prepared = {}
    for name in names:
        spec = feature_spec(name, telemetry.sensors, config.window)
        if spec not in by_spec:
            by_spec[spec] = prepare(telemetry, config, name)
        prepared[name] = by_spec[spec]
    return prepared


def fit_detector(name: str, splits: Splits, fit_rows: Split, config: TrainConfig) -> FittedDetector:
    """Fit one detector, score validation and test, calibrate its threshold and evaluate it (no MLflow)."""
    expected = feature_spec(name, splits.spec.sensors, config.window)
    if splits.spec != expected:
        raise InputError(
            f"detector {name!r} reads the features {expected.to_dict()}, but the splits hold {splits.spec.to_dict()}; "
            f"build them with prepare(telemetry, config, {name!r})."
        )
    pipeline = make_detector(name, random_state=config.seed).fit(fit_rows.features)
    val = anomaly_scores(pipeline, splits.validation.features)
    test = anomaly_scores(pipeline, splits.test.features)
    val_labels = splits.validation.labels
    train_scores = anomaly_scores(pipeline, splits.train.features)
    threshold = calibrate(train_scores, val, val_labels, quantile=config.quantile, train_labels=splits.train.labels)
    validation = {"alarm_rate": alarm_rate(val, threshold.value)}
    if val_labels is not None:
        validation["label_rate"] = float(np.mean(val_labels)) if val_labels.size else 0.0
        validation.update(ranking_metrics(val_labels, val))
    metrics = (
        detection_metrics(splits.test.labels, test, threshold.value)
        if splits.test.labels is not None
        else {"alarm_rate": alarm_rate(test, threshold.value)}
    )
    return FittedDetector(name, pipeline, threshold, val, test, validation, metrics)


def choose(
    fitted: Sequence[FittedDetector], passed: dict[str, bool] | None = None, quantile: float = DEFAULT_QUANTILE
) -> tuple[str, str]:
    """(chosen detector, rule) — see the module docstring. ``passed``: detector -> its shipped model passed parity."""
    passed = passed or {f.name: True for f in fitted}
    ranked_by_pr = all("pr_auc" in f.validation for f in fitted)
    if ranked_by_pr:
        key: Callable[[FittedDetector], tuple[bool, float]] = lambda f: (passed[f.name], f.validation["pr_auc"])  # noqa: E731
        rule = BEST_PR_AUC_RULE
        best = max(fitted, key=key)
        baseline = next((f for f in fitted if f.name == BASELINE and passed[f.name]), None)
        if (
            baseline is not None
            and best is not baseline
            and best.validation["pr_auc"] < (1.0 + BASELINE_MARGIN) * baseline.validation["pr_auc"]
        ):
            return baseline.name, rule
        return best.name, rule
    nominal = 1.0 - quantile
    key = lambda f: (passed[f.name], -abs(f.validation["alarm_rate"] - nominal))  # noqa: E731
    return max(fitted, key=key).name, ALARM_RATE_RULE


def _golden_stream(test: Split, scores: npt.NDArray[np.float64]) -> str:
    """The test stream holding the highest score (its neighbourhood makes the golden vectors)."""
    return str(test.streams[int(np.argmax(scores))])


def _write_plots(out: Path, fitted: FittedDetector, test: Split) -> list[Path]:
    stream = _golden_stream(test, fitted.test_scores)
    mask = test.streams == stream
    labels = test.labels
    paths = [
        plots.score_timeline(
            out / "score_over_time.png",
            test.timestamps[mask],
            fitted.test_scores[mask],
            fitted.threshold.value,
            None if labels is None else labels[mask],
            title=f"{fitted.name}: test split, stream {stream}",
        ),
        plots.score_histogram(
            out / "score_histogram.png",
            fitted.test_scores,
            fitted.threshold.value,
            labels,
            title=f"{fitted.name}: test",
        ),
    ]
    if labels is not None and test.has_both_classes:
        paths.append(plots.pr_curve(out / "pr_curve.png", labels, fitted.test_scores, title=f"{fitted.name}: test"))
    return paths


def _run_detector(
    fitted: FittedDetector,
    *,
    splits: Splits,
    fit_rows: Split,
    telemetry: Telemetry,
    model_name: str,
    out_dir: Path,
    tracking_uri: str,
    experiment_id: str,
    config: TrainConfig,
    clock: _Clock,
    progress: Progress,
) -> DetectorReport:
    import mlflow

    name = fitted.name
    spec = splits.spec
    with mlflow.start_run(run_name=name, nested=True, experiment_id=experiment_id) as run:
        run_id = run.info.run_id
        local = _Clock()
        with local.stage("export"):
            fp32 = export_onnx(fitted.pipeline, spec.n_features)
        with local.stage("quantize"):
            int8 = quantize_int8(fp32.onnx_bytes)
        progress(f"{name}: ONNX fp32 {fp32.size} B, int8 {int8.size if int8.size is not None else '-'} ({int8.mode})")
        with local.stage("parity"):
            parity = check_parity(
                fitted.test_scores,
                splits.test.features,
                fitted.threshold.value,
                fp32.onnx_bytes,
                int8.onnx_bytes,
                int8_note=int8.note,
                max_rows=config.parity_rows,
                seed=config.seed,
            )
        shipped = bundling.shipped_variant(fp32, int8, parity)
        shipped_quant = int8.mode if shipped == "int8" else "none"
        progress(f"{name}: parity {parity.status}, shipping {shipped}")
        tags = {
            "detector": name,
            "dataset_fingerprint": telemetry.fingerprint,
            "parity_status": parity.status,
            "quantization": shipped_quant,
            "int8_available": str(int8.onnx_bytes is not None).lower(),
            "threshold_method": fitted.threshold.method,
        }
        with local.stage("log"):
            mlflow.set_tags({f"otaml.{k}": v for k, v in tags.items()})
            mlflow.log_params(
                {
                    "detector": name,
                    "window": spec.window,
                    "stats": ",".join(spec.stats),
                    "lags": spec.lags,
                    "normalize": spec.normalize,
                    "sensors": ",".join(spec.sensors),
                    "n_features": spec.n_features,
                    "train_rows_used": fit_rows.n_rows,
                    "max_train_rows": config.max_train_rows,
                    "split_fractions": ",".join(f"{f:g}" for f in config.fractions),
                    "threshold_method": fitted.threshold.method,
                    **({"threshold_note": fitted.threshold.note[:500]} if fitted.threshold.note else {}),
                    "seed": config.seed,
                    "opset": fp32.opset,
                    **{f"model__{k}": v for k, v in fitted.pipeline.named_steps["detect"].get_params().items()},
                }
            )
            mlflow.log_metrics(
                {
                    **{f"test_{k}": v for k, v in fitted.metrics.items()},
                    **{f"val_{k}": v for k, v in fitted.validation.items()},
                    "threshold": fitted.threshold.value,
                    "onnx_fp32_bytes": fp32.size,
                    **({"onnx_int8_bytes": int8.size} if int8.size is not None else {}),
                    "parity_fp32_agreement": parity.fp32.agreement,
                    "parity_fp32_max_abs_diff": parity.fp32.max_abs_diff,
                    **(
                        {
                            "parity_int8_agreement": parity.int8.agreement,
                            "parity_int8_max_abs_diff": parity.int8.max_abs_diff,
                        }
                        if parity.int8 is not None
                        else {}
                    ),
                }
            )
            mlflow.log_dict(parity.to_dict(), "parity.json")
            with tempfile.TemporaryDirectory(prefix="otaml-plots-") as tmp:
                for path in _write_plots(Path(tmp), fitted, splits.test):
                    mlflow.log_artifact(str(path), "plots")
            example = splits.test.features[:5]
            tracking.log_sklearn(fitted.pipeline)
            onnx_uri = tracking.log_onnx(fp32.onnx_bytes, example=example)
            version = tracking.register(onnx_uri, model_name, tags)
        progress(f"{name}: registered {model_name} version {version}")

        with local.stage("bundle"):
            stream = _golden_stream(splits.test, fitted.test_scores)
            held_out = splits.test.stream(stream)
            readings = pick_readings(
                held_out.raw, fitted.test_scores[splits.test.streams == stream], config.golden_count
            )
            scale = score_scale(fitted.test_scores, fitted.threshold.value)
            bundle_variants = bundling.variants(fp32, int8, parity)
            bundle_paths = bundling.write_bundles(
                out_dir / f"{model_name}-v{version}-{name}",
                bundle_variants,
                provenance=bundling.Provenance(model_name, version, run_id, tracking_uri),
                detector=name,
                spec=spec,
                threshold=fitted.threshold,
                metrics=fitted.metrics,
                golden_readings=readings,
                score_scale=scale,
                reference_readings=fit_rows.raw,
                reference_features=fit_rows.features,
            )
            for variant, path in bundle_paths.items():
                mlflow.log_artifacts(str(path), f"bundle/{variant}")
            tracking.set_version_tags(model_name, version, {tracking.SHIPPED_BUNDLE_TAG: f"bundle/{shipped}"})
            mlflow.set_tag("otaml.shipped_bundle", f"bundle/{shipped}")
        for stage, seconds in local.timings.items():
            clock.timings[stage] = clock.timings.get(stage, 0.0) + seconds
        return DetectorReport(
            detector=name,
            run_id=run_id,
            metrics=fitted.metrics,
            validation=fitted.validation,
            threshold=fitted.threshold.value,
            threshold_method=fitted.threshold.method,
            threshold_note=fitted.threshold.note,
            parity=parity.to_dict(),
            parity_status=parity.status,
            onnx_sizes={"fp32": fp32.size, **({"int8": int8.size} if int8.size is not None else {})},
            quantization=shipped_quant,
            quantization_note=next(v.note for v in bundle_variants if v.name == shipped),
            version=version,
            model_uri=f"models:/{model_name}/{version}",
            bundle_path=bundle_paths[shipped],
            bundle_paths=bundle_paths,
            shipped=shipped,
            timings=local.timings,
        )


def train(
    telemetry: Telemetry,
    *,
    detectors: str | Sequence[str] = "all",
    model_name: str = tracking.DEFAULT_MODEL_NAME,
    out_dir: str | Path = "bundles",
    config: TrainConfig | None = None,
    tracking_uri: str | None = None,
    progress: Progress | None = None,
) -> TrainReport:
    """Train, evaluate, export, check parity, log, register and bundle each detector; choose one."""
    import mlflow

    config = config or TrainConfig()
    say: Progress = progress or (lambda _msg: None)
    names = resolve_detectors(detectors)
    if not model_name.strip():
        raise InputError("model name must not be empty; pass --model-name NAME (default 'otaml-anomaly').")
    out = Path(out_dir)
    clock = _Clock()
    with clock.stage("features"):
        prepared = prepare_all(telemetry, config, names)
    splits, fit_rows = next(iter(prepared.values()))
    groups = ", ".join(sorted({f"{sp.spec.n_features} ({'+'.join(_groups(sp.spec))})" for sp, _ in prepared.values()}))
    say(
        f"features: {telemetry.n_rows} rows, window {config.window}, feature groups {groups}; "
        f"train/validation/test {splits.train.n_rows}/{splits.validation.n_rows}/{splits.test.n_rows}, "
        f"fitting on {fit_rows.n_rows}"
    )
    with clock.stage("baseline"):
        baseline = raw_iforest_metrics(fit_rows, splits.test, seed=config.seed)
    dataset = {
        "source": telemetry.source,
        "fingerprint": telemetry.fingerprint,
        "rows": telemetry.n_rows,
        "sensors": list(telemetry.sensors),
        "streams": len({s for s, _ in telemetry.streams()}),
        "has_labels": telemetry.has_labels,
        "label_rate": None if not telemetry.has_labels else float(telemetry.frame["label"].mean()),
    }
    with ExitStack() as stack:
        with clock.stage("mlflow_setup"):
            uri, experiment_id = stack.enter_context(tracking.session(tracking_uri))
        with mlflow.start_run(run_name=f"train {','.join(names)}", experiment_id=experiment_id) as parent:
            mlflow.set_tags({"otaml.dataset_fingerprint": telemetry.fingerprint, "otaml.kind": "train"})
            mlflow.log_params(
                {
                    "detectors": ",".join(names),
                    "source": telemetry.source[-250:],
                    "rows": telemetry.n_rows,
                    "window": config.window,
                    "train_rows_used": fit_rows.n_rows,
                }
            )
            if baseline:
                mlflow.log_metrics({f"baseline_iforest_raw_test_{k}": v for k, v in baseline.items()})
            fitted: list[FittedDetector] = []
            reports: list[DetectorReport] = []
            for name in names:
                say(f"{name}: fitting on {fit_rows.n_rows} rows")
                own_splits, own_rows = prepared[name]
                with clock.stage(f"fit_{name}"):
                    f = fit_detector(name, own_splits, own_rows, config)
                if f.threshold.note:
                    say(f"{name}: degenerate threshold refused: {f.threshold.note}")
                say(f"{name}: threshold {f.threshold.value:.6g} ({f.threshold.method}); test {_brief(f.metrics)}")
                fitted.append(f)
                reports.append(
                    _run_detector(
                        f,
                        splits=own_splits,
                        fit_rows=own_rows,
                        telemetry=telemetry,
                        model_name=model_name,
                        out_dir=out,
                        tracking_uri=uri,
                        experiment_id=experiment_id,
                        config=config,
                        clock=clock,
                        progress=say,
                    )
                )
            passed = {r.detector: bool(r.parity[r.shipped]["passed"]) for r in reports}
            chosen, rule = choose(fitted, passed, config.quantile)
            with clock.stage("log"):
                for r in reports:
                    flag = str(r.detector == chosen).lower()
                    tracking.set_version_tags(model_name, r.version, {"chosen": flag, "selection_rule": rule})
                    mlflow.MlflowClient().set_tag(r.run_id, "otaml.chosen", flag)
                mlflow.set_tags({"otaml.chosen": chosen, "otaml.selection_rule": rule})
                summary = {
                    r.detector: {"version": r.version, "validation": r.validation, "test": r.metrics} for r in reports
                }
                mlflow.log_dict(
                    {"chosen": chosen, "rule": rule, "baseline_iforest_raw": baseline, "detectors": summary},
                    "summary.json",
                )
            reports = [replace(r, chosen=r.detector == chosen) for r in reports]
            say(f"chosen: {chosen} ({rule})")
            return TrainReport(
                model_name=model_name,
                tracking_uri=uri,
                parent_run_id=parent.info.run_id,
                dataset=dataset,
                detectors=tuple(reports),
                chosen=chosen,
                selection_rule=rule,
                baseline=baseline,
                timings={k: round(v, 3) for k, v in clock.timings.items()},
            )


def _groups(spec: FeatureSpec) -> list[str]:
    return ["raw", *(["stats"] if spec.stats else []), *([f"{spec.lags} lags"] if spec.lags else [])]


def _brief(metrics: dict[str, float]) -> str:
    keys = [k for k in ("precision", "recall", "f1", "roc_auc", "pr_auc", "vus_pr", "alarm_rate") if k in metrics]
    return " ".join(f"{k}={metrics[k]:.3f}" for k in keys)


def report_json(report: TrainReport) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=True, default=str)
