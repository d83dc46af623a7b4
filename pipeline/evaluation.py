"""Detection metrics on labelled scores: precision, recall and F1 at the threshold, ROC-AUC and PR-AUC.

PR-AUC is average precision (step-wise, no interpolation). The two AUCs need both classes; without
them they are left out rather than reported as a misleading 0 or 1.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from sklearn.metrics import average_precision_score, roc_auc_score

from edge_runtime.errors import InputError


def ranking_metrics(labels: npt.ArrayLike, scores: npt.ArrayLike) -> dict[str, float]:
    """ROC-AUC and PR-AUC, or an empty dict when the labels hold one class only."""
    y = np.asarray(labels).astype(np.int8)
    s = np.asarray(scores, dtype=np.float64)
    if not 0 < int(y.sum()) < y.size:
        return {}
    return {"roc_auc": float(roc_auc_score(y, s)), "pr_auc": float(average_precision_score(y, s))}


def detection_metrics(labels: npt.ArrayLike, scores: npt.ArrayLike, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 (score >= threshold is an alarm), alarm rate, counts, and the AUCs."""
    y = np.asarray(labels).astype(np.int8)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise InputError(f"labels {y.shape} and scores {s.shape} must have the same shape.")
    alarm = s >= threshold
    tp = int(np.sum(alarm & (y == 1)))
    fp = int(np.sum(alarm & (y == 0)))
    fn = int(np.sum(~alarm & (y == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    metrics = {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "alarm_rate": float(alarm.mean()) if alarm.size else 0.0,
        "n_rows": float(y.size),
        "n_anomalies": float(y.sum()),
    }
    metrics.update(ranking_metrics(y, s))
    return metrics


def alarm_rate(scores: npt.ArrayLike, threshold: float) -> float:
    s = np.asarray(scores, dtype=np.float64)
    return float((s >= threshold).mean()) if s.size else 0.0
