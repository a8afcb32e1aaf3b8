"""What every objective shares: the training step's interface and the assume-negative terms.

Labels use one encoding everywhere: ``observed`` is 1 for the annotated positive, -1 for a known
negative, 0 for unknown; ``labels`` are the full labels (used by ``full`` and for statistics only).
Losses work on raw logits with log-sigmoid (exact -log(sigmoid)), where the public code clamps
``-log(p + 1e-5)``; the two agree except for saturated predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def neg_log_sigmoid(logits: Tensor) -> Tensor:
    """-log(sigmoid(z)), stable for large |z|."""
    return -F.logsigmoid(logits)


def assume_negative_matrix(logits: Tensor, observed: Tensor) -> Tensor:
    """Per-entry AN binary cross-entropy: positives against 1, everything else against 0."""
    positive = observed == 1
    return torch.where(positive, neg_log_sigmoid(logits), neg_log_sigmoid(-logits))


@dataclass
class StepResult:
    loss: Tensor
    logits: Tensor  # weak-view logits, detached
    rejected: Tensor | None = None  # (B, C) entries dropped or corrected this step
    parts: dict[str, Tensor] = field(default_factory=dict)  # named loss parts, detached
    # CALR with probes: (3,) probes, probes the rule flags, unknown entries it flags (acting or not)
    probe_counts: Tensor | None = None


class Objective(nn.Module):
    """One training step of one loss: ``step(model, batch, epoch) -> StepResult``.

    ``batch`` holds ``image`` (weak view), ``observed``, ``labels``, ``index`` and, for objectives
    with ``needs_strong_view``, ``strong``. ``epoch`` counts from 1.
    """

    name: str = ""
    needs_strong_view: bool = False

    def step(self, model: nn.Module, batch: dict[str, Tensor], epoch: int) -> StepResult:
        logits = model(batch["image"]).logits
        loss, rejected = self.loss(logits, batch, epoch)
        return StepResult(loss=loss, logits=logits.detach(), rejected=rejected)

    def loss(self, logits: Tensor, batch: dict[str, Tensor], epoch: int) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def synchronize(self) -> None:
        """Make state that ranks change independently equal across ranks (called after each epoch)."""
