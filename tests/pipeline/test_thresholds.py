from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.errors import InputError
from pipeline.thresholds import (
    BEST_F1,
    BEST_F1_CAPPED,
    BEST_F1_POOLED,
    BEST_F1_POOLED_CAPPED,
    MAX_UNLABELLED_ALARM_RATE,
    alarm_limit,
    best_f1_threshold,
    calibrate,
    quantile_threshold,
)


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


def test_flag_everything_best_f1_is_refused_for_the_best_f1_within_the_alarm_cap() -> None:
    # Scores that rank anomalies badly: 27 of the 30 anomalies sit at the bottom, so best F1 flags everything.
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.uniform(0.0, 0.1, 27), rng.uniform(0.1, 1.0, 70), [2.0, 2.1, 2.2]])
    labels = np.r_[np.ones(27), np.zeros(70), np.ones(3)].astype(int)
    plain = best_f1_threshold(scores, labels)
    assert plain is not None
    assert (scores >= plain.value).mean() == 1.0  # the degenerate optimum
    t = calibrate(np.empty(0), scores, labels)
    assert t.method == BEST_F1_CAPPED
    assert (scores >= t.value).mean() <= alarm_limit(0.3) < 1.0
    assert "flags 100.0% of validation readings against a label rate of 30.0%" in t.note


def test_a_sane_best_f1_threshold_is_kept_without_a_note() -> None:
    scores = np.r_[np.linspace(0, 1, 90), np.linspace(2, 3, 10)]
    labels = np.r_[np.zeros(90), np.ones(10)].astype(int)
    t = calibrate(np.empty(0), scores, labels)
    assert t.method == BEST_F1
    assert t.note == ""


def test_without_labels_a_threshold_flagging_most_of_validation_falls_back_to_its_quantile() -> None:
    train = np.linspace(0, 1, 1000)
    validation = np.linspace(5, 6, 200)  # everything scores above the training distribution
    t = calibrate(train, validation, None, quantile=0.99)
    assert t.method == "quantile-0.99-of-validation"
    assert (validation >= t.value).mean() <= 0.02
    assert "flags 100.0% of validation readings" in t.note
    sane = calibrate(train, np.linspace(0, 1, 200), None, quantile=0.99)
    assert sane.method == "quantile-0.99-of-train"
    assert sane.note == ""


def test_best_f1_within_a_cap_catching_nothing_is_none() -> None:
    scores = np.array([0.1, 0.2, 0.9, 1.0])
    labels = np.array([1, 0, 0, 0])
    assert best_f1_threshold(scores, labels, max_alarm_rate=0.5) is None


def test_best_f1_pools_the_labelled_training_rows_when_they_hold_anomalies() -> None:
    # Validation holds one strong event (0.9); the training split a weaker one (0.5) that validation alone
    # would not see: pooled, the threshold comes down to catch that kind too.
    train = np.array([0.1, 0.2, 0.15, 0.5, 0.5, 0.25, 0.1])
    train_labels = np.array([0, 0, 0, 1, 1, 0, 0])
    validation = np.array([0.1, 0.3, 0.2, 0.9, 0.9, 0.2, 0.1, 0.15])
    validation_labels = np.array([0, 0, 0, 1, 1, 0, 0, 0])
    alone = calibrate(train, validation, validation_labels)
    pooled = calibrate(train, validation, validation_labels, train_labels=train_labels)
    assert alone.method == BEST_F1
    assert alone.value > 0.5
    assert pooled.method == BEST_F1_POOLED
    assert 0.3 < pooled.value < 0.5
    # Training labels without an anomaly add no event: validation alone decides.
    assert calibrate(train, validation, validation_labels, train_labels=np.zeros(7)).method == BEST_F1


def test_pooled_best_f1_keeps_the_validation_alarm_cap() -> None:
    rng = np.random.default_rng(0)
    validation = rng.random(1000)
    validation_labels = np.zeros(1000, dtype=int)
    validation_labels[np.argsort(validation)[-10:]] = 1  # 1 % label rate, the top scores
    train = rng.random(1000)
    train_labels = (rng.random(1000) < 0.5).astype(int)  # labels unrelated to scores: best F1 flags everything
    t = calibrate(train, validation, validation_labels, train_labels=train_labels)
    assert t.method == BEST_F1_POOLED_CAPPED
    assert (validation >= t.value).mean() <= alarm_limit(0.01)
    assert "flags" in t.note


def test_train_labels_must_match_train_scores() -> None:
    with pytest.raises(InputError, match="one label per training score"):
        calibrate([0.1, 0.2], [0.1, 0.9], [0, 1], train_labels=[0, 1, 0])


def test_training_events_set_the_threshold_when_validation_holds_none() -> None:
    # Every labelled event fell into the training split (scores 0.6-0.7); validation is all normal. The
    # training quantile would sit above the events; best F1 on the pooled rows catches them.
    rng = np.random.default_rng(1)
    train = rng.random(200) * 0.5
    train_labels = np.zeros(200, dtype=int)
    train_labels[50:56] = 1
    train[50:56] = np.linspace(0.6, 0.7, 6)
    validation = rng.random(100) * 0.5
    t = calibrate(train, validation, np.zeros(100, dtype=int), train_labels=train_labels)
    assert t.method == BEST_F1_POOLED
    assert 0.5 < t.value <= 0.6
    assert (train[50:56] >= t.value).all()
    assert not t.note
    # Without training events, or without training labels, the quantile rule stays.
    assert calibrate(train, validation, np.zeros(100), train_labels=np.zeros(200)).method.startswith("quantile")
    assert calibrate(train, validation, np.zeros(100)).method.startswith("quantile")


def test_training_events_threshold_keeps_the_unlabelled_alarm_cap() -> None:
    # Training labels unrelated to the scores: best F1 would flag everything; the validation alarm rate
    # must stay within the cap the gates apply to a validation split without anomalies.
    rng = np.random.default_rng(2)
    train = rng.random(1000)
    train_labels = (rng.random(1000) < 0.3).astype(int)
    validation = rng.random(500)
    t = calibrate(train, validation, np.zeros(500, dtype=int), train_labels=train_labels)
    assert t.method == BEST_F1_POOLED
    assert (validation >= t.value).mean() <= MAX_UNLABELLED_ALARM_RATE
