from __future__ import annotations

import pytest

from edge_runtime.errors import InputError
from pipeline.evaluation import detection_metrics, ranking_metrics


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


def test_perfect_ranking() -> None:
    assert ranking_metrics([0, 0, 1], [0.1, 0.2, 0.9]) == {"roc_auc": 1.0, "pr_auc": 1.0}


def test_aucs_left_out_with_one_class() -> None:
    m = detection_metrics([0, 0, 0], [0.1, 0.9, 0.2], threshold=0.5)
    assert "roc_auc" not in m
    assert "pr_auc" not in m
    assert m["precision"] == 0.0
    assert m["recall"] == 0.0


def test_shape_mismatch_is_an_input_error() -> None:
    with pytest.raises(InputError, match="same shape"):
        detection_metrics([0, 1], [0.1], 0.5)
