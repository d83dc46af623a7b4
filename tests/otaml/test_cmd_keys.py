from __future__ import annotations

from pathlib import Path

import pytest

from otaml.cli import main


def test_keys_generate_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    assert main(["keys", "generate", "--out", str(tmp_path)]) == 0
    private = [p for p in tmp_path.iterdir() if p.suffix == ".key"]
    assert len(private) == 1
    assert private[0].stat().st_mode & 0o777 == 0o600


def test_verify_with_a_running_version_needs_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["verify", "127.0.0.1:1/r:production", "--key", str(tmp_path / "k.pub"), "--running-version", "3"])
    assert code == 1
    assert "--running-version needs --model NAME" in capsys.readouterr().err
