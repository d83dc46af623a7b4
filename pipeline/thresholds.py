"""Threshold calibration: a reading is anomalous when its score is at or above the threshold.

* With labels (and both classes in the validation split): the threshold that maximises F1 on the
  validation split, ``"best-f1-on-validation"``; when the training split holds labelled anomalies too,
  on the training and validation splits together, ``"best-f1-on-train-and-validation"``. Every labelled
  event before the test split then counts: a validation split holds a few events, and a threshold fitted
  to those few types missed the others on test (``pca`` on synthetic telemetry, mean test F1 validation
  only -> pooled: 0.37 -> 0.43 over ten 2-pump 2-day sets, 0.56 -> 0.61 over ten 1-2 pump week-long sets,
  0.51 -> 0.47 over three 4-pump week-long sets). The training split's normal rows are the ones the detector was fitted
  on, so their scores are in-sample (a little low); its anomalies were never fitted.
* When the validation split holds no labelled anomaly but the training split does: best F1 on the two
  together (``"best-f1-on-train-and-validation"``), its validation alarm rate capped as below. A short
  series can leave every event outside the validation split, and the training quantile then ignored the
  events it had (``pca`` on a 2-pump 3-day synthetic set, seed 9: test F1 0.05, with this rule 0.38).
* Otherwise: the ``q`` quantile of the training scores, ``"quantile-<q>-of-train"`` (a contamination
  budget: about ``1 - q`` of normal readings raise an alarm).

Degenerate thresholds are refused. Best F1 can be reached by flagging (nearly) everything when the
scores rank anomalies badly; a threshold whose validation alarm rate is above
``MAX_ALARM_TO_LABEL_RATIO`` times the validation label rate falls back to the best F1 among the
thresholds that stay within that rate on validation (the method gains ``"-within-alarm-cap"``). Without labels,
a training quantile that flags more than ``MAX_UNLABELLED_ALARM_RATE`` of the validation rows falls back
to the same quantile of the validation scores (``"quantile-<q>-of-validation"``). Either fallback says
why in :attr:`Threshold.note`. The promotion gates check the same limits (``registry/gates.toml``).

The best-F1 threshold is placed halfway between the lowest score it flags and the next lower score, so
``>=`` and ``>`` decide alike and a float32 rounding of a score cannot flip a decision at the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sklearn.metrics import precision_recall_curve

from edge_runtime.errors import InputError

DEFAULT_QUANTILE = 0.99
BEST_F1 = "best-f1-on-validation"
BEST_F1_CAPPED = "best-f1-on-validation-within-alarm-cap"
BEST_F1_POOLED = "best-f1-on-train-and-validation"
BEST_F1_POOLED_CAPPED = "best-f1-on-train-and-validation-within-alarm-cap"
# "Far above the label rate": more alarms than three times the share of labelled anomalies.
MAX_ALARM_TO_LABEL_RATIO = 3.0
# "A sane cap" without labels: an alarm on more than one reading in ten is not an anomaly detector.
MAX_UNLABELLED_ALARM_RATE = 0.1


@dataclass(frozen=True)
class Threshold:
    value: float
    method: str
    note: str = ""  # set when a degenerate threshold was refused: what happened and what was used instead


def quantile_method(q: float) -> str:
    return f"quantile-{q:g}-of-train"


def quantile_threshold(train_scores: npt.ArrayLike, q: float = DEFAULT_QUANTILE) -> Threshold:
    """The ``q`` quantile of the training scores."""
    if not 0.0 < q < 1.0:
        raise InputError(f"threshold quantile must be in (0, 1), got {q!r}; e.g. 0.99 flags about 1 % of normal rows.")
    scores = np.asarray(train_scores, dtype=np.float64)
    if scores.size == 0:
        raise InputError("cannot calibrate a threshold from zero training scores.")
    return Threshold(value=float(np.quantile(scores, q)), method=quantile_method(q))


def alarm_limit(label_rate: float) -> float:
    """The highest validation alarm rate that is not degenerate for a validation label rate."""
    return min(1.0, MAX_ALARM_TO_LABEL_RATIO * label_rate)


def best_f1_threshold(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    max_alarm_rate: float = 1.0,
    rate_scores: npt.ArrayLike | None = None,
) -> Threshold | None:
    """The threshold with the best F1 on labelled scores (both classes must be present).

    Only thresholds that flag at most ``max_alarm_rate`` of ``rate_scores`` (default: of ``scores``) are
    considered; ``None`` when no such threshold catches any anomaly.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(np.int8)
    if not 0 < int(y.sum()) < y.size:
        raise InputError("best-F1 calibration needs both normal and anomalous labels in the validation split.")
    precision, recall, cuts = precision_recall_curve(y, s)
    # The last point (precision 1, recall 0) has no threshold.
    p, r = precision[:-1], recall[:-1]
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    ordered = np.sort(s if rate_scores is None else np.asarray(rate_scores, dtype=np.float64))
    # Share of the rate rows with score >= cut.
    rates = (ordered.size - np.searchsorted(ordered, cuts, side="left")) / max(ordered.size, 1)
    f1[rates > max_alarm_rate] = 0.0
    if not f1.max() > 0:
        return None
    best = float(cuts[int(np.argmax(f1))])
    below = s[s < best]
    value = (best + float(below.max())) / 2 if below.size else best
    return Threshold(value=value, method=BEST_F1)


