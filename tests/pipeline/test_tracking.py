from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.errors import NotFound
from pipeline.tracking import download_bundle, resolve_tracking_uri


def test_default_tracking_uri_is_sqlite_in_the_working_directory(tmp_path: Path) -> None:
    assert resolve_tracking_uri({}, cwd=tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert resolve_tracking_uri({"MLFLOW_TRACKING_URI": "http://mlflow:5000"}, cwd=tmp_path) == "http://mlflow:5000"
    assert resolve_tracking_uri({"MLFLOW_TRACKING_URI": "  "}, cwd=tmp_path).startswith("sqlite:///")


def test_download_of_an_unknown_version_is_not_found(tracking_uri: str, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="not registered"):
        download_bundle("no-such-model", "1", tmp_path / "b", tracking_uri=tracking_uri)
