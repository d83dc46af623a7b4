"""The scoring service: a FastAPI app over a ready :class:`~edge_runtime.scoring.Scorer`.

Routes: ``POST /v1/score``, ``GET /healthz``, ``GET /readyz``, ``GET /v1/model``, ``GET /metrics``.
Request bodies are read and parsed by hand (bounded read, strict JSON) instead of through pydantic
models: it is cheaper in memory and lets every bad input get a precise 4xx. ``POST /v1/score`` is
served by :mod:`edge_runtime.score_endpoint` straight from the middleware; its OpenAPI schema is still
declared here (FastAPI builds it lazily on the first ``GET /openapi.json``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from edge_runtime.bundle import Bundle, load_bundle
from edge_runtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edge_runtime.metrics import Metrics
from edge_runtime.score_endpoint import ScoreEndpoint, error_body, json_bytes
from edge_runtime.score_request import MAX_ABS_READING
from edge_runtime.scoring import GoldenResult, Scorer
from edge_runtime.settings import ServeSettings

ROUTES = ("/v1/score", "/healthz", "/readyz", "/v1/model", "/metrics", "/openapi.json")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def json_response(status: int, data: object, headers: Mapping[str, str] | None = None) -> Response:
    return Response(json_bytes(data), status_code=status, media_type="application/json", headers=headers)


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(error_body(code, message), status_code=status, media_type="application/json", headers=headers)


class ServiceMiddleware:
    """Counts and times every request by method, route and status; hands ``POST /v1/score`` to the fast path.

    Pure ASGI (no per-request task or body copy). Score requests skip the framework's routing and
    exception middlewares: :class:`~edge_runtime.score_endpoint.ScoreEndpoint` answers every outcome itself.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, score: ASGIApp | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.score = score

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        path, method = scope.get("path", ""), scope.get("method", "")
        app = self.score if self.score is not None and method == "POST" and path == "/v1/score" else self.app
        try:
            await app(scope, receive, send_status)
        finally:
            route = path if path in ROUTES else "other"  # bounded label cardinality
            self.metrics.observe_request(method, route, status, time.perf_counter() - start)


def _score_openapi(scorer: Scorer, settings: ServeSettings) -> dict[str, Any]:
    spec = scorer.card.features
    number = {"type": "number", "minimum": -MAX_ABS_READING, "maximum": MAX_ABS_READING}
    stream = {"type": "string", "minLength": 1, "maxLength": settings.max_stream_id_length}
    batch = {"minItems": 1, "maxItems": settings.max_batch}
    readings = {
        "type": "array",
        **batch,
        "items": {"type": "array", "minItems": spec.n_sensors, "maxItems": spec.n_sensors, "items": number},
    }
    record = {
        "type": "object",
        "required": list(spec.sensors),
        "properties": {name: number for name in spec.sensors},
        "additionalProperties": False,
    }
    records = {"type": "array", **batch, "items": record}
    body_schema = {
        "oneOf": [
            {
                "type": "object",
                "required": ["stream", "readings"],
                "properties": {"stream": stream, "readings": readings},
                "additionalProperties": False,
            },
            {
                "type": "object",
                "required": ["stream", "records"],
                "properties": {"stream": stream, "records": records},
                "additionalProperties": False,
            },
        ]
    }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body_schema}}}}


_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
_SCORE_SCHEMA = {
    "type": "object",
    "required": ["model", "version", "stream", "threshold", "scores", "anomalies"],
    "properties": {
        "model": {"type": "string"},
        "version": {"type": "string"},
        "stream": {"type": "string"},
        "threshold": {"type": "number"},
        "scores": {"type": "array", "items": {"type": "number"}},
        "anomalies": {"type": "array", "items": {"type": "boolean"}},
    },
}


def _responses(ok: dict[str, Any], *errors: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {200: {"description": "OK", "content": {"application/json": {"schema": ok}}}}
    for status in errors:
        out[status] = {"description": "Error", "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    return out


def create_app(scorer: Scorer, settings: ServeSettings, golden: GoldenResult | None = None) -> FastAPI:
    """The service for ``scorer``; ready only if ``golden`` (replayed now when not given) passed."""
    if golden is None:
        golden = scorer.self_test()
    card = scorer.card
    digest = scorer.bundle.digest
    metrics = Metrics(card.name, card.version, digest)
    ready = golden.ok
    endpoint = ScoreEndpoint(scorer, settings, metrics, golden)

    app = FastAPI(
        title="otaml edge scoring",
        version=card.version,
        description=f"Scores sensor readings with {card.name} v{card.version}.",
        docs_url=None,
        redoc_url=None,
        # A device sends no telemetry; this also skips FastAPI's per-request OpenTelemetry wrapper.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        hint = f" Routes: {', '.join(ROUTES)}." if exc.status_code in (404, 405) else ""
        message = f"{request.method} {request.url.path}: {exc.detail}.{hint}"
        return error_response(exc.status_code, code, message, exc.headers)  # keeps 405's Allow header

    @app.post(
        "/v1/score",
        openapi_extra=_score_openapi(scorer, settings),
        responses=_responses(_SCORE_SCHEMA, 400, 413, 415, 422, 503),
    )
    async def score(request: Request) -> Response:
        """Score readings of one stream, continuing that stream's feature window."""
        # Normally answered by the middleware's fast path; same handler when the app is mounted without it.
        status, body = await endpoint.handle(request.scope["headers"], request.receive)
        return Response(body, status_code=status, media_type="application/json")

    @app.get("/healthz", responses=_responses({"type": "object"}))
    async def healthz() -> Response:
        """Alive (says nothing about the model)."""
        return json_response(200, {"status": "alive"})

    @app.get("/readyz", responses=_responses({"type": "object"}, 503))
    async def readyz() -> Response:
        """200 only after the golden self-test passed."""
        info = {"model": card.name, "version": card.version, "bundle_digest": digest}
        if ready:
            return json_response(200, {"status": "ready", **info, "golden": golden.message})
        return json_response(503, {"status": "not_ready", **info, "reason": golden.message})

    @app.get("/v1/model", responses=_responses({"type": "object"}))
    async def model() -> Response:
        """The model card without golden data."""
        return json_response(200, {**card.public_dict(), "bundle_digest": digest})

    @app.get("/metrics", responses={200: {"description": "Prometheus text", "content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        """Prometheus text exposition."""
        return Response(metrics.render(len(scorer.streams)), media_type=METRICS_CONTENT_TYPE)

    app.add_middleware(ServiceMiddleware, metrics=metrics, score=endpoint)
    app.state.metrics = metrics
    app.state.scorer = scorer
    app.state.golden = golden
    return app


def build_service(settings: ServeSettings) -> tuple[FastAPI, GoldenResult, Bundle]:
    """Load and verify the bundle, create the session, replay the golden vectors, build the app."""
    bundle = load_bundle(settings.bundle)
    scorer = Scorer.load(bundle, max_streams=settings.max_streams)
    golden = scorer.self_test()
    return create_app(scorer, settings, golden), golden, bundle
