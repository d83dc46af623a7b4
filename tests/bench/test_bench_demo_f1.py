"""bench/bench_demo_f1.py: where the demo's F1 is lost (recall by anomaly kind, the window's echo, the ranking)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.synth import ANOMALY_KINDS, NORMAL_KIND, synth_telemetry
from pipeline.telemetry import telemetry_from_frame
from pipeline.training import TrainConfig, prepare
from tests.bench import load_bench

SMALL = {"devices": 2, "days": 1.0}


bench = load_bench("bench_demo_f1")


def test_the_echo_is_the_normal_rows_after_an_event_within_its_stream() -> None:
    labels = np.array([0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0], dtype=np.int8)
    streams = np.array(["a"] * 9 + ["b"] * 4)
    echo = bench.after_events(labels, streams, 3)
    # a: rows 3-5 follow the first event (row 6 is 4 readings on), row 8 follows the event at 7; stream b's
    # first rows are not the echo of stream a's last event; row 11-12 follow b's event at 10.
    assert np.flatnonzero(echo).tolist() == [3, 4, 5, 8, 11, 12]
    assert not echo[labels == 1].any()
    assert not bench.after_events(labels, streams, 0).any()


def test_the_kind_of_every_test_row_lines_up_with_the_split() -> None:
    frame = synth_telemetry(**SMALL, seed=3)
    telemetry = telemetry_from_frame(frame)
    config = TrainConfig()
    splits, _ = prepare(telemetry, config, "pca")
    kinds = bench.kinds_of_test_rows(frame, telemetry, config)
    assert splits.test.labels is not None
    assert kinds.shape == (splits.test.n_rows,)
    assert np.array_equal(kinds != NORMAL_KIND, splits.test.labels == 1)
    # The last rows of the second stream are the frame's last rows.
    assert kinds[-1] == frame["anomaly_kind"].iloc[-1]


def test_one_seed_splits_the_test_anomalies_by_kind_and_the_false_alarms_by_echo() -> None:
    config = TrainConfig()
    row = bench.one_seed(SMALL, 3, ("pca",), config)
    frame = synth_telemetry(**SMALL, seed=3)
    splits, _ = prepare(telemetry_from_frame(frame), config, "pca")
    labels = splits.test.labels
    assert labels is not None
    by_kind = row["test_recall_by_kind"]
    assert set(by_kind) <= set(ANOMALY_KINDS)
    assert sum(rows for _, rows in by_kind.values()) == int(labels.sum())
    assert all(0 <= hit <= rows for hit, rows in by_kind.values())
    assert 0 <= row["false_alarms_in_echo"] <= row["false_alarms"]
    # No threshold rule beats the best threshold on the test split itself.
    assert row["test_best_f1"] >= row["test_f1"]

    summary = bench.summarize([row, row], 0.7)
    for kind, (hit, rows) in by_kind.items():
        assert summary["test_recall_by_kind"][kind] == {"recall": round(hit / rows, 3), "rows": 2 * rows}
    assert summary["false_alarms"] == 2 * row["false_alarms"]
    assert summary["median_best_f1_on_test"] == round(row["test_best_f1"], 3)


def test_first_seed_draws_the_seeds_after_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--seeds", "1", "--first-seed", "7", "--detector", "pca", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["first_seed"] == 7
    assert [r["seed"] for r in out["versions"]["v1"]["per_seed"]] == [7]
    with pytest.raises(SystemExit):
        bench.main(["--first-seed", "-1"])
