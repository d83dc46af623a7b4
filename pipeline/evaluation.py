"""Detection metrics on labelled scores: precision, recall and F1 at the threshold, ROC-AUC, PR-AUC, VUS-PR.

PR-AUC is average precision (step-wise, no interpolation). The AUCs need both classes; without
them they are left out rather than reported as a misleading 0 or 1.

VUS-PR (Paparrizos et al., "Volume Under the Surface", VLDB 2022; the measure TSB-AD ranks by) is the
range-aware one: anomalies are events, and an alarm just before or after a labelled range is worth
something. For a buffer ``l``, each labelled range is extended by ``l // 2`` readings on both sides with
a soft label ``sqrt(1 - d / l)`` at distance ``d``; range recall is ``min(TP / P, 1)`` times the share
of (extended) ranges with at least one alarm, range precision is ``TP / alarms`` (TP counted with the
soft labels, P the mean of the hard and soft label sums), at 250 thresholds spread over the sorted
scores. The area under that PR curve, averaged over ``l = 0 .. max_buffer``, is VUS-PR. Streams are
concatenated in stream order. Point-adjusted F1 is never reported: it makes random scores look best
(Kim et al., AAAI 2022).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from sklearn.metrics import average_precision_score, roc_auc_score

from edge_runtime.errors import InputError

DEFAULT_MAX_BUFFER = 32  # twice the default feature window, as TSB-AD sizes it from the sliding window
N_THRESHOLDS = 250


def ranking_metrics(labels: npt.ArrayLike, scores: npt.ArrayLike) -> dict[str, float]:
    """ROC-AUC, PR-AUC and VUS-PR, or an empty dict when the labels hold one class only."""
    y = np.asarray(labels).astype(np.int8)
    s = np.asarray(scores, dtype=np.float64)
    if not 0 < int(y.sum()) < y.size:
        return {}
    return {
        "roc_auc": float(roc_auc_score(y, s)),
        "pr_auc": float(average_precision_score(y, s)),
        "vus_pr": vus_pr(y, s),
    }


def _ranges(mask: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Starts and (exclusive) ends of the runs of True in ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _soft_labels(y: npt.NDArray[np.float64], buffer: int) -> npt.NDArray[np.float64]:
    """Hard labels plus ``sqrt(1 - d / buffer)`` ramps of ``buffer // 2`` readings on both sides of each range."""
    soft = y.copy()
    if buffer <= 1:
        return soft
    n = y.size
    starts, ends = _ranges(y > 0)
    d = np.arange(1, buffer // 2 + 1)
    ramp = np.sqrt(1.0 - d / buffer)
    for start, end in zip(starts, ends, strict=True):
        before, after = start - d, end - 1 + d
        keep_b, keep_a = before >= 0, after < n
        soft[before[keep_b]] = np.maximum(soft[before[keep_b]], ramp[keep_b])
        soft[after[keep_a]] = np.maximum(soft[after[keep_a]], ramp[keep_a])
    return soft


class _Ranked:
    """Scores sorted once, shared by every buffer size."""

    def __init__(self, scores: npt.NDArray[np.float64]) -> None:
        self.scores = scores
        self.order = np.argsort(-scores, kind="stable")
        ascending = np.sort(scores)
        n = scores.size
        self.thresholds = ascending[::-1][np.linspace(0, n - 1, min(N_THRESHOLDS, n)).astype(np.intp)]
        self.flagged = n - np.searchsorted(ascending, self.thresholds, side="left")  # rows with score >= t


def _range_pr_auc(y: npt.NDArray[np.float64], ranked: _Ranked, buffer: int) -> float:
    soft = _soft_labels(y, buffer)
    positives = (y.sum() + soft.sum()) / 2
    starts, ends = _ranges(soft > 0)
    range_max = np.array([ranked.scores[a:b].max() for a, b in zip(starts, ends, strict=True)])
    tp = np.cumsum(soft[ranked.order])[ranked.flagged - 1]
    existence = (range_max[None, :] >= ranked.thresholds[:, None]).mean(axis=1)
    recall = np.concatenate([[0.0], np.minimum(tp / positives, 1.0) * existence])
    precision = np.concatenate([[1.0], tp / ranked.flagged])
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2))


def _checked(labels: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], _Ranked]:
    y = (np.asarray(labels) > 0).astype(np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise InputError(f"labels {y.shape} and scores {s.shape} must be 1-D and of the same shape.")
    if not 0 < int(y.sum()) < y.size:
        raise InputError("range-aware measures need both normal and anomalous labels.")
    return y, _Ranked(s)


def range_pr_auc(labels: npt.ArrayLike, scores: npt.ArrayLike, buffer: int) -> float:
    """Area under the range-based PR curve for one buffer size (see the module docstring)."""
    y, ranked = _checked(labels, scores)
    return _range_pr_auc(y, ranked, buffer)


def vus_pr(labels: npt.ArrayLike, scores: npt.ArrayLike, max_buffer: int = DEFAULT_MAX_BUFFER) -> float:
    """VUS-PR: :func:`range_pr_auc` averaged over buffers ``0 .. max_buffer`` (see the module docstring)."""
    if max_buffer < 0:
        raise InputError(f"VUS-PR max_buffer must be >= 0, got {max_buffer}.")
    y, ranked = _checked(labels, scores)
    return float(np.mean([_range_pr_auc(y, ranked, buffer) for buffer in range(max_buffer + 1)]))


def detection_metrics(labels: npt.ArrayLike, scores: npt.ArrayLike, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 (score >= threshold is an alarm), alarm rate, counts (rows, anomalous rows, events),
    and the AUCs."""
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
        # Labelled events (runs of anomalous rows, streams concatenated): what an F1 rests on.
        "n_events": float(_ranges(y > 0)[0].size),
    }
    metrics.update(ranking_metrics(y, s))
    return metrics


def alarm_rate(scores: npt.ArrayLike, threshold: float) -> float:
    s = np.asarray(scores, dtype=np.float64)
    return float((s >= threshold).mean()) if s.size else 0.0
