"""``otaml models list|history``, ``otaml promote``, ``otaml rollback``, ``otaml keys generate`` through the CLI."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from edge_runtime.bundle import Bundle
from otaml.cli import main
from tests.registry.mlflow_versions import RELAXED_GATES, register_version


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def no_image_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("OTAML_BASE_IMAGE", "OTAML_IMAGE_REPO", "OTAML_SIGNING_KEY"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "relaxed-gates.toml").write_text(RELAXED_GATES)  # latency is not asserted in timed tests
    monkeypatch.setenv("OTAML_GATES", str(tmp_path / "relaxed-gates.toml"))


def test_promote_list_history_rollback(
    tracking_uri: str, model_bundle: Bundle, capsys: pytest.CaptureFixture[str], no_image_registry: None
) -> None:
    v1 = register_version("pump", model_bundle.path)
    v2 = register_version("pump", model_bundle.path)

    code, out, _ = run(capsys, "promote", "pump", v1, "--to", "production", "--approver", "alice")
    assert code == 0
    assert "PASS    parity" in out
    assert f"promoted pump v{v1} to production: models:/pump@production" in out
    assert "no image registry configured" in out

    code, out, _ = run(capsys, "promote", "pump", v2, "--to", "production", "--approver", "alice", "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["version"], data["previous_version"], data["gates"]["passed"]) == (v2, v1, True)

    code, out, _ = run(capsys, "rollback", "pump", "--to-version", v1, "--approver", "bob", "--reason", "false alarms")
    assert code == 0
    assert f"rolled back pump v{v1} to production (was v{v2})" in out

    code, out, _ = run(capsys, "models", "list", "pump")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "VERSION", "ALIASES"]
    row_v1 = next(line for line in lines if line.split()[:2] == ["pump", v1])
    assert "production" in row_v1.split()[2]
    assert "bob" in row_v1  # the last approval on production is the rollback's

    code, out, _ = run(capsys, "models", "history", "pump", "--json")
    events = json.loads(out)
    assert [(e["action"], e["version"], e["approver"]) for e in events] == [
        ("promote", v1, "alice"),
        ("promote", v2, "alice"),
        ("rollback", v1, "bob"),
    ]
    code, out, _ = run(capsys, "models", "history", "pump")
    assert "rollback" in out
    assert "false alarms" in out


def test_failed_gates_print_every_reason_and_exit_1(
    tracking_uri: str, model_bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_image_registry: None
) -> None:
    gates = tmp_path / "gates.toml"
    gates.write_text(RELAXED_GATES.replace("5_000_000", "10").replace("test_f1 = 0.5", "test_f1 = 0.99"))
    version = register_version("pump", model_bundle.path)
    code, out, err = run(capsys, "promote", "pump", version, "--to", "staging", "--gates", str(gates))
    assert code == 1
    assert "FAIL    bundle_size" in out
    assert "FAIL    metric:test_f1" in out
    assert "2 gate(s) failed" in err
    code, _, err = run(capsys, "promote", "pump", version, "--to", "staging", "--gates", str(gates), "--force")
    assert code == 1
    assert "--reason" in err
    code, out, _ = run(
        capsys, "promote", "pump", version, "--to", "staging", "--gates", str(gates), "--force", "--reason", "demo"
    )
    assert code == 0
    assert "FORCED: demo" in out


def test_half_configured_image_registry_is_refused(
    tracking_uri: str, model_bundle: Bundle, capsys: pytest.CaptureFixture[str], no_image_registry: None
) -> None:
    version = register_version("pump", model_bundle.path)
    code, _, err = run(capsys, "promote", "pump", version, "--to", "staging", "--image-repo", "127.0.0.1:5000/pump")
    assert code == 1
    assert "OTAML_BASE_IMAGE" in err


def test_models_list_of_an_unknown_model_says_so(tracking_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "list")
    assert (code, out.strip()) == (0, "no registered models")
    code, _, err = run(capsys, "models", "history", "nope")
    assert code == 1
    assert "otaml models list" in err


def test_keys_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "keys", "generate", "--out", str(tmp_path))
    assert code == 0
    assert stat.S_IMODE((tmp_path / "otaml-signing.key").stat().st_mode) == 0o600
    assert "key id:      sha256:" in out
    code, _, err = run(capsys, "keys", "generate", "--out", str(tmp_path))
    assert code == 1
    assert "already exists" in err
