from __future__ import annotations

import json
from pathlib import Path

import pytest

from otaml.cli import main
from pipeline.synth import ANOMALY_KINDS


def test_synth_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "data" / "t.parquet"
    args = ["data", "synth", "--out", str(out), "--devices", "2", "--days", "1", "--seed", "3", "--interval-s", "120"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote 1440 rows to {out}" in printed
    for kind in ANOMALY_KINDS:
        assert kind in printed
    assert out.exists()

    assert main(["data", "check", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1440 rows, 2 streams, 4 sensors" in printed
    assert "dev-01 (720)" in printed
    assert "time range:  2026-01-05T00:00:00Z .. 2026-01-05T23:58:00Z" in printed
    assert "imputed" in printed


def test_check_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.csv"
    path.write_text("when;value;anomaly\n1767225600;1.5;0\n1767225660;2.5;1\n")
    assert main(["data", "check", str(path), "--timestamp-column", "when", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 2
    assert summary["streams"] == {"default": 2}
    assert summary["sensors"] == ["value"]
    assert summary["label_rate"] == 0.5
    assert summary["start"] == "2026-01-01T00:00:00Z"
    assert summary["fingerprint"].startswith("sha256:")


def test_check_bad_file_fails_with_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.csv"
    path.write_text("when,value\n1767225600,1.5\n")
    assert main(["data", "check", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "otaml data: error:" in captured.err
    assert "no timestamp column" in captured.err
    assert "--timestamp-column" in captured.err


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", str(tmp_path / "nope.csv")]) == 1
    assert "file not found" in capsys.readouterr().err


def test_synth_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synth", "--out", str(tmp_path / "t.csv"), "--devices", "0"]) == 1
    assert "devices must be an integer >= 1" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path / "t.json")]) == 1
    assert "unknown file extension '.json'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
