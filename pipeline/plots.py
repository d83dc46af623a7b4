"""Evaluation plots as PNG files: score over time, score histogram, precision-recall curve.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot), so nothing depends on a display
or on global pyplot state, and concurrent training runs in one process do not share figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def score_timeline(
    path: Path,
    timestamps: npt.ArrayLike,
    scores: npt.ArrayLike,
    threshold: float,
    labels: npt.ArrayLike | None = None,
    title: str = "",
) -> Path:
    """Scores of one stream over time, the threshold, and labelled anomalies (red) when known."""
    t = np.asarray(timestamps)
    s = np.asarray(scores, dtype=np.float64)
    fig = Figure(figsize=(10, 3.5))
    ax = fig.add_subplot()
    ax.plot(t, s, lw=0.7, color="tab:blue", label="score")
    ax.axhline(threshold, color="tab:orange", ls="--", lw=1, label=f"threshold {threshold:.4g}")
    if labels is not None:
        y = np.asarray(labels).astype(bool)
        if y.any():
            ax.scatter(t[y], s[y], s=6, color="tab:red", label="labelled anomaly", zorder=3)
    ax.set_xlabel("time")
    ax.set_ylabel("anomaly score")
    ax.set_title(title or "score over time")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def score_histogram(
    path: Path, scores: npt.ArrayLike, threshold: float, labels: npt.ArrayLike | None = None, title: str = ""
) -> Path:
    """Histogram of scores (split by label when known) with the threshold."""
    s = np.asarray(scores, dtype=np.float64)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    bins = [float(b) for b in np.histogram_bin_edges(s, bins=60)]
    if labels is not None and np.asarray(labels).any():
        y = np.asarray(labels).astype(bool)
        ax.hist(s[~y], bins=bins, alpha=0.6, label="normal", log=True)
        ax.hist(s[y], bins=bins, alpha=0.6, label="anomaly", color="tab:red", log=True)
    else:
        ax.hist(s, bins=bins, alpha=0.8, label="all", log=True)
    ax.axvline(threshold, color="tab:orange", ls="--", label="threshold")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("rows (log)")
    ax.set_title(title or "score histogram")
    ax.legend(loc="upper right", fontsize=8)  # "best" is slow and warns on large series
    return _save(fig, path)


def pr_curve(path: Path, labels: npt.ArrayLike, scores: npt.ArrayLike, title: str = "") -> Path:
    """Precision-recall curve (needs both classes in ``labels``)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    precision, recall, _ = precision_recall_curve(np.asarray(labels), np.asarray(scores, dtype=np.float64))
    ap = average_precision_score(np.asarray(labels), np.asarray(scores, dtype=np.float64))
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.step(recall, precision, where="post", label=f"AP {ap:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "precision-recall")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)
