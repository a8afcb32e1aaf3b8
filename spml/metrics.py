"""Ranking metrics: the protocol's mAP and the audit's detection metrics, in NumPy."""

from __future__ import annotations

import math

import numpy as np


def sigmoid(logit: float) -> float:
    """1 / (1 + e^-z) for one float, written with tanh so that no logit overflows."""
    return 0.5 * (1.0 + math.tanh(logit / 2))


def _ranking(scores: np.ndarray, targets: np.ndarray, ks: tuple[int, ...] = ()) -> dict[str, float | int]:
    """The metrics of one whole ranking: sorted once (stable, highest first), then scored by the same
    :class:`StreamingRanking` the audit streams its candidates through, so there is one implementation."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).ravel() > 0
    order = np.argsort(-scores, kind="mergesort")
    ranking = StreamingRanking(ks)
    ranking.add(scores[order], targets[order])
    return ranking.result()


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Average precision as scikit-learn's ``average_precision_score`` defines it (ties grouped,
    sum of precision times recall increments), in [0, 1]; 0 when there is no positive."""
    return float(_ranking(scores, targets)["average_precision"])


def scorable_classes(targets: np.ndarray) -> np.ndarray:
    """(C,) bool: the classes of (N, C) {0, 1} targets with at least one positive and one negative, the
    only ones an average precision tells anything of (COCO's person, in every photo, has no negative)."""
    positive = np.asarray(targets) > 0
    return positive.any(axis=0) & ~positive.all(axis=0)


def mean_average_precision(scores: np.ndarray, targets: np.ndarray, scorable_only: bool = False) -> float:
    """The protocol's mAP in percent: per-class average precision of (N, C) scores against (N, C)
    {0, 1} targets, a class without any positive counting as 0, averaged over all classes.
    ``scorable_only``: averaged over :func:`scorable_classes` alone (the same figure on a split where
    every class has both; on a small split of a long-tailed set, the one that means something)."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (N, C)")
    columns = np.flatnonzero(scorable_classes(targets)) if scorable_only else np.arange(scores.shape[1])
    if columns.size == 0:
        raise ValueError("no class has both a positive and a negative here: mAP is undefined")
    per_class = [average_precision(scores[:, c], targets[:, c]) for c in columns]
    return 100.0 * float(np.mean(per_class))


def precision_recall_curve(scores: np.ndarray, targets: np.ndarray, points: int = 200
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) of the top k of the ranking (highest scores first, stable order for ties) at
    up to ``points`` values of k spread over the whole ranking, k = 1 and the last included: a curve to
    draw, not to integrate (:func:`average_precision` is the area's figure). Empty without a positive."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    hits = np.cumsum(np.asarray(targets).ravel()[np.argsort(-scores, kind="mergesort")] > 0)
    if hits.size == 0 or hits[-1] == 0:
        return np.zeros(0), np.zeros(0)
    ks = np.unique(np.linspace(1, hits.size, num=min(points, hits.size)).round().astype(int))
    return hits[ks - 1] / hits[-1], hits[ks - 1] / ks


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN when only one class is present."""
    return float(_ranking(scores, targets)["auroc"])


def precision_recall_at_k(scores: np.ndarray, targets: np.ndarray, k: int) -> tuple[float, float]:
    """Precision and recall of the k highest scores (stable order for ties)."""
    result = _ranking(scores, targets, (k,))
    return float(result[f"precision_at_{k}"]), float(result[f"recall_at_{k}"])


def precision_at_recall(scores: np.ndarray, targets: np.ndarray, recall: float) -> float:
    """Precision of the shortest top of the ranking (highest scores first, stable order for ties)
    that holds at least ``recall`` of the positives; NaN when there is no positive."""
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"recall must be in (0, 1], got {recall}")
    scores = np.asarray(scores, dtype=np.float64).ravel()
    hits = np.cumsum(np.asarray(targets).ravel()[np.argsort(-scores, kind="mergesort")] > 0)
    if hits.size == 0 or hits[-1] == 0:
        return float("nan")
    top = int(np.searchsorted(hits, recall * hits[-1] - 1e-9)) + 1
    return float(hits[top - 1] / top)


