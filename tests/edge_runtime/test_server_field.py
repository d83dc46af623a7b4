"""Field metrics through the service: ``/metrics`` exposition (parsed) and ``GET /v1/field``."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest

from edge_runtime.bundle import Bundle
from edge_runtime.field_metrics import PSI_ALERT
from edge_runtime.scoring import Scorer
from edge_runtime.server import create_app
from edge_runtime.settings import ServeSettings
from tests.edge_runtime.asgi import ASGIClient
from tests.fixtures.field_bundles import TrainedField

JSON = {"content-type": "application/json"}
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str], float]]]:
    """Prometheus text format 0.0.4: (family -> type, samples); fails on any line it cannot read."""
    types: dict[str, str] = {}
    samples: list[tuple[str, dict[str, str], float]] = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line.startswith("#") or not line:
            continue
        else:
            match = SAMPLE.match(line)
            assert match, f"unparseable exposition line {line!r}"
            name, labels, value = match.groups()
            samples.append((name, dict(LABEL.findall(labels or "")), float(value)))
    return types, samples


def client_for(bundle: Bundle, **settings: Any) -> ASGIClient:
    config = ServeSettings(bundle=bundle.path, **settings)
    return ASGIClient(create_app(Scorer.load(bundle), config))


def feed(client: ASGIClient, trained: TrainedField, rows: int, shift: tuple[int, float] | None = None) -> None:
    for stream, readings in trained.train_readings.items():
        for i in range(0, rows, 100):
            batch = readings[i : min(i + 100, rows)].copy()
            if shift is not None:
                batch[:, shift[0]] += shift[1]
            response = client.post(
                "/v1/score", content=json.dumps({"stream": stream, "readings": batch.tolist()}), headers=JSON
            )
            assert response.status_code == 200, response.text


def test_metrics_expose_drift_anomaly_ratio_score_histogram_and_input_errors(trained_field: TrainedField) -> None:
    bundle = trained_field.bundle
    card = bundle.card
    client = client_for(bundle, field_window=4000)  # the window holds every reading sent
    sigma = float(np.std(np.concatenate(list(trained_field.train_readings.values()))[:, 1]))
    feed(client, trained_field, 1000, shift=(1, 3 * sigma))
    bad = client.post("/v1/score", content=b'{"stream": "x", "readings": [[1]]}', headers=JSON)
    assert bad.status_code == 422
    types, samples = parse_exposition(client.get("/metrics").text)

    assert types["otaml_feature_drift_psi"] == "gauge"
    assert types["otaml_anomaly_ratio"] == "gauge"
    assert types["otaml_score"] == "histogram"
    assert types["otaml_input_error_ratio"] == "gauge"
    info = [labels for name, labels, _ in samples if name == "otaml_model_info"]
    assert info == [{"model": card.name, "version": card.version, "digest": bundle.digest}]

    psi = {labels["feature"]: value for name, labels, value in samples if name == "otaml_feature_drift_psi"}
    assert set(psi) == set(card.features.sensors)
    assert psi[card.features.sensors[1]] > PSI_ALERT
    field_families = ("otaml_feature_drift_psi", "otaml_score_", "otaml_anomaly_ratio", "otaml_input_error_ratio")
    assert all(labels["version"] == card.version for name, labels, _ in samples if name.startswith(field_families))

    buckets = [(labels["le"], value) for name, labels, value in samples if name == "otaml_score_bucket"]
    assert card.field_reference is not None
    assert [le for le, _ in buckets] == [repr(e) for e in card.field_reference.score.edges] + ["+Inf"]
    counts = [value for _, value in buckets]
    assert counts == sorted(counts)  # cumulative
    total = next(value for name, _, value in samples if name == "otaml_score_count")
    assert counts[-1] == total == 2000
    # Readings at or above the threshold: the histogram has an edge at the threshold, so the ratio can be read off it.
    at_threshold = card.field_reference.score.edges.index(card.threshold)
    below = counts[at_threshold]
    ratio = next(value for name, _, value in samples if name == "otaml_anomaly_ratio")
    window = next(value for name, _, value in samples if name == "otaml_field_window_readings")
    assert window == 2000
    # A value equal to the threshold counts as "le" the threshold and as anomalous; with float scores, none is.
    assert ratio == pytest.approx((total - below) / total)
    errors = next(value for name, _, value in samples if name == "otaml_input_error_ratio")
    assert errors == pytest.approx(1 / 21)  # 20 scored requests, 1 refused as bad input


def test_v1_field_returns_the_compact_summary(trained_field: TrainedField) -> None:
    client = client_for(trained_field.bundle, field_window=2000)
    feed(client, trained_field, 600)
    response = client.get("/v1/field")
    assert response.status_code == 200
    assert len(response.content) <= 1024
    data = response.json()
    card = trained_field.bundle.card
    assert (data["model"], data["version"], data["readings"], data["window"]) == (card.name, card.version, 1200, 1200)
    assert data["drift"] == "ok"
    assert set(data["psi"]) == set(card.features.sensors)
    assert data["score"]["p50"] <= data["score"]["p90"] <= data["score"]["p99"]
    assert 0.0 <= data["anomaly_ratio"] <= 1.0
    assert data["input_error_ratio"] == 0.0


def test_a_bundle_without_reference_serves_and_says_drift_is_not_measured(model_bundle: Bundle) -> None:
    assert model_bundle.card.field_reference is None
    client = client_for(model_bundle)
    response = client.post(
        "/v1/score", content=json.dumps({"stream": "s", "readings": [[60.0, 0.5, 3.0]]}), headers=JSON
    )
    assert response.status_code == 200
    data = client.get("/v1/field").json()
    assert data["drift"] == "no_reference"
    assert data["psi"] == {}
    assert data["readings"] == 1
    _types, samples = parse_exposition(client.get("/metrics").text)
    assert not [s for s in samples if s[0] == "otaml_feature_drift_psi"]
    assert [s[2] for s in samples if s[0] == "otaml_score_count"] == [1.0]


def test_field_metrics_off_removes_them(model_bundle: Bundle) -> None:
    client = client_for(model_bundle, field_metrics=False)
    response = client.get("/v1/field")
    assert response.status_code == 404
    assert "OTAML_FIELD_METRICS" in response.json()["error"]["message"]
    types, _ = parse_exposition(client.get("/metrics").text)
    assert "otaml_score" not in types
