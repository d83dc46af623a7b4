"""The reference to beat: a plain IsolationForest on the raw sensor values (no windowed features, no scaling).

It trains on the same training rows as the detectors and is scored on the same test rows, so its
ROC-AUC / PR-AUC are directly comparable with the chosen detector's.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import IsolationForest

from pipeline.evaluation import ranking_metrics
from pipeline.splits import Split


def raw_iforest_scores(train_raw: npt.ArrayLike, test_raw: npt.ArrayLike, *, seed: int = 0) -> npt.NDArray[np.float64]:
    """Anomaly scores (higher = more anomalous) of an IsolationForest fitted on raw readings."""
    forest = IsolationForest(random_state=seed).fit(np.asarray(train_raw, dtype=np.float64))
    return np.asarray(-forest.score_samples(np.asarray(test_raw, dtype=np.float64)), dtype=np.float64)


def raw_iforest_metrics(train: Split, test: Split, *, seed: int = 0) -> dict[str, float]:
    """The baseline's ``roc_auc`` and ``pr_auc`` on the test split (empty without labels of both classes)."""
    if test.labels is None:
        return {}
    return ranking_metrics(test.labels, raw_iforest_scores(train.raw, test.raw, seed=seed))
