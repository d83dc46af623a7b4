"""Threshold calibration: a reading is anomalous when its score is at or above the threshold.

* With labels (and both classes in the validation split): the threshold that maximises F1 on the
  validation split, ``"best-f1-on-validation"``.
* Otherwise: the ``q`` quantile of the training scores, ``"quantile-<q>-of-train"`` (a contamination
  budget: about ``1 - q`` of normal readings raise an alarm).

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


@dataclass(frozen=True)
class Threshold:
    value: float
    method: str


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


def best_f1_threshold(scores: npt.ArrayLike, labels: npt.ArrayLike) -> Threshold:
    """The threshold with the best F1 on labelled scores (both classes must be present)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(np.int8)
    if not 0 < int(y.sum()) < y.size:
        raise InputError("best-F1 calibration needs both normal and anomalous labels in the validation split.")
    precision, recall, cuts = precision_recall_curve(y, s)
    # The last point (precision 1, recall 0) has no threshold.
    p, r = precision[:-1], recall[:-1]
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
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
) -> Threshold:
    """Best F1 on validation when its labels hold both classes, else the training-score quantile."""
    if validation_labels is not None:
        y = np.asarray(validation_labels)
        if 0 < int(y.sum()) < y.size:
            return best_f1_threshold(validation_scores, y)
    return quantile_threshold(train_scores, quantile)
