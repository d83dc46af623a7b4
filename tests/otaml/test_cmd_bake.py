from __future__ import annotations

import io
from pathlib import Path

import pytest

from edge_runtime.bundle import Bundle
from otaml.cli import main
from registry.oci.layout import Layout
from tests.registry.oci.fakes import write_fake_base


def test_bake_command_prints_progress_and_summary(
    model_bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_fake_base(tmp_path / "base")
    argv = ["bake", "--base", f"oci:{tmp_path / 'base'}:base", "--bundle", str(model_bundle.path)]
    assert main([*argv, "--to", f"oci:{tmp_path / 'out'}"]) == 0
    out, err = capsys.readouterr()
    assert "bake: linux/arm64: model layer" in err
    assert "tags      model-v1" in out
    assert "linux/amd64" in out
    assert Layout(tmp_path / "out").tags() == ["model-v1"]


def test_bake_command_refuses_to_move_a_model_tag(
    model_bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_fake_base(tmp_path / "base")
    (tmp_path / "out").mkdir()
    write_fake_base(tmp_path / "out", tag="model-v1")  # model-v1 already names another image
    argv = ["bake", "--base", f"oci:{tmp_path / 'base'}:base", "--bundle", str(model_bundle.path)]
    assert main([*argv, "--to", f"oci:{tmp_path / 'out'}"]) == 1
    assert "immutable" in capsys.readouterr().err
    assert main([*argv, "--to", f"oci:{tmp_path / 'out'}", "--force"]) == 0


def test_password_comes_from_stdin_only(
    model_bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bake", "--base", "oci:x:base", "--bundle", str(model_bundle.path), "--to", "oci:y", "--user", "u"]
    assert main(argv) == 1
    assert "--password-stdin" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main([*argv, "--password-stdin"]) == 1
    assert "empty password" in capsys.readouterr().err
