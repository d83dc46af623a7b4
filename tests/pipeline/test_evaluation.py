from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from edge_runtime.errors import InputError
from pipeline.evaluation import detection_metrics, range_pr_auc, ranking_metrics, vus_pr


def test_metrics_at_threshold_by_hand() -> None:
    labels = [0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.7, 0.6, 0.8, 0.3]
    m = detection_metrics(labels, scores, threshold=0.5)
    # alarms: 0.7 (fp), 0.6 (tp), 0.8 (tp); missed: 0.3
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["alarm_rate"] == pytest.approx(0.5)
    assert m["roc_auc"] == pytest.approx(7 / 9)
    assert 0 < m["pr_auc"] <= 1
    assert m["n_anomalies"] == 3
    assert m["n_events"] == 1


def test_events_are_counted_as_runs_of_anomalous_rows() -> None:
    labels = [1, 1, 0, 0, 1, 0, 1, 1, 1, 0]
    m = detection_metrics(labels, np.linspace(0, 1, len(labels)), threshold=0.5)
    assert m["n_events"] == 3
    assert m["n_anomalies"] == 6


def test_perfect_ranking() -> None:
    m = ranking_metrics([0, 0, 1], [0.1, 0.2, 0.9])
    assert (m["roc_auc"], m["pr_auc"]) == (1.0, 1.0)
    assert m["vus_pr"] == pytest.approx(vus_pr([0, 0, 1], [0.1, 0.2, 0.9]))


def test_aucs_left_out_with_one_class() -> None:
    m = detection_metrics([0, 0, 0], [0.1, 0.9, 0.2], threshold=0.5)
    assert "roc_auc" not in m
    assert "pr_auc" not in m
    assert m["precision"] == 0.0
    assert m["recall"] == 0.0


def test_shape_mismatch_is_an_input_error() -> None:
    with pytest.raises(InputError, match="same shape"):
        detection_metrics([0, 1], [0.1], 0.5)


def _events(n: int = 2000) -> np.ndarray:
    y = np.zeros(n, dtype=int)
    for start in (300, 900, 1500):
        y[start : start + 40] = 1
    return y


def test_vus_pr_is_near_one_for_scores_that_mark_exactly_the_ranges() -> None:
    y = _events()
    assert range_pr_auc(y, y.astype(float), buffer=0) == pytest.approx(1.0)
    # With a buffer the ramps beside each range count as (partly) anomalous: exact marking loses a little.
    assert 0.9 < vus_pr(y, y.astype(float)) < 1.0


def test_random_scores_do_not_look_good() -> None:
    # Point-adjusted F1 would rate random scores highly (Kim et al., AAAI 2022); VUS-PR stays near the label rate.
    y = _events()
    rng = np.random.default_rng(0)
    values = [vus_pr(y, rng.uniform(size=y.size)) for _ in range(5)]
    assert max(values) < 2 * y.mean() + 0.05


def test_an_alarm_just_before_the_event_earns_range_credit_but_no_point_credit() -> None:
    y = _events()
    early = np.zeros(y.size)
    for start in (300, 900, 1500):
        early[start - 6 : start] = 1.0  # alarms in the six readings that precede each event
    assert average_precision_score(y, early) == pytest.approx(y.mean())  # points: no better than chance
    assert range_pr_auc(y, early, buffer=0) < 0.1
    assert range_pr_auc(y, early, buffer=32) > 0.3
    assert vus_pr(y, early, max_buffer=32) > 3 * average_precision_score(y, early)


def test_detecting_every_event_beats_detecting_one_event_at_equal_point_recall() -> None:
    y = _events()
    all_events = np.zeros(y.size)
    one_event = np.zeros(y.size)
    for start in (300, 900, 1500):
        all_events[start : start + 10] = 1.0  # 30 of 120 anomalous points, every event
    one_event[300:330] = 1.0  # the same 30 points' worth, one event only
    assert vus_pr(y, all_events) > vus_pr(y, one_event)


def test_vus_pr_needs_both_classes_and_matching_shapes() -> None:
    with pytest.raises(InputError, match="both"):
        vus_pr([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="same shape"):
        vus_pr([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="max_buffer"):
        vus_pr([0, 1], [0.1, 0.2], max_buffer=-1)
