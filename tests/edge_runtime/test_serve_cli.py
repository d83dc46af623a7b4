"""``python -m edge_runtime serve`` as a real process: start-up checks, uvicorn, metrics, SIGTERM drain."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edge_runtime.bundle import MODEL_JSON, Bundle
from edge_runtime.serve_cli import _event_loop
from edge_runtime.settings import SettingsError
from otaml.ports import free_port
from tests.conftest import require
from tests.fixtures.bundles import synthetic_readings

REPO = Path(__file__).resolve().parents[2]


def serve_command(bundle: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edge_runtime", "serve", "--bundle", str(bundle), "--port", str(port), *extra]


def run_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTAML_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def log_lines(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.strip()]


def wait_ready(url: str, proc: subprocess.Popen[str], timeout: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            return httpx.get(url + "/readyz", timeout=1.0)
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("server did not answer /readyz in time")


def has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


@pytest.fixture(params=["uvloop", "asyncio"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    """The event loop the service runs on: uvloop (the default where installed) and asyncio's own (the fallback)."""
    if request.param == "uvloop":
        require(has_uvloop(), "uvloop", "pip install -c constraints.txt -e '.[serve]'")
    return str(request.param)


@pytest.fixture
def server(model_bundle: Bundle, loop_kind: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    proc = subprocess.Popen(
        serve_command(model_bundle.path, port, "--loop", loop_kind),
        env=run_env(),
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_the_event_loop_is_uvloop_where_installed_and_asyncio_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _event_loop("asyncio") == ("asyncio", "asked for (OTAML_LOOP=asyncio)")
    if has_uvloop():
        assert _event_loop("auto") == ("uvloop", "installed")
        assert _event_loop("uvloop")[0] == "uvloop"
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what a platform without a uvloop wheel sees: ImportError
    loop, why = _event_loop("auto")
    assert loop == "asyncio"
    assert "uvloop is not installed" in why
    with pytest.raises(SettingsError, match=r"OTAML_LOOP.*uvloop cannot be imported.*pip install uvloop"):
        _event_loop("uvloop")


def test_tampered_onnx_refuses_to_start(model_bundle: Bundle, tmp_path: Path) -> None:
    bundle = tmp_path / "tampered"
    shutil.copytree(model_bundle.path, bundle)
    with open(bundle / "model.onnx", "ab") as f:
        f.write(b"\0")
    done = subprocess.run(serve_command(bundle, free_port()), env=run_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    (line,) = [entry for entry in log_lines(done.stderr) if entry["level"] == "error"]
    assert line["event"] == "bundle_invalid"
    assert "sha256" in str(line["msg"])
    assert "Refusing to serve it" in str(line["msg"])


def _wrong_golden(model_bundle: Bundle, tmp_path: Path) -> Path:
    bundle = tmp_path / "wrong-golden"
    shutil.copytree(model_bundle.path, bundle)
    card = json.loads((bundle / MODEL_JSON).read_text())
    card["golden"]["scores"][3] += 0.25
    (bundle / MODEL_JSON).write_text(json.dumps(card))
    return bundle


def test_wrong_golden_vectors_exit_non_zero_with_a_clear_line(model_bundle: Bundle, tmp_path: Path) -> None:
    bundle = _wrong_golden(model_bundle, tmp_path)
    done = subprocess.run(serve_command(bundle, free_port()), env=run_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    (line,) = [entry for entry in log_lines(done.stderr) if entry["level"] == "error"]
    assert line["event"] == "golden_failed"
    assert "golden vector 3" in str(line["msg"])


def test_bad_env_value_exits_with_the_key_named(model_bundle: Bundle) -> None:
    env = run_env(OTAML_MAX_BATCH="lots")
    done = subprocess.run(
        serve_command(model_bundle.path, free_port()), env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "Config 'OTAML_MAX_BATCH' has value 'lots'" in done.stderr


@pytest.mark.integration
def test_wrong_golden_in_unready_mode_stays_up_with_503(model_bundle: Bundle, tmp_path: Path) -> None:
    port = free_port()
    bundle = _wrong_golden(model_bundle, tmp_path)
    proc = subprocess.Popen(
        serve_command(bundle, port, "--on-golden-failure", "unready"), env=run_env(), stderr=subprocess.PIPE, text=True
    )
    try:
        ready = wait_ready(f"http://127.0.0.1:{port}", proc)
        assert ready.status_code == 503
        assert "golden vector 3" in ready.json()["reason"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


@pytest.mark.integration
def test_real_server_scores_exposes_metrics_and_drains_on_sigterm(
    server: tuple[str, subprocess.Popen[str]], model_bundle: Bundle, loop_kind: str
) -> None:
    url, proc = server
    ready = wait_ready(url, proc)
    assert ready.status_code == 200
    assert ready.json()["bundle_digest"] == model_bundle.digest
    scored = httpx.post(url + "/v1/score", json={"stream": "p", "readings": synthetic_readings(5).tolist()})
    assert scored.status_code == 200
    assert len(scored.json()["scores"]) == 5
    metrics = httpx.get(url + "/metrics").text
    assert "otaml_readings_scored_total 5" in metrics
    assert 'otaml_http_requests_total{method="POST",route="/v1/score",status="200"} 1' in metrics
    assert "process_resident_memory_bytes" in metrics

    # An in-flight request: headers and half the body sent, then SIGTERM, then the rest of the body.
    body = json.dumps({"stream": "p", "readings": synthetic_readings(3, seed=2).tolist()}).encode()
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        head = (
            "POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        conn.sendall(head.encode() + body[:10])
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None, "the server must wait for the in-flight request"
        conn.sendall(body[10:])
        response = b""
        while chunk := conn.recv(65536):
            response += chunk
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK"
    assert len(json.loads(rest.split(b"\r\n\r\n", 1)[1])["scores"]) == 3
    assert proc.wait(timeout=30) == 0
    stderr = proc.stderr.read() if proc.stderr else ""
    lines = log_lines(stderr)
    assert [entry.get("event") for entry in lines][-1] == "stopped"
    (serving,) = [entry for entry in lines if entry.get("event") == "serving"]
    assert serving["loop"] == loop_kind
    assert f"on the {loop_kind} event loop" in str(serving["msg"])
    assert "POST /v1/score" not in stderr  # no access log unless asked


@pytest.mark.integration
def test_sigterm_as_pid_1_exits_zero(model_bundle: Bundle) -> None:
    """In a container the server is PID 1, which ignores signals it has no handler for: it must still stop cleanly."""
    unshare = shutil.which("unshare")
    require(
        unshare is not None and os.geteuid() == 0,
        "unshare as root (a new PID namespace)",
        "run as root with util-linux",
    )
    port = free_port()
    proc = subprocess.Popen(
        [str(unshare), "--pid", "--fork", "--mount-proc", *serve_command(model_bundle.path, port)],
        env=run_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_ready(f"http://127.0.0.1:{port}", proc).status_code == 200
        (server_pid,) = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        nspid = next(
            line for line in Path(f"/proc/{server_pid}/status").read_text().splitlines() if line.startswith("NSpid")
        )
        assert nspid.split()[-1] == "1"
        os.kill(server_pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # unshare --fork exits with its child's status
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert log_lines(proc.stderr.read() if proc.stderr else "")[-1]["event"] == "stopped"


def _vm_hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.integration
def test_slow_body_flood_stays_within_memory_and_normal_requests_get_answers(
    server: tuple[str, subprocess.Popen[str]],
) -> None:
    """200 clients that send most of a large body and stall: bounded memory, quick answers, then recovery."""
    url, proc = server
    assert wait_ready(url, proc).status_code == 200
    port = int(url.rsplit(":", 1)[1])
    chunk = b'{"stream": "x", "readings": [' + b"[1.0, 2.0, 3.0]," * 12_000  # ~200 KB of a 250 KB body
    attackers = []
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(f"Content-Length: {250_000}\r\n\r\n".encode())
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # the server stopped reading: what a bounded server does
            sock.send(chunk)
        attackers.append(sock)
    try:
        body = {"stream": "normal", "readings": synthetic_readings(1).tolist()}
        answer = httpx.post(url + "/v1/score", json=body, timeout=5)  # answered, not left hanging
        assert answer.status_code in (200, 503)  # 503: every connection slot is taken, retry later
        recovered = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the stalled bodies time out (5 s) and free their slots
            recovered = httpx.post(url + "/v1/score", json=body, timeout=5)
            if recovered.status_code == 200:
                break
            time.sleep(0.5)
        assert recovered is not None
        assert recovered.status_code == 200
        assert _vm_hwm_mb(proc.pid) < 100
    finally:
        for sock in attackers:
            sock.close()


@pytest.mark.integration
def test_slow_request_heads_are_cut_off_and_never_lock_out_the_probes(model_bundle: Bundle, loop_kind: str) -> None:
    """Clients that send a request head a byte at a time ("slowloris") are disconnected after the read timeout."""
    port = free_port()
    cmd = serve_command(model_bundle.path, port, "--read-timeout-seconds", "1", "--loop", loop_kind)
    proc = subprocess.Popen(cmd, env=run_env(), stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    slow = []
    try:
        assert wait_ready(url, proc).status_code == 200
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            slow.append(sock)
        assert httpx.get(url + "/readyz", timeout=5).status_code == 200
        for sock in slow:
            sock.settimeout(30)
            assert sock.recv(1024) == b""  # closed by the server, not by us
    finally:
        for sock in slow:
            sock.close()
        proc.kill()
        proc.wait(timeout=10)
