"""edge_runtime stays a leaf: no pipeline, registry, mlflow, sklearn or pandas, and it runs with only ``[edge]``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from edge_runtime.bundle import Bundle
from otaml.ports import free_port
from tests.conftest import require
from tests.edge_runtime.agent.test_imports import SCRIPT as AGENT_PROBE

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("pipeline", "registry", "mlflow", "sklearn", "pandas", "skl2onnx", "onnx", "otaml")

_PROBE = """
import importlib, json, pkgutil, sys
import edge_runtime
found = pkgutil.walk_packages(edge_runtime.__path__, "edge_runtime.")
names = sorted(m.name for m in found if not m.name.endswith("__main__"))
for name in names:
    importlib.import_module(name)
from edge_runtime.server import create_app  # the serving stack itself (fastapi, onnxruntime)
print(json.dumps({"imported": names, "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_edge_runtime_imports_nothing_forbidden() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "edge_runtime.server" in report["imported"]
    assert "edge_runtime.scoring" in report["imported"]
    leaked = sorted(set(report["loaded"]) & set(FORBIDDEN))
    assert not leaked, f"edge_runtime imported {leaked}"


@pytest.mark.integration
def test_serves_in_a_venv_with_only_the_edge_extra(model_bundle: Bundle, tmp_path: Path) -> None:
    """Non-editable ``pip install <repo>[edge]`` into a fresh venv, then ``python -m edge_runtime serve`` gets ready."""
    venv = tmp_path / "edge-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{REPO}[edge]"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    require(pip.returncode == 0, "pip install of the edge extra", pip.stderr[-2000:])
    probe = "import importlib.util as u; print([m for m in ('sklearn', 'mlflow', 'pandas', 'httpx') if u.find_spec(m)])"
    assert subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    # The agent builds from the installed copy alone (no httpx: it reads the registry with urllib3).
    agent = subprocess.run(
        [str(python), "-c", AGENT_PROBE, str(tmp_path / "agent-state")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
    )
    assert agent.returncode == 0, agent.stderr[-2000:]
    assert agent.stdout.splitlines() == ["Urllib3RegistryClient", ""]
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}  # no PYTHONPATH: the installed copy only
    proc = subprocess.Popen(
        [str(python), "-m", "edge_runtime", "serve", "--bundle", str(model_bundle.path), "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline, ready = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert ready is not None, proc.stderr.read() if proc.poll() is not None and proc.stderr else "no answer"
        assert ready.status_code == 200
        assert ready.json()["bundle_digest"] == model_bundle.digest
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
