"""Promotion gates: the config file, each gate's pass / fail / skip, and latency measured on the real ONNX file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from edge_runtime.bundle import Bundle, load_bundle, write_bundle
from registry.gates import (
    DEFAULT_GATES_FILE,
    GateConfig,
    GateConfigError,
    Latency,
    bundle_bytes,
    evaluate_gates,
    load_gate_config,
    measure_latency,
)

FAST = Latency(p50_ms=0.1, p99_ms=0.3, runs=100)


def test_repository_gates_file_loads_for_each_channel() -> None:
    staging = load_gate_config("staging", DEFAULT_GATES_FILE)
    production = load_gate_config("production", DEFAULT_GATES_FILE)
    assert staging.min_metrics["test_f1"] < production.min_metrics["test_f1"]
    assert production.min_parity_agreement >= staging.min_parity_agreement
    assert staging.max_bundle_bytes == production.max_bundle_bytes  # from [default]


def test_channel_table_overrides_default(tmp_path: Path) -> None:
    file = tmp_path / "gates.toml"
    file.write_text("[default]\nmax_bundle_bytes = 100\nlatency_runs = 50\n[production]\nmax_bundle_bytes = 7\n")
    assert load_gate_config("staging", file).max_bundle_bytes == 100
    assert load_gate_config("production", file).max_bundle_bytes == 7
    assert load_gate_config("production", file).latency_runs == 50


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[default]\nmax_bundel_bytes = 1\n", "unknown key"),
        ("[default]\nmax_latency_p99_ms = 'fast'\n", "max_latency_p99_ms"),
        ("[default]\nmin_metrics = { test_f1 = 'high' }\n", "min_metrics.test_f1"),
        ("[default]\nlatency_runs = 3\n", "latency_runs"),
        ("[default\n", "not valid TOML"),
    ],
)
def test_bad_gates_files_name_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    file = tmp_path / "gates.toml"
    file.write_text(text)
    with pytest.raises(GateConfigError, match=fragment):
        load_gate_config("staging", file)


def test_missing_gates_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(GateConfigError, match="--gates"):
        load_gate_config("staging", tmp_path / "nope.toml")


def test_all_gates_pass_on_a_good_version(model_bundle: Bundle) -> None:
    config = GateConfig(min_metrics={"test_f1": 0.5})
    report = evaluate_gates(
        config,
        "staging",
        bundle=model_bundle,
        metrics={"test_f1": 0.9, "parity_fp32_agreement": 1.0, "val_alarm_rate": 0.05, "val_label_rate": 0.04},
        latency=FAST,
    )
    assert report.passed
    assert [r.name for r in report.results] == [
        "metric:test_f1",
        "alarm_rate",
        "parity",
        "bundle_size",
        "latency_p50",
        "latency_p99",
    ]
    json.dumps(report.to_dict())  # recorded as an MLflow tag


def test_each_failing_gate_is_listed_with_its_reason(model_bundle: Bundle) -> None:
    config = GateConfig(
        min_metrics={"test_f1": 0.8},
        min_parity_agreement=0.999,
        max_bundle_bytes=1000,
        max_latency_p50_ms=0.05,
        max_latency_p99_ms=0.2,
    )
    report = evaluate_gates(
        config, "production", bundle=model_bundle, metrics={"test_f1": 0.5, "parity_fp32_agreement": 0.9}, latency=FAST
    )
    assert not report.passed
    failed = {r.name: r for r in report.failures}
    assert set(failed) == {"metric:test_f1", "parity", "bundle_size", "latency_p50", "latency_p99"}
    assert "0.5 < minimum 0.8" in failed["metric:test_f1"].detail
    assert "event" not in failed["metric:test_f1"].detail  # the run logged no event count
    assert failed["bundle_size"].value == bundle_bytes(model_bundle)


def test_metric_gate_says_how_many_labelled_events_it_rests_on(model_bundle: Bundle) -> None:
    config = GateConfig(min_metrics={"test_f1": 0.7})
    metrics = {"test_f1": 0.759, "test_n_events": 4.0, "parity_fp32_agreement": 1.0}
    report = evaluate_gates(config, "production", bundle=model_bundle, metrics=metrics, latency=FAST)
    detail = next(r.detail for r in report.results if r.name == "metric:test_f1")
    assert detail == "test_f1 = 0.759 >= minimum 0.7 (on 4 labelled test events)"
    metrics["test_n_events"] = 1.0
    report = evaluate_gates(config, "production", bundle=model_bundle, metrics=metrics, latency=FAST)
    assert next(r.detail for r in report.results if r.name == "metric:test_f1").endswith("(on 1 labelled test event)")


@pytest.mark.parametrize(
    ("metrics", "status", "limit"),
    [
        ({"val_alarm_rate": 0.96, "val_label_rate": 0.03}, "fail", 0.09),  # "flag everything"
        ({"val_alarm_rate": 0.08, "val_label_rate": 0.03}, "pass", 0.09),
        ({"val_alarm_rate": 0.6, "val_label_rate": 0.5}, "pass", 1.0),  # most of validation is anomalous
        ({"val_alarm_rate": 0.25}, "fail", 0.1),  # no labels: the sane cap
        ({"val_alarm_rate": 0.01}, "pass", 0.1),
        ({}, "skipped", None),  # a run from before the gate
    ],
)
def test_degenerate_validation_alarm_rate_is_refused(
    model_bundle: Bundle, metrics: dict[str, float], status: str, limit: float | None
) -> None:
    report = evaluate_gates(
        GateConfig(), "production", bundle=model_bundle, metrics={**metrics, "parity_fp32_agreement": 1.0}, latency=FAST
    )
    gate = next(r for r in report.results if r.name == "alarm_rate")
    assert gate.status == status
    assert gate.limit == (pytest.approx(limit) if limit is not None else None)
    if status == "fail":
        assert "degenerate" in gate.detail
        assert not report.passed


def test_alarm_rate_limits_come_from_the_gates_file(tmp_path: Path) -> None:
    path = tmp_path / "gates.toml"
    path.write_text("[default]\nmax_alarm_to_label_ratio = 2.0\nmax_unlabelled_alarm_rate = 0.05\n")
    config = load_gate_config("staging", path)
    assert (config.max_alarm_to_label_ratio, config.max_unlabelled_alarm_rate) == (2.0, 0.05)


def test_metric_gates_are_skipped_without_labels_but_parity_is_required(model_bundle: Bundle) -> None:
    report = evaluate_gates(
        GateConfig(min_metrics={"test_f1": 0.5}), "staging", bundle=model_bundle, metrics={}, latency=FAST
    )
    results = {r.name: r for r in report.results}
    assert results["metric:test_f1"].status == "skipped"
    assert results["parity"].status == "fail"
    assert "otaml train" in results["parity"].detail


def test_parity_is_read_for_the_variant_that_ships(model_bundle: Bundle, tmp_path: Path) -> None:
    card = model_bundle.card
    int8_card = dataclasses.replace(card, onnx=dataclasses.replace(card.onnx, quantization="int8-dynamic"))
    int8 = write_bundle(tmp_path / "int8", int8_card, model_bundle.onnx_path.read_bytes())
    metrics = {"parity_fp32_agreement": 1.0, "parity_int8_agreement": 0.9}
    fp32_report = evaluate_gates(GateConfig(), "staging", bundle=model_bundle, metrics=metrics, latency=FAST)
    int8_report = evaluate_gates(GateConfig(), "staging", bundle=load_bundle(int8.path), metrics=metrics, latency=FAST)
    assert fp32_report.passed
    (failure,) = int8_report.failures
    assert (failure.name, failure.value) == ("parity", 0.9)
    assert "int8-dynamic" in failure.detail


def test_latency_is_measured_on_the_onnx_file(model_bundle: Bundle) -> None:
    latency = measure_latency(model_bundle, runs=50)
    assert latency.runs == 50
    assert 0 < latency.p50_ms <= latency.p99_ms
    report = evaluate_gates(
        GateConfig(max_latency_p50_ms=0.0, max_latency_p99_ms=1e9, latency_runs=50),  # p99 cannot fail on load
        "staging",
        bundle=model_bundle,
        metrics={"parity_fp32_agreement": 1.0},
    )
    assert [r.name for r in report.failures] == ["latency_p50"]
