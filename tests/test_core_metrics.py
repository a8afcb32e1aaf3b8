"""mAP, ROC AUC and precision/recall at k: hand cases and scikit-learn as the reference."""

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from spml.metrics import (
    average_precision,
    mean_average_precision,
    precision_at_recall,
    precision_recall_at_k,
    precision_recall_curve,
    roc_auc,
    scorable_classes,
    sigmoid,
)


def test_average_precision_hand_cases():
    # ranks 1, 3 are positive: precision 1 at recall 1/2, 2/3 at recall 1 -> (1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1])) == pytest.approx(5 / 6)
    # a tie at the top enters together: (tp 1, fp 1) then (tp 2, fp 1) -> 0.5 * 1/2 + 0.5 * 2/3
    assert average_precision(np.array([0.5, 0.5, 0.1]), np.array([1, 0, 1])) == pytest.approx(0.25 + 1 / 3)
    assert average_precision(np.array([0.3, 0.2]), np.array([0, 0])) == 0.0


def test_mean_average_precision_hand_case_in_percent():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    targets = np.array([[1, 0], [0, 0], [1, 0]])  # class 1 has no positive: AP 0
    assert mean_average_precision(scores, targets) == pytest.approx(100 * (5 / 6 + 0) / 2)


@pytest.mark.parametrize("seed", range(5))
def test_mean_average_precision_matches_sklearn_with_ties_and_empty_classes(seed):
    rng = np.random.RandomState(seed)
    n, c = 40, 7
    scores = np.round(rng.rand(n, c), 1)  # one decimal: many ties
    targets = (rng.rand(n, c) < 0.3).astype(int)
    targets[:, 2] = 0  # no positive in class 2
    targets[:, 5] = 1  # only positives in class 5
    targets[0, 0], targets[1, 0] = 1, 0
    expected = [average_precision_score(targets[:, j], scores[:, j]) if targets[:, j].any() else 0.0
                for j in range(c)]
    assert mean_average_precision(scores, targets) == pytest.approx(100 * np.mean(expected), rel=1e-12)
    for j in range(c):
        assert average_precision(scores[:, j], targets[:, j]) == pytest.approx(expected[j], rel=1e-12)


def test_mean_average_precision_checks_shapes():
    with pytest.raises(ValueError):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError):
        mean_average_precision(np.zeros(3), np.zeros(3))


def test_roc_auc_hand_case_ties_count_half():
    # pairs (pos, neg): (0.9, 0.5) 1, (0.9, 0.1) 1, (0.5, 0.5) 1/2, (0.5, 0.1) 1 -> 3.5 / 4
    assert roc_auc(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(3.5 / 4)


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_sklearn(seed):
    rng = np.random.RandomState(100 + seed)
    scores = np.round(rng.rand(60), 1)
    targets = (rng.rand(60) < 0.4).astype(int)
    targets[:2] = [0, 1]
    assert roc_auc(scores, targets) == pytest.approx(roc_auc_score(targets, scores), rel=1e-12)


def test_roc_auc_one_class_is_nan():
    assert math.isnan(roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))
    assert math.isnan(roc_auc(np.array([0.1, 0.2]), np.array([0, 0])))


def test_precision_recall_at_k_hand_case():
    scores = np.array([0.9, 0.1, 0.8, 0.3])
    targets = np.array([1, 0, 0, 1])
    assert precision_recall_at_k(scores, targets, 1) == pytest.approx((1.0, 0.5))
    assert precision_recall_at_k(scores, targets, 2) == pytest.approx((0.5, 0.5))  # top: 0.9, 0.8
    assert precision_recall_at_k(scores, targets, 3) == pytest.approx((2 / 3, 1.0))  # + 0.3
    assert precision_recall_at_k(scores, targets, 10) == pytest.approx((0.5, 1.0))  # k capped at 4
    assert precision_recall_at_k(scores, targets, 0) == (0.0, 0.0)
    # ties keep the input order; no positive at all gives recall 0
    assert precision_recall_at_k(np.array([0.5, 0.5, 0.2]), np.array([0, 1, 1]), 1) == (0.0, 0.0)
    assert precision_recall_at_k(np.array([0.5, 0.4]), np.array([0, 0]), 1) == (0.0, 0.0)


def test_precision_at_recall_hand_case():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    targets = [1, 0, 1, 0, 1]
    assert precision_at_recall(scores, targets, 1 / 3) == 1.0  # the top one holds a third of the positives
    assert precision_at_recall(scores, targets, 0.5) == 2 / 3  # 1.5 positives needed: the top three hold 2
    assert precision_at_recall(scores, targets, 2 / 3) == 2 / 3
    assert precision_at_recall(scores, targets, 1.0) == 3 / 5
    # Order, not position in the array; ties in the order given (stable).
    assert precision_at_recall([0.1, 0.4, 0.4], [1, 0, 1], 0.5) == 0.5
    assert math.isnan(precision_at_recall(scores, [0] * 5, 0.5))
    with pytest.raises(ValueError, match="recall"):
        precision_at_recall(scores, targets, 0.0)


def test_sigmoid_of_one_float_never_overflows():
    assert sigmoid(0.0) == 0.5
    assert sigmoid(2.0) == pytest.approx(1 / (1 + math.exp(-2.0)), rel=1e-12)
    assert sigmoid(-2.0) == pytest.approx(1 - sigmoid(2.0), rel=1e-12)
    assert sigmoid(1e6) == 1.0 and sigmoid(-1e6) == 0.0  # math.exp(1e6) would raise OverflowError


def test_mean_average_precision_over_scorable_classes_only():
    # Class 0 is positive everywhere (COCO's person), class 2 never: only class 1 has both.
    scores = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.4], [0.5, 0.6, 0.2]])
    targets = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0]])
    assert scorable_classes(targets).tolist() == [False, True, False]
    assert mean_average_precision(scores, targets, scorable_only=True) == pytest.approx(100.0)
    assert mean_average_precision(scores, targets) == pytest.approx(100 * (1.0 + 1.0 + 0.0) / 3)
    with pytest.raises(ValueError, match="no class has both"):
        mean_average_precision(scores, np.ones_like(targets), scorable_only=True)


def test_precision_recall_curve_hand_case():
    # Ranked: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): top 1, 2, 3, 4.
    recall, precision = precision_recall_curve(np.array([0.1, 0.9, 0.7, 0.8]), np.array([0, 1, 1, 0]))
    assert recall.tolist() == [0.5, 0.5, 1.0, 1.0]
    assert precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    recall, precision = precision_recall_curve(np.arange(1000.0), np.arange(1000) % 2, points=10)
    assert len(recall) == 10 and recall[-1] == 1.0 and precision[-1] == 0.5
    assert precision_recall_curve(np.array([0.5]), np.array([0]))[0].size == 0
