"""Is a service container fit to serve? Readiness within a timeout, then the bundle's golden replay.

The golden data comes from the image itself: the bundle layer's ``opt/model/model.json``, read from
containerd's local content store after the pull (no second download, and containerd has verified its
digest). ``GET /v1/model`` does not carry the readings. The agent parses only the ``golden`` section here
(plain JSON) rather than importing :mod:`edge_runtime.bundle`, which would load numpy into the agent.
"""

from __future__ import annotations

import http.client
import io
import json
import math
import tarfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from edge_runtime.agent.runtime import ContainerRuntime
from edge_runtime.errors import NotFound, Unhealthy

BUNDLE_CARD = "opt/model/model.json"


@dataclass(frozen=True)
class Golden:
    model: str
    version: str
    readings: list[list[float]]
    scores: list[float]
    tolerance: float


def parse_golden(card_bytes: bytes, where: str) -> Golden:
    """The golden section of a ``model.json`` (schema 1), validated just enough to replay it."""
    try:
        data = json.loads(card_bytes)
        golden = data["golden"]
        readings = [[float(v) for v in row] for row in golden["readings"]]
        scores = [float(v) for v in golden["scores"]]
        tolerance = float(golden["tolerance"])
    except (ValueError, KeyError, TypeError) as exc:
        raise Unhealthy(f"{where}: the bundle's model.json has no usable golden vectors ({exc!r}).") from exc
    if not readings or len(readings) != len(scores):
        raise Unhealthy(f"{where}: golden vectors need equally many readings and scores, got {len(readings)}.")
    return Golden(str(data.get("name", "")), str(data.get("version", "")), readings, scores, tolerance)


def golden_from_layers(runtime: ContainerRuntime, layers: Sequence[str], where: str) -> Golden:
    """Find ``opt/model/model.json`` in the image's layers (top first: the bundle is the last layer)."""
    for digest in reversed(layers):
        blob = runtime.read_blob(digest)
        try:
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
                for name in (BUNDLE_CARD, "./" + BUNDLE_CARD):
                    try:
                        member = tar.getmember(name)
                    except KeyError:
                        continue
                    file = tar.extractfile(member)
                    if file is not None:
                        return parse_golden(file.read(), where)
        except tarfile.TarError as exc:
            raise Unhealthy(f"{where}: layer {digest} is not a readable tar ({exc}).") from exc
    raise NotFound(f"{where}: no layer holds /{BUNDLE_CARD}. Bake the image with registry/bake.py (bundle layer).")


class Prober(Protocol):
    def ready(self, port: int) -> bool:
        """True when ``GET /readyz`` answers 200 within the health timeout."""
        ...

    def score(self, port: int, stream: str, readings: list[list[float]]) -> list[float]:
        """``POST /v1/score``; raises Unhealthy on any failure."""
        ...


class HttpProber:
    """Talks to a service container on ``host:port`` with stdlib http.client (lighter than httpx)."""

    def __init__(self, host: str = "127.0.0.1", timeout_s: float = 2.0) -> None:
        self.host = host
        self.timeout_s = timeout_s

    def _request(self, port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, port, timeout=self.timeout_s)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def ready(self, port: int) -> bool:
        try:
            status, _ = self._request(port, "GET", "/readyz")
        except (OSError, http.client.HTTPException):
            return False
        return status == 200

    def score(self, port: int, stream: str, readings: list[list[float]]) -> list[float]:
        body = json.dumps({"stream": stream, "readings": readings}).encode()
        try:
            status, data = self._request(port, "POST", "/v1/score", body)
        except (OSError, http.client.HTTPException) as exc:
            raise Unhealthy(f"POST /v1/score on port {port} failed: {exc!r}.") from exc
        if status != 200:
            raise Unhealthy(f"POST /v1/score on port {port} answered {status}: {data[:300]!r}.")
        try:
            return [float(s) for s in json.loads(data)["scores"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise Unhealthy(f"POST /v1/score on port {port} returned no scores list: {data[:300]!r}.") from exc


def wait_ready(
    runtime: ContainerRuntime,
    prober: Prober,
    name: str,
    port: int,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll_s: float = 0.2,
) -> float:
    """Wait until the container answers ``/readyz``; returns the seconds it took.

    Raises Unhealthy when the container exits (or is OOM-killed) first, or the timeout passes."""
    start = clock()
    while True:
        status = runtime.status(name)
        if not status.running:
            why = "was OOM-killed" if status.oom_killed else f"exited with code {status.exit_code}"
            tail = _last_lines(runtime.logs(name), 3)
            raise (CanaryOOMKilled if status.oom_killed else CanaryExited)(
                f"Container {name} {why} before becoming ready" + (f"; its last output: {tail}" if tail else ".")
            )
        if prober.ready(port):
            return clock() - start
        if clock() - start >= timeout_s:
            raise CanaryNotReady(
                f"Container {name} was not ready on port {port} within {timeout_s:g} s; raise "
                "[update] ready_timeout_s if the model is slow to load, or check the service's logs."
            )
        sleep(poll_s)


class GoldenMismatch(Unhealthy):
    """The canary scored its bundle's golden vectors differently from training."""

    reason = "golden-mismatch"


class CanaryExited(Unhealthy):
    """The canary's process exited before it became ready."""

    reason = "canary-exited"


class CanaryOOMKilled(CanaryExited):
    """The canary was OOM-killed before it became ready (its model does not fit the memory limit)."""

    reason = "canary-oom-killed"


class CanaryNotReady(Unhealthy):
    """The canary did not answer /readyz within the ready timeout."""

    reason = "canary-not-ready"


def _last_lines(text: str, n: int) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:])[-600:]


def replay_golden(prober: Prober, port: int, golden: Golden, name: str) -> float:
    """Score the golden readings on a fresh stream; returns the largest error, raises Unhealthy on a mismatch."""
    stream = f"otaml-agent-golden-{uuid.uuid4().hex[:12]}"
    actual = prober.score(port, stream, golden.readings)
    if len(actual) != len(golden.scores):
        raise Unhealthy(f"Container {name} returned {len(actual)} scores for {len(golden.scores)} golden readings.")
    worst, worst_i = 0.0, -1
    for i, (got, want) in enumerate(zip(actual, golden.scores, strict=True)):
        error = abs(got - want) if math.isfinite(got) else math.inf
        if error > worst:
            worst, worst_i = error, i
    if worst > golden.tolerance:
        raise GoldenMismatch(
            f"Container {name} failed the golden replay: reading {worst_i} scored {float(actual[worst_i]):.6g}, "
            f"expected {float(golden.scores[worst_i]):.6g} (tolerance {golden.tolerance:g}). "
            "The image's model or runtime is wrong."
        )
    return worst
