from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edge_runtime.agent.canary import Golden, HttpProber, golden_from_layers, parse_golden, replay_golden
from edge_runtime.errors import NotFound, Unhealthy

from .fakes import GOLDEN_SCORES, World


def test_golden_is_read_from_the_bundle_layer(world_with_v1: World) -> None:
    image = world_with_v1.registry[world_with_v1.channel]
    golden = golden_from_layers(world_with_v1.runtime, image.layers, "pump@v1")
    assert golden.scores == GOLDEN_SCORES
    assert golden.version == "1"


def test_an_image_without_a_bundle_is_reported(world_with_v1: World) -> None:
    image = world_with_v1.registry[world_with_v1.channel]
    with pytest.raises(NotFound, match=r"opt/model/model\.json"):
        golden_from_layers(world_with_v1.runtime, image.layers[:1], "pump@base")


def test_parse_golden_rejects_missing_vectors() -> None:
    with pytest.raises(Unhealthy, match="golden"):
        parse_golden(json.dumps({"name": "x"}).encode(), "img")


@pytest.fixture
def world_with_v1(tmp_path):  # type: ignore[no-untyped-def]
    world = World(tmp_path)
    world.publish("1")
    return world


class _Service(BaseHTTPRequestHandler):
    offset = 0.0
    ready = True

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200 if self.ready else 503, {})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        scores = [GOLDEN_SCORES[i % 3] + self.offset for i in range(len(body["readings"]))]
        self._send(200, {"scores": scores})


@pytest.fixture
def service() -> Iterator[tuple[int, type[_Service]]]:
    handler = type("Handler", (_Service,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


GOLDEN = Golden("pump", "1", [[1.0, 2.0, 3.0]] * 3, GOLDEN_SCORES, 1e-6)


def test_http_prober_replays_golden_over_real_http(service: tuple[int, type[_Service]]) -> None:
    port, handler = service
    prober = HttpProber(timeout_s=2)
    assert prober.ready(port)
    assert replay_golden(prober, port, GOLDEN, "c1") == 0.0
    handler.offset = 0.01
    with pytest.raises(Unhealthy, match="golden replay"):
        replay_golden(prober, port, GOLDEN, "c1")
    handler.ready = False
    assert not prober.ready(port)


def test_http_prober_reports_a_closed_port_as_not_ready() -> None:
    from otaml.ports import free_port

    port = free_port()
    prober = HttpProber(timeout_s=0.5)
    assert not prober.ready(port)
    with pytest.raises(Unhealthy, match="failed"):
        prober.score(port, "s", [[1.0]])


def test_a_golden_mismatch_prints_plain_numbers() -> None:
    import numpy as np

    class NumpyProber:
        def ready(self, port: int) -> bool:
            return True

        def score(self, port: int, stream: str, readings: list[list[float]]) -> list[float]:
            return [np.float64(0.2352941176470588), np.float32(0.5)]  # type: ignore[list-item]

    golden = Golden("pump", "1", [[1.0], [2.0]], [0.7352941176470589, 0.5], 1e-4)
    with pytest.raises(Unhealthy) as caught:
        replay_golden(NumpyProber(), 1, golden, "svc")
    assert "reading 0 scored 0.235294, expected 0.735294 (tolerance 0.0001)" in str(caught.value)
    assert "np." not in str(caught.value)