def calibrate(
    train_scores: npt.ArrayLike,
    validation_scores: npt.ArrayLike,
    validation_labels: npt.ArrayLike | None,
    *,
    quantile: float = DEFAULT_QUANTILE,
    train_labels: npt.ArrayLike | None = None,
) -> Threshold:
    """Best F1 when the validation labels hold both classes, else the training-score quantile.

    Best F1 is taken on the training and validation scores together when ``train_labels`` (one per
    training score) hold labelled anomalies, else on validation alone. Degenerate thresholds fall back as
    the module docstring says, with a :attr:`Threshold.note`.
    """
    val = np.asarray(validation_scores, dtype=np.float64)
    if validation_labels is not None and train_labels is not None and not np.any(validation_labels):
        from_train = _best_f1_on_train_events(train_scores, train_labels, val)
        if from_train is not None:
            return from_train
    if validation_labels is not None:
        y = np.asarray(validation_labels)
        if 0 < int(y.sum()) < y.size:
            scores, labels, method, capped_method = val, y, BEST_F1, BEST_F1_CAPPED
            if train_labels is not None:
                train = np.asarray(train_scores, dtype=np.float64)
                train_y = np.asarray(train_labels)
                if train_y.shape != train.shape:
                    raise InputError(
                        f"train_labels has shape {train_y.shape} but train_scores {train.shape}; pass one label per "
                        "training score."
                    )
                if int(train_y.sum()) > 0:
                    scores, labels = np.concatenate([train, val]), np.concatenate([train_y, y])
                    method, capped_method = BEST_F1_POOLED, BEST_F1_POOLED_CAPPED
            best = best_f1_threshold(scores, labels)
            if best is None:  # unreachable with both classes: flagging everything has F1 > 0
                raise InputError("no best-F1 threshold on validation; check the labels.")
            label_rate = float(y.mean())
            limit = alarm_limit(label_rate)
            rate = _rate(val, best.value)
            if rate <= limit:
                return Threshold(best.value, method)
            refused = (
                f"best F1 ({method}) flags {rate:.1%} of validation readings against a label rate of "
                f"{label_rate:.1%} (more than {MAX_ALARM_TO_LABEL_RATIO:g}x: degenerate, the scores rank "
                "anomalies badly)"
            )
            capped = best_f1_threshold(scores, labels, max_alarm_rate=limit, rate_scores=val)
            if capped is not None:
                return Threshold(
                    capped.value,
                    capped_method,
                    f"{refused}; using the best F1 among thresholds flagging at most {limit:.1%} of validation "
                    f"(flags {_rate(val, capped.value):.1%})",
                )
            fallback = quantile_threshold(train_scores, quantile) if np.size(train_scores) else None
            if fallback is None:
                fallback = _validation_quantile(val, quantile)
            return Threshold(
                fallback.value,
                fallback.method,
                f"{refused}; no threshold within the cap catches an anomaly, using {fallback.method}",
            )
    threshold = quantile_threshold(train_scores, quantile)
    rate = _rate(val, threshold.value)
    if val.size and rate > MAX_UNLABELLED_ALARM_RATE:
        fallback = _validation_quantile(val, quantile)
        return Threshold(
            fallback.value,
            fallback.method,
            f"the {threshold.method} threshold flags {rate:.1%} of validation readings (above the "
            f"{MAX_UNLABELLED_ALARM_RATE:.0%} cap without labels: degenerate); using {fallback.method}",
        )
    return threshold


def _best_f1_on_train_events(
    train_scores: npt.ArrayLike, train_labels: npt.ArrayLike, val: npt.NDArray[np.float64]
) -> Threshold | None:
    """Best F1 on the training and validation rows when only the training split holds labelled anomalies.

    The validation alarm rate stays within :func:`alarm_limit` of the pooled label rate and within
    :data:`MAX_UNLABELLED_ALARM_RATE` (what the gates allow a validation split without anomalies); ``None``
    when the training labels hold no anomaly or no threshold within that cap catches one.
    """
    train = np.asarray(train_scores, dtype=np.float64)
    train_y = np.asarray(train_labels)
    if train_y.shape != train.shape:
        raise InputError(
            f"train_labels has shape {train_y.shape} but train_scores {train.shape}; pass one label per training score."
        )
    if not int(train_y.sum()) > 0:
        return None
    scores = np.concatenate([train, val])
    labels = np.concatenate([train_y, np.zeros(val.size, dtype=train_y.dtype)])
    limit = min(alarm_limit(float(labels.mean())), MAX_UNLABELLED_ALARM_RATE)
    best = best_f1_threshold(scores, labels, max_alarm_rate=limit, rate_scores=val if val.size else None)
    return None if best is None else Threshold(best.value, BEST_F1_POOLED)


def _rate(scores: npt.NDArray[np.float64], value: float) -> float:
    return float((scores >= value).mean()) if scores.size else 0.0


def _validation_quantile(scores: npt.NDArray[np.float64], q: float) -> Threshold:
    return Threshold(value=float(np.quantile(scores, q)), method=f"quantile-{q:g}-of-validation")
