"""Ranking metrics: the protocol's mAP and the audit's detection metrics, in NumPy."""

from __future__ import annotations

import numpy as np


def _tie_aware_counts(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct score, highest first."""
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_targets = scores[order], targets[order]
    # The last index of each run of equal scores: tied items enter the ranking together.
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    true_positives = np.cumsum(sorted_targets)[last_of_tie]
    false_positives = (last_of_tie + 1) - true_positives
    return true_positives, false_positives


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Average precision as scikit-learn's ``average_precision_score`` defines it (ties grouped,
    sum of precision times recall increments), in [0, 1]; 0 when there is no positive."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = (np.asarray(targets).ravel() > 0).astype(np.float64)
    total_positives = targets.sum()
    if total_positives == 0:
        return 0.0
    true_positives, false_positives = _tie_aware_counts(scores, targets)
    precision = true_positives / (true_positives + false_positives)
    recall_increments = np.diff(np.r_[0.0, true_positives / total_positives])
    return float(np.sum(recall_increments * precision))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """The protocol's mAP in percent: per-class average precision of (N, C) scores against (N, C)
    {0, 1} targets, a class without any positive counting as 0, averaged over all classes."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (N, C)")
    per_class = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    return 100.0 * float(np.mean(per_class))


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN when only one class is present."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).ravel() > 0
    positives, negatives = int(targets.sum()), int((~targets).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    # Mann-Whitney U with average ranks for ties.
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], scores.size]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    u_statistic = ranks[targets].sum() - positives * (positives + 1) / 2.0
    return float(u_statistic / (positives * negatives))


def precision_recall_at_k(scores: np.ndarray, targets: np.ndarray, k: int) -> tuple[float, float]:
    """Precision and recall of the k highest scores (stable order for ties)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).ravel() > 0
    k = min(k, scores.size)
    if k <= 0:
        return 0.0, 0.0
    top = np.argsort(-scores, kind="mergesort")[:k]
    hits = int(targets[top].sum())
    total = int(targets.sum())
    return hits / k, (hits / total if total else 0.0)