class StreamingRanking:
    """Average precision, AUROC and precision/recall@k of one ranking, fed in chunks in descending
    score order, in memory independent of the number of items: the audit ranks more candidates than
    it wants to hold at once, so it sorts them on disk and streams them through this.

    The results equal :func:`average_precision`, :func:`roc_auc` and :func:`precision_recall_at_k`
    on the concatenated arrays: tied scores enter the AP and AUROC together, and @k breaks ties by
    arrival order, as the stable sort there does. ``ks`` must be known before the stream starts.
    """

    def __init__(self, ks: tuple[int, ...] | list[int] = ()):
        self.ks = tuple(int(k) for k in ks)
        self._hits_at: dict[int, int] = {}
        self._seen = 0
        self._hits = 0
        self._true_closed = 0  # positives and negatives in finished tie groups
        self._false_closed = 0
        self._pending: tuple[float, int, int] | None = None  # (score, positives, negatives) of the open group
        self._ap_sum = 0.0  # sum over groups of positives x precision after the group
        self._auc_sum = 0.0  # pairs (positive above negative), ties counting one half

    def add(self, scores: np.ndarray, targets: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float64).ravel()
        hits = (np.asarray(targets).ravel() > 0).astype(np.int64)
        if scores.size == 0:
            return
        previous = self._pending[0] if self._pending is not None else np.inf
        if np.any(np.diff(scores) > 0) or scores[0] > previous:
            raise ValueError("scores must arrive in non-increasing order")
        for k in self.ks:
            if k not in self._hits_at and self._seen + scores.size >= k:
                self._hits_at[k] = self._hits + int(hits[: max(k - self._seen, 0)].sum())
        self._seen += scores.size
        self._hits += int(hits.sum())
        starts = np.r_[0, np.flatnonzero(np.diff(scores)) + 1]
        group_true = np.add.reduceat(hits, starts)
        group_false = np.diff(np.r_[starts, scores.size]) - group_true
        group_scores = scores[starts]
        if self._pending is not None:
            if group_scores[0] == self._pending[0]:  # the open group goes on in this chunk
                group_true[0] += self._pending[1]
                group_false[0] += self._pending[2]
            else:
                group_scores = np.r_[self._pending[0], group_scores]
                group_true = np.r_[self._pending[1], group_true]
                group_false = np.r_[self._pending[2], group_false]
        self._close(group_true[:-1], group_false[:-1])
        self._pending = (float(group_scores[-1]), int(group_true[-1]), int(group_false[-1]))

    def _close(self, group_true: np.ndarray, group_false: np.ndarray) -> None:
        if group_true.size == 0:
            return
        true_after = self._true_closed + np.cumsum(group_true)
        false_after = self._false_closed + np.cumsum(group_false)
        self._ap_sum += float(np.sum(group_true * true_after / (true_after + false_after)))
        self._auc_sum += float(np.sum(group_false * (true_after - group_true / 2.0)))
        self._true_closed, self._false_closed = int(true_after[-1]), int(false_after[-1])

    def result(self) -> dict[str, float | int]:
        """``positives``, ``items``, ``average_precision``, ``auroc`` (NaN with one class only) and
        ``precision_at_K`` / ``recall_at_K`` for each K of ``ks``. Call once, at the end."""
        if self._pending is not None:
            self._close(np.array([self._pending[1]]), np.array([self._pending[2]]))
            self._pending = None
        positives, negatives = self._true_closed, self._false_closed
        out: dict[str, float | int] = {
            "positives": positives,
            "items": self._seen,
            "average_precision": self._ap_sum / positives if positives else 0.0,
            "auroc": self._auc_sum / (positives * negatives) if positives and negatives else float("nan"),
        }
        for k in self.ks:
            top = min(k, self._seen)
            hits = self._hits_at.get(k, self._hits)
            out[f"precision_at_{k}"] = hits / top if top > 0 else 0.0
            out[f"recall_at_{k}"] = hits / positives if top > 0 and positives else 0.0
        return out
