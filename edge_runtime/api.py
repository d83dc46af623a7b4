"""The FastAPI application of the scoring service: the OpenAPI description, and every route on the same handlers.

:class:`edge_runtime.server.ScoringService` builds it on the first ``GET /openapi.json``; nothing else on a
device imports this module (FastAPI and its dependencies cost 16 MB resident).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from edge_runtime.score_endpoint import error_body
from edge_runtime.score_request import MAX_ABS_READING
from edge_runtime.scoring import Scorer
from edge_runtime.server import ROUTES, Answer
from edge_runtime.settings import ServeSettings

if TYPE_CHECKING:
    from edge_runtime.server import ScoringService


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


def api_app(service: ScoringService) -> FastAPI:
    """The FastAPI application for ``service``: the OpenAPI description and every route, same handlers."""
    scorer, settings, handlers = service.state.scorer, service.settings, service.handlers
    card = scorer.card

    def respond(answer: Answer) -> Response:
        status, body, content_type = answer
        return Response(body, status_code=status, media_type=content_type.decode())

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
        body = error_body(code, message)
        return Response(body, status_code=exc.status_code, media_type="application/json", headers=exc.headers)

    @app.post(
        "/v1/score",
        openapi_extra=_score_openapi(scorer, settings),
        responses=_responses(_SCORE_SCHEMA, 400, 408, 413, 415, 422, 503),
    )
    async def score(request: Request) -> Response:
        """Score readings of one stream, continuing that stream's feature window."""
        reply = await service.score_reply(request.scope["headers"], request.receive)
        if reply is None:  # the client left before its body arrived: nobody reads an answer
            return Response(status_code=499)
        headers = {name.decode(): value.decode() for name, value in reply.headers}
        return Response(reply.body, status_code=reply.status, media_type="application/json", headers=headers)

    @app.get("/healthz", responses=_responses({"type": "object"}))
    async def healthz() -> Response:
        """Alive (says nothing about the model)."""
        return respond(handlers.healthz())

    @app.get("/readyz", responses=_responses({"type": "object"}, 503))
    async def readyz() -> Response:
        """200 only after the golden self-test passed."""
        return respond(handlers.readyz())

    @app.get("/v1/model", responses=_responses({"type": "object"}))
    async def model() -> Response:
        """The model card without golden data."""
        return respond(handlers.model())

    @app.get("/v1/field", responses=_responses({"type": "object"}, 404))
    async def field() -> Response:
        """The compact field summary of the served version (docs/field.md)."""
        return respond(handlers.field())

    @app.get("/v1/anomalies", responses=_responses({"type": "object"}))
    async def anomalies() -> Response:
        """The latest anomalous readings (stream, time, score, threshold), with a sequence number."""
        return respond(handlers.anomalies())

    @app.get("/metrics", responses={200: {"description": "Prometheus text", "content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        """Prometheus text exposition."""
        return respond(handlers.prometheus())

    return app
