"""Models for the benches, made the way a user makes them: ``otaml data synth`` then ``otaml train``, defaults.

    from pipeline_models import train_default_models
    models = train_default_models(workdir)          # every detector `--detector all` trains
    models.bundles["pca"], models.model_uris["pca"], models.tracking_uri

Runs the ``otaml`` command line of this interpreter's environment in a child process (the measuring process
never imports numpy, onnxruntime or scikit-learn, whose shared pages would otherwise be shared with the
servers it measures), with a private sqlite MLflow store under ``workdir``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class TrainedModels:
    """What one default training run produced: per detector, the bundle it ships and its MLflow model."""

    tracking_uri: str
    model_name: str
    chosen: str
    bundles: dict[str, Path]  # the variant `otaml train` ships (int8 where parity passed)
    fp32_bundles: dict[str, Path]
    model_uris: dict[str, str]  # the registered ONNX model (fp32), e.g. models:/bench/2
    report: dict[str, object]


def _otaml(*args: str, env: dict[str, str], cwd: Path) -> str:
    cmd = [sys.executable, "-m", "otaml", *args]
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def train_default_models(workdir: Path, model_name: str = "bench", seed: int = 0) -> TrainedModels:
    """Synthesise the default telemetry and train every default detector on it, into ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(REPO)}
    _otaml("data", "synth", "--out", "telemetry.csv", "--seed", str(seed), env=env, cwd=workdir)
    out = _otaml(
        "train", "--data", "telemetry.csv", "--model-name", model_name, "--out", "bundles", "--json",
        env=env, cwd=workdir,
    )  # fmt: skip
    report = json.loads(out)
    bundles, fp32, uris = {}, {}, {}
    for entry in report["detectors"]:
        name = entry["detector"]
        bundles[name] = workdir / entry["bundle_path"]
        fp32[name] = workdir / entry["bundle_paths"]["fp32"]
        uris[name] = entry["model_uri"]
    return TrainedModels(tracking_uri, model_name, report["chosen"], bundles, fp32, uris, report)
