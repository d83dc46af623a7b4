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


def test_promote_stages_a_version_while_another_runs_and_all_at_once_says_so(
    tracking_uri: str, model_bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_image_registry: None
) -> None:
    from registry.oci.layout import Layout
    from registry.oci.refs import pinned
    from registry.signing import generate_keys
    from registry.tuf.site import init
    from tests.registry.oci.fakes import write_fake_base

    write_fake_base(tmp_path / "base")
    Layout(tmp_path / "repo", create=True)
    site = init(tmp_path / "trust", tmp_path / "offline", approvers=1, threshold=1)
    image = [
        "--base-image",
        pinned(f"oci:{tmp_path / 'base'}:base"),
        "--image-repo",
        f"oci:{tmp_path / 'repo'}",
        "--signing-key",
        str(generate_keys(tmp_path / "keys").private_key),
    ]
    trust = ["--trust-dir", str(site.site.path), "--approval-key", str(site.approver_keys[0])]
    v1, v2, v3 = (register_version("pump", model_bundle.path) for _ in range(3))
    promote = ["promote", "pump", "--to", "production", "--approver", "alice", *image]

    code, _, err = run(capsys, *promote[:2], v1, *promote[2:], "--all-at-once")
    assert (code, err.strip()) == (
        1,
        "otaml promote: error: --all-at-once is about the approval: give --trust-dir and --approval-key too.",
    )
    code, out, _ = run(capsys, *promote[:2], v1, *promote[2:], *trust)
    assert code == 0
    assert "approved in the trust site: devices will run it" in out
    code, out, _ = run(capsys, *promote[:2], v2, *promote[2:], *trust)
    assert code == 0
    assert "staged: devices stay on the version they run until a rollout opens a wave" in out
    assert f"`otaml rollout start pump {v2} --channel production ...`" in out
    code, out, _ = run(capsys, *promote[:2], v3, *promote[2:], *trust, "--all-at-once", "--json")
    assert code == 0
    assert (json.loads(out)["image"]["approval"], json.loads(out)["image"]["staged"]) == ("approved", False)
    code, out, _ = run(capsys, "trust", "status", "--dir", str(site.site.path))
    assert code == 0
    listed = [
        line.split()[0] + (" staged" if "staged" in line else "") for line in out.splitlines() if "/pump/" in line
    ]
    assert listed == [f"production/pump/{v1}", f"production/pump/{v2} staged", f"production/pump/{v3}"]
