"""The scoring service: a lean ASGI router in front, a FastAPI application that declares the API.

Routes: ``POST /v1/score``, ``GET /healthz``, ``GET /readyz``, ``GET /v1/model``, ``GET /metrics``,
``GET /v1/field`` (the compact field summary, :mod:`edge_runtime.field_metrics`), and
``GET /openapi.json`` (the OpenAPI 3 description).

:class:`ScoringService` is what uvicorn runs. It answers the five operational routes itself, through the
same handlers the FastAPI routes call, and hands ``/openapi.json`` to the FastAPI application, which it
builds on that first request. Importing FastAPI, Starlette, pydantic and opentelemetry-api costs 16 MB
resident and ~1 s of start-up on a 2-core x86 (``docs/footprint.md``): a device that never asks for its
API description never pays it, and score requests skip a framework middleware stack that cost more CPU
than the model. :func:`api_app` is a complete FastAPI app on its own as well (every route served by
the same handlers), for tooling and for mounting elsewhere.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from edge_runtime.anomaly_log import DEFAULT_CAPTURED, AnomalyLog
from edge_runtime.bundle import Bundle, load_bundle
from edge_runtime.field_metrics import FieldMetrics, summary, to_json
from edge_runtime.http_protocol import CLOSE, Reply
from edge_runtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edge_runtime.metrics import Metrics
from edge_runtime.score_endpoint import (
    ClientGone,
    ScoreEndpoint,
    body_timeout,
    body_too_large,
    error_body,
    json_bytes,
    read_body,
)
from edge_runtime.score_request import RequestError
from edge_runtime.scoring import GoldenResult, Scorer
from edge_runtime.settings import ServeSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
GET_ROUTES = ("/healthz", "/readyz", "/v1/model", "/metrics", "/v1/field", "/v1/anomalies", "/openapi.json")
ROUTES = ("/v1/score", *GET_ROUTES)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Answer = tuple[int, bytes, bytes]  # status, body, content type

JSON_TYPE = b"application/json"

log = logging.getLogger("edge_runtime.server")


class Handlers:
    """What each GET route answers, shared by the router and the FastAPI routes."""

    def __init__(self, scorer: Scorer, metrics: Metrics, golden: GoldenResult) -> None:
        card = scorer.card
        info = {"model": card.name, "version": card.version, "bundle_digest": scorer.bundle.digest}
        self.scorer = scorer
        self.metrics = metrics
        # The model and its readiness never change while a process runs: encode them once.
        self._healthz = json_bytes({"status": "alive"})
        if golden.ok:
            self._readyz: tuple[int, bytes] = (200, json_bytes({"status": "ready", **info, "golden": golden.message}))
        else:
            self._readyz = (503, json_bytes({"status": "not_ready", **info, "reason": golden.message}))
        self._model = json_bytes({**card.public_dict(), "bundle_digest": scorer.bundle.digest})

    def healthz(self) -> Answer:
        return 200, self._healthz, JSON_TYPE

    def readyz(self) -> Answer:
        return *self._readyz, JSON_TYPE

    def model(self) -> Answer:
        return 200, self._model, JSON_TYPE

    def prometheus(self) -> Answer:
        return 200, self.metrics.render(len(self.scorer.streams)).encode(), METRICS_CONTENT_TYPE.encode()

    def anomalies(self, windows: bool = False) -> Answer:
        return 200, self.metrics.anomalies.to_json(windows=windows), JSON_TYPE

    def field(self) -> Answer:
        field = self.metrics.field
        if field is None:
            message = "Field metrics are off on this device (OTAML_FIELD_METRICS=false); set it to true to get them."
            return 404, error_body("field_metrics_off", message), JSON_TYPE
        return 200, to_json(summary(field)).encode(), JSON_TYPE


async def _answer(send: Send, status: int, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _not_routed(method: str, path: str, routes: tuple[str, ...]) -> tuple[int, str, str, list[tuple[bytes, bytes]]]:
    if path in routes:
        allow = "POST" if path == "/v1/score" else "GET, HEAD"
        detail = f"{method} {path}: Method Not Allowed. Routes: {', '.join(routes)}."
        return 405, "method_not_allowed", detail, [(b"allow", allow.encode())]
    return 404, "not_found", f"{method} {path}: Not Found. Routes: {', '.join(routes)}.", []


class ScoringService:
    """The ASGI app of the service: routes, counts and times every request; FastAPI only for ``/openapi.json``.

    ``state`` holds ``scorer``, ``metrics`` and ``golden`` (as a Starlette app's ``state`` would).
    """

    def __init__(self, scorer: Scorer, settings: ServeSettings, golden: GoldenResult) -> None:
        card = scorer.card
        field = (
            FieldMetrics(card.name, card.version, card.threshold, card.field_reference, window=settings.field_window)
            if settings.field_metrics
            else None
        )
        self.metrics = Metrics(card.name, card.version, scorer.bundle.digest, field)
        if settings.capture_windows:
            self.metrics.anomalies = AnomalyLog(captured=DEFAULT_CAPTURED)
        self.endpoint = ScoreEndpoint(scorer, settings, self.metrics, golden)
        self.handlers = Handlers(scorer, self.metrics, golden)
        self.settings = settings
        self.state = SimpleNamespace(scorer=scorer, metrics=self.metrics, golden=golden)
        self._gets: dict[str, Callable[[], Answer]] = {
            "/healthz": self.handlers.healthz,
            "/readyz": self.handlers.readyz,
            "/v1/model": self.handlers.model,
            "/metrics": self.handlers.prometheus,
            "/v1/field": self.handlers.field,
        }
        self._api: FastAPI | None = None
        self._api_building: asyncio.Lock | None = None
        self._scoring = 0  # score requests in progress
        token = settings.api_token()
        self._token = token.encode() if token is not None else None
        self._routes = ROUTES if settings.openapi else tuple(r for r in ROUTES if r != "/openapi.json")

    @property
    def api(self) -> FastAPI:
        """The FastAPI application describing (and able to serve) the same routes; built on first use."""
        if self._api is None:
            from edge_runtime.api import api_app

            self._api = api_app(self)
        return self._api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":  # uvicorn runs with lifespan off; test clients may still send it
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if kind != "http":
            return
        start = time.perf_counter()
        path, method = scope["path"], scope["method"]
        status = 500
        try:
            if path == "/v1/score" and method == "POST":
                status = await self._score(scope, receive, send)
            elif path == "/openapi.json" and method in ("GET", "HEAD") and self.settings.openapi:
                status = 0

                async def send_status(message: Message) -> None:
                    nonlocal status
                    if message["type"] == "http.response.start":
                        status = int(message["status"])
                    await send(message)

                api = await self._built_api()
                await api(scope, receive, send_status)
            elif path == "/v1/anomalies" and method in ("GET", "HEAD"):
                # Captured windows are raw readings: only for the agent on this machine, never over the network.
                status, body, content_type = self.handlers.anomalies(windows=_loopback(scope))
                await _answer(send, status, body, content_type, [])
            elif method in ("GET", "HEAD") and (handler := self._gets.get(path)) is not None:
                status, body, content_type = handler()
                await _answer(send, status, body, content_type, [])
            else:
                status, code, detail, extra = _not_routed(method, path, self._routes)
                await _answer(send, status, error_body(code, detail), JSON_TYPE, extra)
        finally:
            # Bounded label cardinality: only known routes and methods become label values.
            route = path if path in ROUTES else "other"
            self.metrics.observe_request(
                method if method in METHODS else "other", route, status, time.perf_counter() - start
            )

    async def _built_api(self) -> FastAPI:
        """:attr:`api`, built in a worker thread the first time, so scoring and probes go on meanwhile."""
        if self._api is None:
            if self._api_building is None:
                self._api_building = asyncio.Lock()
            async with self._api_building:
                if self._api is None:
                    from edge_runtime.api import api_app

                    self._api = await asyncio.to_thread(api_app, self)
        return self._api

    # ── POST /v1/score: the ASGI path and the protocol's direct route share these ─────────────────────
    def open_score(self, headers: list[tuple[bytes, bytes]], timed: bool = False) -> ScoreRequest | Reply:
        """A score request accepted on its headers (in progress until answered or gone), or the refusal.

        ``timed``: the request counts itself in the request metrics (the direct route; the ASGI path counts
        every request in :meth:`__call__`).
        """
        started = time.perf_counter()
        reply = self._refused(headers)
        if reply is not None:
            if timed:
                self._observe_score(reply.status, started)
            return reply
        self._scoring += 1
        return ScoreRequest(self, started, timed)

    def _refused(self, headers: list[tuple[bytes, bytes]]) -> Reply | None:
        if self._token is not None and not _authorised(headers, self._token):
            detail = "POST /v1/score needs 'Authorization: Bearer <token>' (this service has OTAML_API_TOKEN_FILE set)."
            challenge = (b"www-authenticate", b'Bearer realm="otaml"')
            return Reply(401, error_body("unauthorized", detail), (challenge, CLOSE))
        if self._scoring >= self.settings.max_concurrent_scores:
            busy = f"{self._scoring} score requests are in progress, the limit; retry shortly."
            # Its body is still on the wire, unread: close the connection rather than buffer it.
            return Reply(503, error_body("busy", busy), ((b"retry-after", b"1"), CLOSE))
        refused = self.endpoint.check_head(headers)
        if refused is None:
            return None
        status, body = refused
        # After a refused length the rest of the body may still be on the wire: never reuse the connection.
        return Reply(status, body, (CLOSE,) if status == 413 else ())

    def _observe_score(self, status: int, started: float) -> None:
        self.metrics.observe_request("POST", "/v1/score", status, time.perf_counter() - started)

    async def _score(self, scope: Scope, receive: Receive, send: Send) -> int:
        reply = await self.score_reply(scope["headers"], receive)
        if reply is None:
            return 499  # nginx's "client closed request": counted, nothing sent
        await _answer(send, reply.status, reply.body, JSON_TYPE, list(reply.headers))
        return reply.status

    async def score_reply(self, headers: list[tuple[bytes, bytes]], receive: Receive) -> Reply | None:
        """The reply to a score request whose body comes from ``receive`` (``None``: the client left first).

        The ASGI path and the FastAPI application's route both answer through here: one token check, one
        concurrency limit, one body limit and deadline (the direct route shares them through :meth:`open_score`).
        """
        opened = self.open_score(headers)
        if not isinstance(opened, ScoreRequest):
            return opened
        settings = self.settings
        try:
            async with asyncio.timeout(settings.read_timeout_seconds):
                body = await read_body(receive, settings.max_body_bytes)
        except TimeoutError:
            return opened.timed_out()
        except RequestError:
            return opened.too_large()
        except ClientGone:
            return None
        else:
            return opened.answer(body)
        finally:  # gone, or cancelled (the drain time ran out) while the body was arriving: free its slot
            opened.gone()  # a no-op once the request was answered


class ScoreRequest:
    """A score request accepted on its headers, whose body is arriving; exactly one method below ends it."""

    __slots__ = ("_open", "_service", "_started", "_timed")

    def __init__(self, service: ScoringService, started: float, timed: bool) -> None:
        self._service, self._started, self._timed, self._open = service, started, timed, True

    def answer(self, body: bytes) -> Reply:
        """Score the whole body (every bad input a JSON 4xx; a bug a 500, and serving goes on)."""
        try:
            status, answer = self._service.endpoint.answer(body)
        except Exception:  # a bug, not bad input: answer and keep serving
            log.exception("scoring failed", extra={"event": "score_failed"})
            status, answer = 500, error_body("internal_error", "Scoring failed unexpectedly; see the service log.")
        return self._end(Reply(status, answer))

    def too_large(self) -> Reply:
        """The body went past the limit: 413, and the connection is not reused (the rest may be on the wire)."""
        status, body = self._service.endpoint.refusal(body_too_large(self._service.settings.max_body_bytes))
        return self._end(Reply(status, body, (CLOSE,)))

    def timed_out(self) -> Reply:
        """The body did not arrive in time: 408, and the connection is not reused."""
        status, body = self._service.endpoint.refusal(body_timeout(self._service.settings.read_timeout_seconds))
        return self._end(Reply(status, body, (CLOSE,)))

    def gone(self) -> None:
        """The client disconnected before its body arrived: nothing to answer (counted as 499)."""
        self._end(Reply(499, b""))

    def _end(self, reply: Reply) -> Reply:
        if self._open:
            self._open = False
            self._service._scoring -= 1
            if self._timed:
                self._service._observe_score(reply.status, self._started)
        return reply


class DirectScoreRoute:
    """``POST /v1/score`` as the HTTP protocol's direct route (:mod:`edge_runtime.http_protocol`)."""

    path = b"/v1/score"

    def __init__(self, service: ScoringService) -> None:
        self.service = service
        self.max_body = service.settings.max_body_bytes
        self.body_timeout_s = float(service.settings.read_timeout_seconds)

    def open(self, headers: list[tuple[bytes, bytes]]) -> ScoreRequest | Reply:
        return self.service.open_score(headers, timed=True)


def _authorised(headers: list[tuple[bytes, bytes]], token: bytes) -> bool:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, given = value.partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token)
    return False


def create_app(scorer: Scorer, settings: ServeSettings, golden: GoldenResult | None = None) -> ScoringService:
    """The service for ``scorer``; ready only if ``golden`` (replayed now when not given) passed."""
    if golden is None:
        golden = scorer.self_test()
    return ScoringService(scorer, settings, golden)


def build_service(
    settings: ServeSettings, settle: Callable[[], object] = lambda: None
) -> tuple[ScoringService, GoldenResult, Bundle]:
    """Load and verify the bundle, create the session, replay the golden vectors, build the app.

    ``settle`` runs after each step that touches many library pages (session creation, golden replay):
    the serve command pages them out there, so start-up never peaks above the steady state by much.
    """
    bundle = load_bundle(settings.bundle)
    scorer = Scorer.load(bundle, max_streams=settings.max_streams)
    settle()
    golden = scorer.self_test()
    settle()
    return create_app(scorer, settings, golden), golden, bundle


def _loopback(scope: Scope) -> bool:
    client = scope.get("client")
    host = client[0] if client else ""
    return host == "::1" or host.startswith("127.") or host.startswith("::ffff:127.")
