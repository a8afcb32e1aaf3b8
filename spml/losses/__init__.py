"""CALR and the single-positive baselines, each as an objective that runs one training step.

:mod:`spml.losses.base` holds the interface (``Objective.step(model, batch, epoch) -> StepResult``) and
the label encoding, :mod:`spml.losses.baselines` the baselines, :mod:`spml.losses.calr` CALR;
:func:`create_objective` builds any of them by name.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from spml.losses.base import Objective
from spml.losses.baselines import (
    AssumeNegative,
    AssumeNegativeSmoothed,
    ExpectedPositiveRegularization,
    FullLabels,
    LargeLoss,
    RegularizedOnlineLabelEstimation,
    WeakAssumeNegative,
)
from spml.losses.calr import CALR

LOSS_NAMES = ("full", "an", "an-ls", "wan", "epr", "role", "ll-r", "ll-ct", "ll-cp", "calr")


def create_objective(
    name: str,
    num_classes: int,
    *,
    train_observed: Tensor | None = None,
    expected_positives: float | None = None,
    **options: Any,
) -> Objective:
    """Build the objective ``name`` (one of LOSS_NAMES).

    ``train_observed`` (images x classes, the training set's observed matrix) is needed by ROLE and
    LL-Cp, which keep per-image state; ``expected_positives`` by EPR and ROLE.
    """
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    if name in ("epr", "role") and expected_positives is None:
        raise ValueError(f"loss {name!r} needs expected_positives (the average number of labels per image)")
    if name in ("role", "ll-cp") and train_observed is None:
        raise ValueError(f"loss {name!r} keeps per-image state and needs the training set's observed labels")
    if name == "full":
        return FullLabels()
    if name == "an":
        return AssumeNegative()
    if name == "an-ls":
        return AssumeNegativeSmoothed(**options)
    if name == "wan":
        return WeakAssumeNegative()
    if name == "epr":
        return ExpectedPositiveRegularization(expected_positives)
    if name == "role":
        return RegularizedOnlineLabelEstimation(train_observed, expected_positives, **options)
    if name.startswith("ll-"):
        num_images = None if train_observed is None else train_observed.shape[0]
        return LargeLoss(name, num_images=num_images, num_classes=num_classes, **options)
    return CALR(num_classes, **options)
