"""The scoring service in-process (fastapi.testclient): every route and every kind of bad input."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.bundle import Bundle
from edge_runtime.features import StreamWindow, batch_features
from edge_runtime.scoring import GoldenResult, Scorer
from edge_runtime.server import create_app
from edge_runtime.settings import ServeSettings
from tests.edge_runtime.asgi import ASGIClient
from tests.fixtures.bundles import SENSORS, onnx_scores, synthetic_readings

JSON = {"content-type": "application/json"}
JSON_HEADERS = [(b"content-type", b"application/json")]
REPO = Path(__file__).resolve().parents[2]


def make_client(bundle: Bundle, golden: GoldenResult | None = None, **limits: Any) -> ASGIClient:
    settings = ServeSettings(bundle=bundle.path, **limits)
    scorer = Scorer.load(bundle, max_streams=settings.max_streams)
    return ASGIClient(create_app(scorer, settings, golden))


@pytest.fixture
def client(model_bundle: Bundle) -> ASGIClient:
    return make_client(model_bundle, max_batch=50, max_body_bytes=4096, max_stream_id_length=16)


def post(client: ASGIClient, body: object, headers: dict[str, str] | None = None) -> Any:
    return client.post("/v1/score", content=json.dumps(body), headers=headers or JSON)


def history(client: ASGIClient, stream: str) -> tuple[int, bytes] | None:
    window = client.app.state.scorer.streams.peek(stream)
    if window is None:
        return None
    return window.count, window.state()


def test_score_readings_returns_scores_anomalies_and_model(client: ASGIClient, model_bundle: Bundle) -> None:
    readings = synthetic_readings(10, seed=3).tolist()
    readings[5] = [90.0, 4.0, 6.0]  # far outside anything seen in training
    response = post(client, {"stream": "pump-1", "readings": readings})
    assert response.status_code == 200
    data = response.json()
    card = model_bundle.card
    assert (data["model"], data["version"], data["stream"]) == (card.name, card.version, "pump-1")
    assert data["threshold"] == card.threshold
    assert len(data["scores"]) == len(data["anomalies"]) == 10
    assert data["anomalies"] == [s >= card.threshold for s in data["scores"]]
    assert data["anomalies"][5] is True
    assert not any(data["anomalies"][:5])  # normal readings before the spike


def test_records_keyed_by_name_equal_readings_in_order(client: ASGIClient) -> None:
    readings = synthetic_readings(6, seed=4)
    records = [dict(zip(reversed(SENSORS), reversed(row), strict=True)) for row in readings.tolist()]
    by_records = post(client, {"stream": "a", "records": records}).json()["scores"]
    by_readings = post(client, {"stream": "b", "readings": readings.tolist()}).json()["scores"]
    assert by_records == by_readings


def test_streaming_through_api_equals_batch_features_and_onnx(client: ASGIClient, model_bundle: Bundle) -> None:
    readings = synthetic_readings(60, seed=5)
    scores: list[float] = []
    start = 0
    for size in (1, 7, 1, 13, 2, 20, 16):  # uneven chunks, crossing window boundaries
        chunk = readings[start : start + size].tolist()
        scores += post(client, {"stream": "s", "readings": chunk}).json()["scores"]
        start += size
    expected = onnx_scores(model_bundle.onnx_path.read_bytes(), batch_features(model_bundle.card.features, readings))
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)


def test_streams_have_separate_histories(client: ASGIClient) -> None:
    a, b = synthetic_readings(20, seed=6), synthetic_readings(20, seed=7)
    post(client, {"stream": "a", "readings": a[:10].tolist()})
    post(client, {"stream": "b", "readings": b[:10].tolist()})
    interleaved = post(client, {"stream": "a", "readings": a[10:].tolist()}).json()["scores"]
    fresh = make_client(client.app.state.scorer.bundle)
    alone = post(fresh, {"stream": "a", "readings": a.tolist()}).json()["scores"][10:]
    assert interleaved == alone


def test_lru_evicts_least_recently_used_stream(model_bundle: Bundle) -> None:
    c = make_client(model_bundle, max_streams=2)
    for stream in ("a", "b", "a", "c"):  # "b" is least recently used when "c" arrives
        assert post(c, {"stream": stream, "readings": [[60.0, 0.5, 3.0]]}).status_code == 200
    streams = c.app.state.scorer.streams
    assert len(streams) == 2
    assert "a" in streams
    assert "c" in streams
    assert "b" not in streams
    assert "otaml_streams_evicted_total 1" in c.get("/metrics").text


def _bad_inputs() -> list[tuple[str, Any, dict[str, str] | None, int, str]]:
    ok_row = [60.0, 0.5, 3.0]
    return [
        ("malformed json", b'{"stream": "s", "readings": [[1,2,3]', None, 400, "malformed_json"),
        ("not utf-8", b'{"stream": "\xff"}', None, 400, "malformed_json"),
        ("NaN literal", b'{"stream": "s", "readings": [[NaN, 1, 2]]}', None, 422, "non_finite_value"),
        ("Infinity literal", b'{"stream": "s", "readings": [[Infinity, 1, 2]]}', None, 422, "non_finite_value"),
        ("overflowing float", b'{"stream": "s", "readings": [[1e999, 1, 2]]}', None, 422, "non_finite_value"),
        ("huge int", b'{"stream": "s", "readings": [[1' + b"0" * 400 + b", 1, 2]]}", None, 422, "non_finite_value"),
        ("out of range", {"stream": "s", "readings": [[1e20, 0.5, 3.0]]}, None, 422, "value_out_of_range"),
        ("string value", {"stream": "s", "readings": [["60", 0.5, 3.0]]}, None, 422, "invalid_value"),
        ("null value", {"stream": "s", "readings": [[None, 0.5, 3.0]]}, None, 422, "invalid_value"),
        ("bool value", {"stream": "s", "readings": [[True, 0.5, 3.0]]}, None, 422, "invalid_value"),
        ("too few values", {"stream": "s", "readings": [ok_row, [1.0, 2.0]]}, None, 422, "wrong_reading_length"),
        ("too many values", {"stream": "s", "readings": [[*ok_row, 1.0]]}, None, 422, "wrong_reading_length"),
        ("row not a list", {"stream": "s", "readings": [5]}, None, 422, "wrong_reading_length"),
        ("readings not a list", {"stream": "s", "readings": "1,2,3"}, None, 422, "invalid_readings"),
        (
            "unknown sensor",
            {"stream": "s", "records": [{**dict(zip(SENSORS, ok_row, strict=True)), "rpm": 1}]},
            None,
            422,
            "wrong_sensors",
        ),
        (
            "missing sensor",
            {"stream": "s", "records": [{"temperature": 60.0, "vibration": 0.5}]},
            None,
            422,
            "wrong_sensors",
        ),
        ("record not object", {"stream": "s", "records": [ok_row]}, None, 422, "invalid_records"),
        ("empty batch", {"stream": "s", "readings": []}, None, 422, "empty_batch"),
        ("batch above max", {"stream": "s", "readings": [ok_row] * 51}, None, 422, "batch_too_large"),
        ("missing stream", {"readings": [ok_row]}, None, 422, "missing_stream"),
        ("stream not string", {"stream": 7, "readings": [ok_row]}, None, 422, "invalid_stream"),
        ("empty stream", {"stream": "", "readings": [ok_row]}, None, 422, "invalid_stream"),
        ("stream id too long", {"stream": "x" * 17, "readings": [ok_row]}, None, 422, "stream_id_too_long"),
        ("no readings", {"stream": "s"}, None, 422, "missing_readings"),
        ("both forms", {"stream": "s", "readings": [ok_row], "records": []}, None, 422, "ambiguous_readings"),
        ("unknown field", {"stream": "s", "readings": [ok_row], "extra": 1}, None, 422, "unknown_field"),
        ("array body", [ok_row], None, 422, "invalid_body"),
        (
            "wrong content type",
            {"stream": "s", "readings": [ok_row]},
            {"content-type": "text/plain"},
            415,
            "unsupported_media_type",
        ),
        ("no content type", {"stream": "s", "readings": [ok_row]}, {}, 415, "unsupported_media_type"),
        (
            "body above limit",
            {"stream": "s", "readings": [ok_row] * 40, "pad": "x" * 5000},
            None,
            413,
            "body_too_large",
        ),
    ]


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"), [c[1:] for c in _bad_inputs()], ids=[c[0] for c in _bad_inputs()]
)
def test_bad_input_is_a_clear_4xx_and_leaves_history_unchanged(
    client: ASGIClient, body: Any, headers: dict[str, str] | None, status: int, code: str
) -> None:
    assert post(client, {"stream": "s", "readings": synthetic_readings(5).tolist()}).status_code == 200
    before = history(client, "s")
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post("/v1/score", content=content, headers=JSON if headers is None else headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert len(error["message"]) > 20
    assert history(client, "s") == before
    # and the service keeps serving
    assert post(client, {"stream": "s", "readings": [[60.0, 0.5, 3.0]]}).status_code == 200


def test_messages_say_what_is_expected(client: ASGIClient) -> None:
    message = post(client, {"stream": "s", "readings": [[1.0, 2.0]]}).json()["error"]["message"]
    assert "readings[0] has 2 values" in message
    assert "expected 3" in message
    assert "temperature" in message
    message = post(client, {"stream": "s", "records": [{"temperature": 1, "vibration": 2, "rpm": 3}]}).json()
    assert "['rpm']" in message["error"]["message"]
    assert "['pressure']" in message["error"]["message"]
    assert "limit is 50" in post(client, {"stream": "s", "readings": [[1, 2, 3]] * 51}).json()["error"]["message"]


def test_chunked_body_above_limit_is_refused(client: ASGIClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"stream": "s", "readings": ['
        for _ in range(400):
            yield b"[60.0, 0.5, 3.0],"

    response = client.post("/v1/score", content=chunks(), headers=JSON)
    assert response.status_code == 413
    assert "4096 bytes" in response.json()["error"]["message"]


def test_body_reading_stops_at_the_limit(model_bundle: Bundle) -> None:
    """The server must not buffer an unbounded body: it stops pulling chunks once past the limit."""
    settings = ServeSettings(bundle=model_bundle.path, max_body_bytes=1000)
    app = create_app(Scorer.load(model_bundle), settings)
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * 300, "more_body": pulled < 10_000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/score",
        "raw_path": b"/v1/score",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "server": ("test", 80),
        "client": ("test", 1),
    }
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 413
    assert pulled == 4


def test_healthz_readyz_and_model(client: ASGIClient, model_bundle: Bundle) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["bundle_digest"] == model_bundle.digest
    assert ready.json()["version"] == model_bundle.card.version
    model = client.get("/v1/model").json()
    assert model == {**model_bundle.card.public_dict(), "bundle_digest": model_bundle.digest}
    assert "readings" not in model["golden"]


def test_metrics_count_requests_readings_anomalies_and_memory(client: ASGIClient, model_bundle: Bundle) -> None:
    post(client, {"stream": "m", "readings": [[60.0, 0.5, 3.0], [95.0, 5.0, 7.0]]})
    post(client, {"stream": "m", "readings": []})
    client.get("/nowhere")
    text = client.get("/metrics").text
    assert 'otaml_http_requests_total{method="POST",route="/v1/score",status="200"} 1' in text
    assert 'otaml_http_requests_total{method="POST",route="/v1/score",status="422"} 1' in text
    assert 'otaml_http_requests_total{method="GET",route="other",status="404"} 1' in text
    assert 'otaml_http_request_duration_seconds_bucket{route="/v1/score",le="+Inf"} 2' in text
    assert "otaml_readings_scored_total 2" in text
    assert "otaml_anomalies_flagged_total 1" in text
    assert f'otaml_model_info{{model="pump-anomaly",version="1",digest="{model_bundle.digest}"}} 1' in text
    rss = next(line for line in text.splitlines() if line.startswith("process_resident_memory_bytes "))
    assert int(rss.split()[1]) > 10_000_000


def test_unknown_route_and_method_are_json_errors(client: ASGIClient) -> None:
    missing = client.get("/v2/score")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = client.get("/v1/score")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"


def test_failed_golden_means_not_ready_and_no_scoring(model_bundle: Bundle) -> None:
    failed = GoldenResult(False, 0.3, 4, "golden vector 4 scored 0.9, expected 0.6")
    c = make_client(model_bundle, golden=failed)
    ready = c.get("/readyz")
    assert ready.status_code == 503
    assert "golden vector 4" in ready.json()["reason"]
    assert c.get("/healthz").status_code == 200
    refused = post(c, {"stream": "s", "readings": [[60.0, 0.5, 3.0]]})
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "not_ready"


def test_wrong_golden_vectors_fail_the_self_test(model_bundle: Bundle) -> None:
    card = model_bundle.card
    wrong = dataclasses.replace(card.golden, scores=[s + 0.01 for s in card.golden.scores])
    bundle = dataclasses.replace(model_bundle, card=dataclasses.replace(card, golden=wrong))
    c = make_client(bundle)
    assert c.get("/readyz").status_code == 503
    assert "tolerance" in c.get("/readyz").json()["reason"]


def test_golden_replay_matches_stream_window(model_bundle: Bundle) -> None:
    scorer = Scorer.load(model_bundle)
    result = scorer.self_test()
    assert result.ok, result.message
    features = StreamWindow(model_bundle.card.features).push(np.asarray(model_bundle.card.golden.readings))
    np.testing.assert_allclose(scorer.model_scores(features), model_bundle.card.golden.scores, atol=1e-6)


def test_openapi_describes_the_score_body(client: ASGIClient) -> None:
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    readings = body["oneOf"][0]["properties"]["readings"]
    assert readings["maxItems"] == 50
    assert readings["items"]["minItems"] == 3
    assert set(schema["paths"]) >= {"/v1/score", "/healthz", "/readyz", "/v1/model", "/metrics"}


def test_fastapi_app_answers_like_the_router(model_bundle: Bundle) -> None:
    """The FastAPI application (mounted elsewhere, or for tooling) serves every route with the same handlers."""
    router, twin = make_client(model_bundle), make_client(model_bundle)
    framework = ASGIClient(twin.app.api)  # its own scorer: stream histories must not mix
    body = {"stream": "r", "readings": synthetic_readings(4).tolist()}
    assert post(framework, body).json() == post(router, body).json()
    bad = post(framework, {"stream": "r", "readings": [[1.0]]})
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "wrong_reading_length"
    for path in ("/healthz", "/readyz", "/v1/model"):
        assert framework.get(path).json() == router.get(path).json(), path
    assert "otaml_readings_scored_total 4" in framework.get("/metrics").text
    assert framework.get("/nope").json() == router.get("/nope").json()
    assert framework.get("/v1/score").json() == router.get("/v1/score").json()


def test_unknown_route_and_wrong_method_answer_json_with_the_routes(client: ASGIClient) -> None:
    missing = client.get("/v2/score")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert "/v1/score" in missing.json()["error"]["message"]
    wrong = client.get("/v1/score")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert client.post("/healthz").headers["allow"] == "GET, HEAD"


def test_serving_never_imports_fastapi_until_the_api_description_is_asked_for(model_bundle: Bundle) -> None:
    """FastAPI, Starlette and pydantic cost 16 MB on a device; scoring and probes must not load them."""
    code = f"""
