"""The single-positive baselines: full labels, AN, AN-LS, WAN, EPR, ROLE and Large-Loss (LL-R, LL-Ct,
LL-Cp), each as a loss function and the objective that trains with it."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from spml.losses.base import Objective, assume_negative_matrix, neg_log_sigmoid


def expected_positive_penalty(probabilities: Tensor, expected_positives: float) -> Tensor:
    """(mean over the batch of sum_c p_c - k)^2 / C^2, the EPR regulariser."""
    num_classes = probabilities.shape[1]
    return (probabilities.sum(dim=1).mean() - expected_positives) ** 2 / num_classes**2


def full_label_loss(logits: Tensor, labels: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, labels.float())


def an_loss(logits: Tensor, observed: Tensor) -> Tensor:
    return assume_negative_matrix(logits, observed).mean()


def an_ls_loss(logits: Tensor, observed: Tensor, smoothing: float = 0.1) -> Tensor:
    """AN with label smoothing on both sides: targets 1 - eps for positives, eps for the rest."""
    targets = torch.where(observed == 1, 1.0 - smoothing, smoothing).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets)


def wan_loss(logits: Tensor, observed: Tensor) -> Tensor:
    """Weak AN: unknown entries count as negatives with weight 1/(C-1); known negatives weigh 1."""
    num_classes = logits.shape[1]
    weights = torch.ones_like(logits)
    weights[observed == 0] = 1.0 / (num_classes - 1)
    return (assume_negative_matrix(logits, observed) * weights).mean()


def epr_loss(logits: Tensor, observed: Tensor, expected_positives: float) -> Tensor:
    """Positive terms (and known negatives) averaged over all B x C entries, plus the EPR penalty."""
    terms = torch.zeros_like(logits)
    positive, negative = observed == 1, observed == -1
    terms[positive] = neg_log_sigmoid(logits[positive])
    terms[negative] = neg_log_sigmoid(-logits[negative])
    return terms.mean() + expected_positive_penalty(torch.sigmoid(logits), expected_positives)


def role_loss(logits: Tensor, label_logits: Tensor, observed: Tensor, expected_positives: float) -> Tensor:
    """ROLE: the classifier f and the per-image label estimates g train each other.

    Each half is (positive term + cross-entropy against the other, detached) / 2, plus half of each
    side's EPR penalty, as in Cole et al.'s public implementation.
    """
    predictions, estimates = torch.sigmoid(logits), torch.sigmoid(label_logits)
    positive = (observed == 1).to(logits.dtype)

    def half(own_logits: Tensor, other_probabilities: Tensor) -> Tensor:
        other = other_probabilities.detach()
        cross = other * neg_log_sigmoid(own_logits) + (1 - other) * neg_log_sigmoid(-own_logits)
        return positive * neg_log_sigmoid(own_logits) + cross

    matrix = (half(logits, estimates) + half(label_logits, predictions)) / 2
    penalty = (expected_positive_penalty(predictions, expected_positives)
               + expected_positive_penalty(estimates, expected_positives)) / 2
    return matrix.mean() + penalty


def large_loss_selection(loss_matrix: Tensor, observed: Tensor, fraction: float) -> Tensor:
    """Boolean (B, C): the k = ceil(B*C*fraction) largest losses among the unknown entries."""
    candidates = torch.where(observed == 0, loss_matrix.detach(), torch.full_like(loss_matrix, -math.inf))
    # round() first: B*C*(t-1)*delta in floating point can land just above an integer (200 * 7 * 0.005
    # gives 7.000000000000001), and ceil would then take one entry too many.
    k = min(math.ceil(round(loss_matrix.numel() * fraction, 9)), int((observed == 0).sum()))
    selected = torch.zeros(loss_matrix.numel(), dtype=torch.bool, device=loss_matrix.device)
    if k > 0:
        selected[candidates.flatten().topk(k).indices] = True
    return selected.view_as(loss_matrix)


class FullLabels(Objective):
    name = "full"

    def loss(self, logits, batch, epoch):
        return full_label_loss(logits, batch["labels"]), None


class AssumeNegative(Objective):
    name = "an"

    def loss(self, logits, batch, epoch):
        return an_loss(logits, batch["observed"]), None


class AssumeNegativeSmoothed(Objective):
    name = "an-ls"

    def __init__(self, smoothing: float = 0.1):
        super().__init__()
        self.smoothing = smoothing

    def loss(self, logits, batch, epoch):
        return an_ls_loss(logits, batch["observed"], self.smoothing), None


class WeakAssumeNegative(Objective):
    name = "wan"

    def loss(self, logits, batch, epoch):
        return wan_loss(logits, batch["observed"]), None


class ExpectedPositiveRegularization(Objective):
    name = "epr"

    def __init__(self, expected_positives: float):
        super().__init__()
        self.expected_positives = expected_positives

    def loss(self, logits, batch, epoch):
        return epr_loss(logits, batch["observed"], self.expected_positives), None


def _logit(probability: float) -> float:
    return math.log(probability / (1 - probability))


class RegularizedOnlineLabelEstimation(Objective):
    """ROLE with its learned label matrix, initialised as in Cole et al.: observed positives at
    logit(0.995), known negatives at logit(0.005), unknown entries uniform in +-logit(0.6)."""

    name = "role"

    def __init__(self, observed: Tensor, expected_positives: float, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        spread = _logit(0.6)
        init = spread * (2 * torch.rand(observed.shape, generator=generator) - 1)
        init[observed == 1] = _logit(0.995)
        init[observed == -1] = _logit(0.005)
        self.label_logits = nn.Parameter(init)
        self.expected_positives = expected_positives

    def loss(self, logits, batch, epoch):
        label_logits = self.label_logits[batch["index"]]
        return role_loss(logits, label_logits, batch["observed"], self.expected_positives), None


class LargeLoss(Objective):
    """LL-R (reject), LL-Ct (flip for this step) and LL-Cp (flip for good).

    From epoch 2 on, k = ceil(B*C*(t-1)*delta) of the unknown entries with the largest AN loss are
    rejected or flipped to positive. LL-Cp stores its flips in ``corrected`` (images x classes) and
    uses k = ceil(B*C*delta) per step, as the LL authors' code does, since its flips accumulate.
    Unlike that code, LL-Cp really writes back: it does not silently run as LL-Ct.
    """

    def __init__(self, scheme: str, delta: float | None = None, num_images: int | None = None,
                 num_classes: int | None = None):
        super().__init__()
        defaults = {"ll-r": 0.5, "ll-ct": 0.2, "ll-cp": 0.1}
        if scheme not in defaults:
            raise ValueError(f"unknown large-loss scheme {scheme!r}")
        self.name = scheme
        self.delta = (defaults[scheme] if delta is None else delta) / 100.0
        if scheme == "ll-cp":
            if num_images is None or num_classes is None:
                raise ValueError("ll-cp needs num_images and num_classes for its stored corrections")
            self.register_buffer("corrected", torch.zeros(num_images, num_classes, dtype=torch.bool))

    def loss(self, logits, batch, epoch):
        observed = batch["observed"]
        if self.name == "ll-cp":
            observed = torch.where(self.corrected[batch["index"]], torch.ones_like(observed), observed)
        loss_matrix = assume_negative_matrix(logits, observed)
        fraction = self.delta if self.name == "ll-cp" else (epoch - 1) * self.delta
        if epoch < 2 or fraction <= 0:
            return loss_matrix.mean(), None
        selected = large_loss_selection(loss_matrix, observed, fraction)
        if self.name == "ll-r":
            loss_matrix = torch.where(selected, torch.zeros_like(loss_matrix), loss_matrix)
        else:
            loss_matrix = torch.where(selected, neg_log_sigmoid(logits), loss_matrix)
            if self.name == "ll-cp":
                self.corrected[batch["index"]] |= selected
        return loss_matrix.mean(), selected

    def synchronize(self) -> None:
        if self.name == "ll-cp" and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flags = self.corrected.to(torch.uint8)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            self.corrected.copy_(flags.bool())
