from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.errors import InputError
from pipeline.thresholds import BEST_F1, best_f1_threshold, calibrate, quantile_threshold


def test_best_f1_separates_separable_scores_halfway() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.9, 1.0])
    labels = np.array([0, 0, 0, 1, 1])
    t = best_f1_threshold(scores, labels)
    assert t.method == BEST_F1
    assert t.value == pytest.approx(0.6)  # halfway between 0.3 and 0.9
    assert ((scores >= t.value) == labels.astype(bool)).all()


def test_best_f1_prefers_the_f1_optimum_over_full_recall() -> None:
    # Anomalies at 0.8, 0.9 and one buried at 0.15 among normals: flagging >= 0.8 gives F1 0.8,
    # flagging everything down to 0.15 gives more false alarms.
    scores = np.array([0.1, 0.12, 0.15, 0.2, 0.3, 0.4, 0.8, 0.9])
    labels = np.array([0, 0, 1, 0, 0, 0, 1, 1])
    t = best_f1_threshold(scores, labels)
    assert 0.4 < t.value < 0.8


def test_quantile_threshold_and_method_string() -> None:
    scores = np.arange(1000, dtype=float)
    t = quantile_threshold(scores, 0.99)
    assert t.method == "quantile-0.99-of-train"
    assert t.value == pytest.approx(np.quantile(scores, 0.99))


def test_calibrate_falls_back_to_quantile_without_both_classes() -> None:
    train = np.linspace(0, 1, 101)
    assert calibrate(train, [0.5, 0.6], None).method.startswith("quantile")
    assert calibrate(train, [0.5, 0.6], [0, 0]).method.startswith("quantile")
    assert calibrate(train, [0.5, 0.6], [0, 1]).method == BEST_F1


@pytest.mark.parametrize("q", [0.0, 1.0, 1.5])
def test_bad_quantile_is_rejected(q: float) -> None:
    with pytest.raises(InputError, match="quantile"):
        quantile_threshold([1.0, 2.0], q)


def test_best_f1_needs_both_classes() -> None:
    with pytest.raises(InputError, match="both"):
        best_f1_threshold([0.1, 0.2], [0, 0])