import json, sys
from edge_runtime.bundle import load_bundle
from edge_runtime.scoring import Scorer
from edge_runtime.server import create_app
from edge_runtime.settings import ServeSettings
from tests.edge_runtime.asgi import ASGIClient

bundle = load_bundle({str(model_bundle.path)!r})
client = ASGIClient(create_app(Scorer.load(bundle), ServeSettings(bundle=bundle.path)))
readings = [[20.0, 1.0, 3.0]]
answers = [client.post("/v1/score", json={{"stream": "s", "readings": readings}}).status_code]
answers += [client.get(path).status_code for path in ("/healthz", "/readyz", "/v1/model", "/metrics", "/x")]
before = sorted(m for m in ("fastapi", "starlette", "pydantic") if m in sys.modules)
answers.append(client.get("/openapi.json").status_code)
after = sorted(m for m in ("fastapi", "starlette", "pydantic") if m in sys.modules)
print(json.dumps([answers, before, after]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    answers, before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert answers == [200, 200, 200, 200, 200, 404, 200]
    assert before == []
    assert after == ["fastapi", "pydantic", "starlette"]


class ConstantSession:
    """A model seam that scores every feature row ``value`` (NaN to play a broken model)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (features,) = feeds.values()
        return [np.full((features.shape[0], 1), self.value, dtype=np.float32)]


def constant_client(bundle: Bundle, value: float) -> ASGIClient:
    settings = ServeSettings(bundle=bundle.path)
    passed = GoldenResult(True, 0.0, 0, "not replayed: the model is a fake")
    return ASGIClient(create_app(Scorer(bundle, ConstantSession(value)), settings, passed))


def test_score_exactly_at_the_threshold_is_anomalous(model_bundle: Bundle) -> None:
    """The pipeline (evaluation, parity) flags ``score >= threshold``; the device must agree."""
    threshold = float(np.float32(model_bundle.card.threshold))  # what a float32 model output can equal
    bundle = dataclasses.replace(model_bundle, card=dataclasses.replace(model_bundle.card, threshold=threshold))
    at = post(constant_client(bundle, threshold), {"stream": "s", "readings": [[60.0, 0.5, 3.0]] * 2}).json()
    assert at["scores"] == [threshold, threshold]
    assert at["anomalies"] == [True, True]
    below = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    under = post(constant_client(bundle, below), {"stream": "s", "readings": [[60.0, 0.5, 3.0]]}).json()
    assert under["anomalies"] == [False]


def test_non_finite_model_scores_are_a_json_500_and_leave_history_unchanged(model_bundle: Bundle) -> None:
    c = constant_client(model_bundle, 0.1)
    assert post(c, {"stream": "s", "readings": synthetic_readings(5).tolist()}).status_code == 200
    before = history(c, "s")
    c.app.state.scorer._session.value = float("nan")
    for stream in ("s", "new"):
        response = post(c, {"stream": stream, "readings": [[60.0, 0.5, 3.0]]})
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "model_error"
    assert history(c, "s") == before
    assert history(c, "new") is None
    assert "otaml_readings_scored_total 5" in c.get("/metrics").text


def test_integer_beyond_python_digit_limit_is_a_422(model_bundle: Bundle) -> None:
    """Python refuses int() of over 4300 digits with a plain ValueError: still bad input, not a 500."""
    c = make_client(model_bundle, max_body_bytes=64 * 1024)
    assert post(c, {"stream": "s", "readings": [[60.0, 0.5, 3.0]]}).status_code == 200
    before = history(c, "s")
    body = b'{"stream": "s", "readings": [[1' + b"0" * 5000 + b", 0.5, 3.0]]}"
    response = c.post("/v1/score", content=body, headers=JSON)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "value_out_of_range"
    assert history(c, "s") == before


@given(stream=st.text(min_size=1, max_size=16))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_score_body_is_exactly_compact_json(client: ASGIClient, stream: str) -> None:
    """The hot path encodes its answer by hand: it must be the bytes json.dumps would give, for any stream id."""
    response = post(client, {"stream": stream, "readings": synthetic_readings(3, seed=5).tolist()})
    assert response.status_code == 200
    data = response.json()
    assert data["stream"] == stream
    assert response.content == json.dumps(data, separators=(",", ":")).encode()


def _scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/v1/score", "headers": headers}


def test_a_body_that_stalls_gets_408_and_the_connection_closes(model_bundle: Bundle) -> None:
    settings = ServeSettings(bundle=model_bundle.path, read_timeout_seconds=1)
    app = create_app(Scorer.load(model_bundle), settings)
    sent: list[dict[str, Any]] = []
    pulled = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        if pulled > 1:
            await asyncio.sleep(3600)  # a client that sent a first chunk and went quiet
        return {"type": "http.request", "body": b'{"stream": "s", ', "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(_scope([(b"content-type", b"application/json")]), receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"]["code"] == "body_timeout"
    assert app.state.scorer.streams.peek("s") is None


def test_score_requests_beyond_the_limit_are_busy_while_probes_answer(model_bundle: Bundle) -> None:
    settings = ServeSettings(bundle=model_bundle.path, max_concurrent_scores=2, read_timeout_seconds=60)
    app = create_app(Scorer.load(model_bundle), settings)
    release = asyncio.Event()
    answers: list[dict[str, Any]] = []

    async def stalled() -> dict[str, Any]:
        await release.wait()
        return {"type": "http.disconnect"}

    async def collect(message: dict[str, Any]) -> None:
        answers.append(message)

    async def scenario() -> None:
        holders = [asyncio.create_task(app(_scope(list(JSON_HEADERS)), stalled, collect)) for _ in range(2)]  # type: ignore[arg-type]
        await asyncio.sleep(0.01)  # both are now waiting for their bodies
        busy: list[dict[str, Any]] = []

        async def keep(message: dict[str, Any]) -> None:
            busy.append(message)

        await app(_scope(list(JSON_HEADERS)), stalled, keep)  # type: ignore[arg-type]
        assert busy[0]["status"] == 503
        assert json.loads(busy[1]["body"])["error"]["code"] == "busy"
        probe: list[dict[str, Any]] = []

        async def keep_probe(message: dict[str, Any]) -> None:
            probe.append(message)

        ready = {"type": "http", "method": "GET", "path": "/readyz", "headers": []}
        await app(ready, stalled, keep_probe)  # type: ignore[arg-type]
        assert probe[0]["status"] == 200
        release.set()
        await asyncio.gather(*holders)

    asyncio.run(scenario())
    # the two stalled clients left (disconnect): their slots are free again
    client = ASGIClient(app)
    assert post(client, {"stream": "after", "readings": synthetic_readings(1).tolist()}).status_code == 200


def test_openapi_can_be_switched_off(model_bundle: Bundle) -> None:
    settings = ServeSettings(bundle=model_bundle.path, openapi=False)
    client = ASGIClient(create_app(Scorer.load(model_bundle), settings))
    assert client.get("/openapi.json").status_code == 404
    assert client.get("/healthz").status_code == 200


def test_unknown_methods_share_one_metrics_label(client: ASGIClient) -> None:
    for method in ("BREW", "PROPFIND", "X-1"):
        assert client.request(method, "/healthz").status_code == 405
    text = client.get("/metrics").text
    assert 'method="other",route="/healthz",status="405"} 3' in text
    assert "BREW" not in text


def test_an_api_token_guards_scoring_but_not_the_probes(model_bundle: Bundle, tmp_path: Path) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text("s3cret-token-0123456789\n")
    client = make_client(model_bundle, api_token_file=token_file)
    body = {"stream": "a", "readings": [[60.0, 0.5, 3.0]]}
    missing = post(client, body)
    wrong = post(client, body, {**JSON, "authorization": "Bearer nope"})
    right = post(client, body, {**JSON, "authorization": "Bearer s3cret-token-0123456789"})
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["error"]["code"] == "unauthorized"
    scored = history(client, "a")
    assert scored is not None
    assert scored[0] == 1  # only the authorised request scored
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 200
    # The FastAPI application (mounted elsewhere, or for tooling) scores through the same guard.
    framework = ASGIClient(client.app.api)
    refused = post(framework, body)
    assert (refused.status_code, refused.json()) == (401, missing.json())
    assert refused.headers["www-authenticate"] == missing.headers["www-authenticate"]
    assert post(framework, body, {**JSON, "authorization": "Bearer s3cret-token-0123456789"}).status_code == 200


def test_the_fastapi_route_shares_the_services_score_slots(model_bundle: Bundle) -> None:
    """One concurrency limit whichever path a score request takes: the FastAPI route holds a slot too."""
    client = make_client(model_bundle, max_concurrent_scores=1, read_timeout_seconds=1)
    service, framework = client.app, ASGIClient(client.app.api)
    body = {"stream": "a", "readings": [[60.0, 0.5, 3.0]]}
    held = service.open_score([(b"content-type", b"application/json")])  # a request whose body is arriving
    busy = post(framework, body)
    assert (busy.status_code, busy.json()["error"]["code"]) == (503, "busy")
    held.gone()
    assert post(framework, body).status_code == 200

    async def never() -> Any:  # a client that never sends its body
        await asyncio.sleep(3600)

    reply = asyncio.run(service.score_reply([(b"content-type", b"application/json")], never))
    assert reply is not None
    assert reply.status == 408
    assert post(framework, body).status_code == 200  # the late request's slot is free again


def test_a_short_or_missing_token_file_is_a_clear_settings_error(model_bundle: Bundle, tmp_path: Path) -> None:
    from edge_runtime.settings import SettingsError

    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(SettingsError, match="at least 16"):
        make_client(model_bundle, api_token_file=short)
    with pytest.raises(SettingsError, match="cannot read"):
        make_client(model_bundle, api_token_file=tmp_path / "absent")


def test_anomalous_readings_are_logged_for_the_fleet_agent_and_normal_ones_are_not(model_bundle: Bundle) -> None:
    client = make_client(model_bundle)
    threshold = client.app.state.scorer.threshold
    assert client.get("/v1/anomalies").json() == {"seq": 0, "events": []}
    post(client, {"stream": "calm", "readings": synthetic_readings(20).tolist()})
    calm = client.get("/v1/anomalies").json()
    spike = [[500.0, 50.0, 90.0]] * 3
    answer = post(client, {"stream": "hot", "readings": spike}).json()
    log = client.get("/v1/anomalies").json()
    new = [e for e in log["events"] if e["seq"] > calm["seq"]]
    assert len(new) == sum(answer["anomalies"]) > 0
    assert {e["stream"] for e in new} == {"hot"}
    assert all(e["score"] >= threshold == e["threshold"] for e in new)
    assert log["seq"] == calm["seq"] + len(new)
    assert all("window" not in e for e in log["events"])  # nothing of the readings without capture


def test_captured_windows_are_the_readings_the_model_saw_for_the_latest_anomalies(model_bundle: Bundle) -> None:
    client = make_client(model_bundle, capture_windows=True)
    window = model_bundle.card.features.window
    history = synthetic_readings(window + 5, spikes=False)
    post(client, {"stream": "s", "readings": history.tolist()})
    before = client.get("/v1/anomalies").json()["seq"]
    # A spike early in a batch whose calm readings outlast the window: the last anomalous reading is not the
    # batch's last, and its window ends at it.
    batch = synthetic_readings(window + 12, seed=3, spikes=False)
    batch[2] = [500.0, 50.0, 90.0]
    answer = post(client, {"stream": "s", "readings": batch.tolist()}).json()
    flagged = [i for i, a in enumerate(answer["anomalies"]) if a]
    assert flagged, "the spike must be anomalous"
    last = flagged[-1]
    assert last < len(batch) - 1, "calm readings after the spike's window are not anomalous"
    seen = np.concatenate((history, batch[: last + 1]))[-window:]
    events = [e for e in client.get("/v1/anomalies").json()["events"] if e["seq"] > before]
    assert [e["seq"] for e in events if "window" in e] == [events[-1]["seq"]]  # one window a request, the last one
    np.testing.assert_allclose(np.array(events[-1]["window"]), seen, rtol=1e-5)
    # Over the network the same log comes without the readings: windows are for the agent on this machine.
    remote = ASGIClient(client.app, client=("192.0.2.7", 40000))
    assert all("window" not in e for e in remote.get("/v1/anomalies").json()["events"])


def test_a_single_reading_anomaly_carries_the_streams_earlier_readings(model_bundle: Bundle) -> None:
    # The common case on a device: one reading a request. Its window is mostly the stream's history.
    client = make_client(model_bundle, capture_windows=True)
    window = model_bundle.card.features.window
    history = synthetic_readings(window + 5, spikes=False)
    for row in history:
        post(client, {"stream": "s", "readings": [row.tolist()]})
    assert post(client, {"stream": "s", "readings": [[500.0, 50.0, 90.0]]}).json()["anomalies"] == [True]
    captured = client.get("/v1/anomalies").json()["events"][-1]["window"]
    expected = np.concatenate((history, [[500.0, 50.0, 90.0]]))[-window:]
    np.testing.assert_allclose(np.array(captured), expected, rtol=1e-5)


def test_only_the_latest_windows_are_kept_and_a_young_stream_gives_what_it_has(model_bundle: Bundle) -> None:
    client = make_client(model_bundle, capture_windows=True)
    for i in range(20):
        post(client, {"stream": f"new-{i}", "readings": [[500.0, 50.0, 90.0]]})
    events = client.get("/v1/anomalies").json()["events"]
    windowed = [e for e in events if "window" in e]
    assert len(windowed) == 16
    assert windowed == events[-16:]
    assert all(e["window"] == [[500.0, 50.0, 90.0]] for e in windowed)  # one reading seen: a one-row window


def test_a_window_never_exceeds_its_value_cap() -> None:
    from edge_runtime.anomaly_log import AnomalyLog

    log = AnomalyLog(captured=4, max_window_values=10, clock=lambda: 1.0)
    rows = np.arange(48, dtype=np.float64).reshape(16, 3)
    log.record("s", [0.1, 0.9], 0.5, window=lambda i: rows)
    (event,) = json.loads(log.to_json())["events"]
    assert event["window"] == rows[-3:].tolist()  # whole readings only, the latest
    wide = AnomalyLog(captured=4, max_window_values=2, clock=lambda: 1.0)
    wide.record("s", [0.9], 0.5, window=lambda i: rows)
    assert "window" not in json.loads(wide.to_json())["events"][0]  # not one reading fits: none kept
