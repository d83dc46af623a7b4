from __future__ import annotations

from edge_runtime.metrics import Metrics, process_memory


def test_histogram_is_cumulative_and_labels_are_escaped() -> None:
    metrics = Metrics('pump "x"', "3", "sha256:ab")
    for seconds in (0.0001, 0.003, 0.003, 7.0):
        metrics.observe_request("POST", "/v1/score", 200, seconds)
    metrics.observe_scores(readings=5, anomalies=2)
    text = metrics.render(streams_active=3)
    assert 'otaml_http_request_duration_seconds_bucket{route="/v1/score",le="0.0005"} 1' in text
    assert 'otaml_http_request_duration_seconds_bucket{route="/v1/score",le="0.005"} 3' in text
    assert 'otaml_http_request_duration_seconds_bucket{route="/v1/score",le="2.5"} 3' in text
    assert 'otaml_http_request_duration_seconds_bucket{route="/v1/score",le="+Inf"} 4' in text
    assert 'otaml_http_request_duration_seconds_count{route="/v1/score"} 4' in text
    assert 'otaml_http_requests_total{method="POST",route="/v1/score",status="200"} 4' in text
    assert "otaml_readings_scored_total 5" in text
    assert "otaml_anomalies_flagged_total 2" in text
    assert "otaml_streams_active 3" in text
    assert 'otaml_model_info{model="pump \\"x\\"",version="3",digest="sha256:ab"} 1' in text
    assert text.endswith("\n")


def test_process_memory_reads_proc() -> None:
    memory = process_memory()
    assert memory["rss"] > 1_000_000
    assert memory["anon"] + memory["file"] <= memory["rss"] + 1
