"""The run-wide guards in tests/conftest.py: under CI=true a skip fails the run; pytest-timeout is configured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUARD = "from tests.conftest import pytest_configure  # noqa: F401\n"


def run_pytest(tmp_path: Path, tests: str, ci: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(GUARD)
    (tmp_path / "test_sample.py").write_text(tests)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


SKIPPING = """
import pytest

def test_runs():
    pass

@pytest.mark.skipif(True, reason="no frobnicator here")
def test_skipped():
    pass
"""


def test_a_skipped_test_fails_the_run_under_ci(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, SKIPPING, ci=True)
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout
    assert "CI=true: skipped tests fail the run" in done.stdout
    assert "test_sample.py::test_skipped: no frobnicator here" in done.stdout


def test_a_skipped_test_is_only_reported_outside_ci(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, SKIPPING, ci=False)
    assert done.returncode == pytest.ExitCode.OK, done.stdout
    assert "skipped tests fail the run" not in done.stdout


def test_a_module_skipped_at_import_fails_the_run_under_ci(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, 'import pytest\npytest.importorskip("otaml_no_such_module")\n', ci=True)
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout
    assert "otaml_no_such_module" in done.stdout


def test_a_clean_run_passes_under_ci(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, "def test_runs():\n    pass\n", ci=True)
    assert done.returncode == pytest.ExitCode.OK, done.stdout


def test_every_test_has_a_timeout(pytestconfig: pytest.Config) -> None:
    # getini raises for an unknown key: this also proves pytest-timeout is installed and loaded.
    timeout = float(pytestconfig.getini("timeout"))
    assert 0 < timeout <= 15 * 60
