"""Test tiers and shared helpers.

Tiers (markers): none = in-process; ``integration``; ``containerd``; ``arm64`` (see ARCHITECTURE.md).
A test of a real tier calls :func:`require` for every real component it needs. Locally a missing
component skips the test; with ``CI=true`` it fails it, so a green CI means every tier ran.

Fixture modules live in ``tests/fixtures/`` (one per real component) and are loaded here.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if p.stem != "__init__"
)

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(ok: bool, what: str, how: str = "") -> None:
    """Skip (locally) or fail (CI) when a real component this test needs is missing."""
    if ok:
        return
    message = f"{what} is not available" + (f": {how}" if how else "")
    if IN_CI:
        pytest.fail(f"CI=true and a real-tier component is missing: {message}", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite-backed MLflow store for one test; MLFLOW_TRACKING_URI points at it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri
