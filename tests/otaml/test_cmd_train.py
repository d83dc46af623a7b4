from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_runtime.bundle import load_bundle
from otaml.cli import main
from pipeline.synth import synth_telemetry, write_telemetry


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    return write_telemetry(synth_telemetry(devices=2, days=1, seed=4), tmp_path / "telemetry.csv")


def test_train_json_report_on_stdout_progress_on_stderr(
    data_file: Path, tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "train",
            "--data",
            str(data_file),
            "--detector",
            "pca",
            "--model-name",
            "cli-model",
            "--out",
            str(tmp_path / "out"),
            "--window",
            "8",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)  # nothing but JSON on stdout
    (d,) = report["detectors"]
    assert d["detector"] == "pca"
    assert d["chosen"]
    assert d["version"] == "1"
    assert report["model_name"] == "cli-model"
    assert report["tracking_uri"] == tracking_uri
    card = load_bundle(d["bundle_path"]).card
    assert card.features.window == 8
    assert card.name == "cli-model"
    assert "registered cli-model version 1" in captured.err


def test_train_table(data_file: Path, tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(data_file), "--detector", "iforest", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:6] == ["detector", "prec", "recall", "f1", "roc_auc", "pr_auc"]
    assert "iforest *" in out
    assert "chosen: iforest" in out
    assert "baseline IsolationForest on raw values" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "missing.csv"], "missing.csv"),
        (["--window", "0"], "--window"),
        (["--label-column", "nope"], "nope"),
    ],
)
def test_bad_input_exits_1_with_a_message(
    args: list[str], message: str, data_file: Path, tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    full = ["train", "--data", str(data_file), *args] if args[0] != "--data" else ["train", *args]
    assert main(full) == 1
    err = capsys.readouterr().err
    error = err.splitlines()[-1]
    assert error.startswith("otaml train: error:")
    assert message in error


def test_unknown_detector_is_a_usage_error(data_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", str(data_file), "--detector", "svm"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
