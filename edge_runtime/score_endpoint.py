"""``POST /v1/score``: the hot path of the service, from headers and body to a status and a JSON body.

The service's router (:class:`edge_runtime.server.ScoringService`) and FastAPI's declared route both call
:meth:`ScoreEndpoint.handle`, so they answer alike.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import numpy as np

from edge_runtime.features import Array, StreamWindow
from edge_runtime.metrics import Metrics
from edge_runtime.score_request import RequestError, parse_score_request
from edge_runtime.scoring import GoldenResult, NonFiniteScores, Scorer
from edge_runtime.settings import ServeSettings

log = logging.getLogger("edge_runtime.server")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


class ClientGone(Exception):
    """The client disconnected before its body arrived: nothing to answer."""


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # built once, not per response


def json_bytes(data: object) -> bytes:
    return _ENCODER.encode(data).encode()


def error_body(code: str, message: str) -> bytes:
    return json_bytes({"error": {"code": code, "message": message}})


def body_too_large(limit: int) -> RequestError:
    return RequestError(413, "body_too_large", f"The body exceeds the limit of {limit} bytes. Send smaller batches.")


def body_timeout(seconds: float) -> RequestError:
    message = f"The body did not arrive within {seconds} s of its headers; send it whole."
    return RequestError(408, "body_timeout", message)


def _declared_length(headers: Iterable[tuple[bytes, bytes]], limit: int) -> None:
    """Refuse a Content-Length that is not a number (400) or above ``limit`` (413) before reading the body."""
    for name, value in headers:
        if name == b"content-length":
            declared = value.decode("latin-1")
            if not declared.isdigit():
                raise RequestError(400, "invalid_content_length", f"Content-Length {declared!r} is not a number.")
            if int(declared) > limit:
                raise RequestError(
                    413,
                    "body_too_large",
                    f"The body has {declared} bytes; the limit is {limit} bytes. Send smaller batches.",
                )


async def read_body(receive: Receive, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it exceeds ``limit`` bytes: never buffers more."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body += message.get("body", b"")
        if len(body) > limit:
            raise body_too_large(limit)
        if not message.get("more_body", False):
            return bytes(body)


def _media_type(headers: Iterable[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"content-type":
            return value.decode("latin-1").split(";", 1)[0].strip().lower()
    return ""


class ScoreEndpoint:
    """Validates a whole request, then scores it on its stream's window; every bad input is a JSON 4xx."""

    def __init__(self, scorer: Scorer, settings: ServeSettings, metrics: Metrics, golden: GoldenResult) -> None:
        self.scorer = scorer
        self.settings = settings
        self.metrics = metrics
        self.golden = golden
        card = scorer.card
        prefix = _ENCODER.encode({"model": card.name, "version": card.version})
        self._head = prefix[:-1].encode() + b',"stream":'
        self._threshold = f',"threshold":{_ENCODER.encode(scorer.threshold)},"scores":['.encode()

    def check_head(self, headers: Iterable[tuple[bytes, bytes]]) -> tuple[int, bytes] | None:
        """The answer to a request refused on its headers alone (not ready, media type, length), else ``None``."""
        if not self.golden.ok:
            return 503, error_body("not_ready", f"The model is not ready: {self.golden.message}.")
        try:
            media = _media_type(headers)
            if media != "application/json":
                raise RequestError(
                    415, "unsupported_media_type", f"Content-Type {media or 'missing'!r}; send application/json."
                )
            _declared_length(headers, self.settings.max_body_bytes)
        except RequestError as exc:
            return self.refusal(exc)
        return None

    def refusal(self, exc: RequestError) -> tuple[int, bytes]:
        """Status and JSON body for a bad request, counted in the field metrics' input errors."""
        if self.metrics.field is not None:
            self.metrics.field.observe_error(exc.status)
        return exc.status, error_body(exc.code, exc.message)

    def answer(self, body: bytes) -> tuple[int, bytes]:
        """Status and JSON body for a whole request body whose headers :meth:`check_head` accepted."""
        settings = self.settings
        try:
            parsed = parse_score_request(
                body,
                self.scorer.card.features,
                max_batch=settings.max_batch,
                max_stream_id_length=settings.max_stream_id_length,
            )
        except RequestError as exc:
            return self.refusal(exc)
        streams = self.scorer.streams
        evicted = streams.evicted
        anomaly_log = self.metrics.anomalies
        # What the stream held before this request: a captured window may start there (capture only).
        before = streams.peek(parsed.stream) if anomaly_log.capturing else None
        try:
            scores = self.scorer.score(parsed.stream, parsed.readings)
        except NonFiniteScores:  # a server-side fault; the stream's history is unchanged
            log.error("model returned non-finite scores", extra={"event": "non_finite_scores", "stream": parsed.stream})
            return 500, error_body("model_error", "The model returned a non-finite score; report this bundle.")
        self.metrics.streams_evicted += streams.evicted - evicted
        threshold = self.scorer.threshold
        values = scores.tolist()
        # `>=` like the pipeline's evaluation and parity checks: a score at the threshold is anomalous.
        flags = [value >= threshold for value in values]
        anomalies = sum(flags)
        self.metrics.observe_scores(len(flags), anomalies)
        if self.metrics.field is not None:
            self.metrics.field.observe(parsed.readings, scores, anomalies)
        if anomalies:
            anomaly_log.record(
                parsed.stream,
                values,
                threshold,
                window=(lambda i: _window_at(before, parsed.readings, i, self.scorer.card.features.window))
                if anomaly_log.capturing
                else None,
            )
        # Encoded by hand around the constant part: what json.dumps gives (floats by repr, all finite here).
        return 200, b"".join(
            (
                self._head,
                _ENCODER.encode(parsed.stream).encode(),
                self._threshold,
                ",".join(map(repr, values)).encode(),
                b'],"anomalies":[',
                ",".join(["true" if flag else "false" for flag in flags]).encode(),
                b"]}",
            )
        )


def _window_at(before: StreamWindow | None, readings: Array, index: int, window: int) -> Array:
    """The readings the model saw for ``readings[index]``: the stream's last ``window`` readings ending at it."""
    history = before.recent() if before is not None else readings[:0]
    return np.concatenate((history, readings[: index + 1]))[-window:]
