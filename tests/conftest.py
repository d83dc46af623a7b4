"""Test tiers and shared helpers.

Tiers (markers): none = in-process; ``integration``; ``containerd``; ``arm64`` (see ARCHITECTURE.md).
A test of a real tier calls :func:`require` for every real component it needs. Locally a missing
component skips the test; with ``CI=true`` it fails it, so a green CI means every tier ran. Under ``CI=true``
any skip at all (a ``skipif``, an ``importorskip``, a skipped module) also fails the run: the hooks below
list every skip and set a failing exit status.

Hangs: pytest-timeout stops any test after ``timeout`` seconds (``[tool.pytest.ini_options]`` in
pyproject.toml), its fixtures' set-up and tear-down included (a cold base-image build, ~10 min, fits).

Fixture modules live in ``tests/fixtures/`` (one per real component) and are loaded here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if p.stem != "__init__"
)


def require(ok: bool, what: str, how: str = "") -> None:
    """Skip (locally) or fail (CI) when a real component this test needs is missing."""
    if ok:
        return
    message = f"{what} is not available" + (f": {how}" if how else "")
    if in_ci():
        pytest.fail(f"CI=true and a real-tier component is missing: {message}", pytrace=False)
    pytest.skip(message)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


class SkipGuard:
    """Under ``CI=true`` any skipped test or module fails the run, and the summary lists each one."""

    def __init__(self) -> None:
        self.skipped: list[str] = []

    def _note(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            longrepr = report.longrepr
            reason = (longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)).removeprefix("Skipped: ")
            self.skipped.append(f"{report.nodeid or '(collection)'}: {reason}")

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._note(report)  # a module skipped whole (e.g. ``pytest.importorskip`` at module level)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._note(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if in_ci() and self.skipped and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if in_ci() and self.skipped:
            terminalreporter.section("CI=true: skipped tests fail the run", red=True, bold=True)
            for line in self.skipped:
                terminalreporter.line(line)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipGuard(), "otaml-ci-skip-guard")


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite-backed MLflow store for one test; MLFLOW_TRACKING_URI points at it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri
