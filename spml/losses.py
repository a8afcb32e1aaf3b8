"""CALR and the single-positive baselines, each as an objective that runs one training step.

Labels use one encoding everywhere: ``observed`` is 1 for the annotated positive, -1 for a known
negative, 0 for unknown; ``labels`` are the full labels (used by ``full`` and for statistics only).
Losses work on raw logits with log-sigmoid (exact -log(sigmoid)), where the public code clamps
``-log(p + 1e-5)``; the two agree except for saturated predictions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from spml.cam import CamNorm, apply_masks, positive_masks
from spml.model import SPMLModel
from spml.rejection import RunningThresholds, rejection_mask

LOSS_NAMES = ("full", "an", "an-ls", "wan", "epr", "role", "ll-r", "ll-ct", "ll-cp", "calr")
MASKED_BATCHNORM_MODES = ("batch", "eval", "update")
log = logging.getLogger(__name__)


def neg_log_sigmoid(logits: Tensor) -> Tensor:
    """-log(sigmoid(z)), stable for large |z|."""
    return -F.logsigmoid(logits)


def assume_negative_matrix(logits: Tensor, observed: Tensor) -> Tensor:
    """Per-entry AN binary cross-entropy: positives against 1, everything else against 0."""
    positive = observed == 1
    return torch.where(positive, neg_log_sigmoid(logits), neg_log_sigmoid(-logits))


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


RAN_VIEWS = ("strong", "both", "weak")


def calr_loss(
    logits: Tensor,
    strong_logits: Tensor,
    observed: Tensor,
    rejected: Tensor,
    weights: tuple[float, float, float] = (0.5, 1.0, 0.5),
    ran_views: str = "strong",
) -> tuple[Tensor, dict[str, Tensor]]:
    """w_spbc * SPBC(weak) + w_ran * RAN + w_l2 * MSE(strong, weak).

    RAN is AN with the rejected entries dropped, on the strong view (``ran_views="strong"``, the
    paper's and the public code's), on the weak view (``"weak"``), or the sum of both (``"both"``).
    Only unknown entries can be dropped: observed positives and known negatives stay in RAN whatever
    ``rejected`` says."""
    if ran_views not in RAN_VIEWS:
        raise ValueError(f"unknown ran_views {ran_views!r}; choose one of {', '.join(RAN_VIEWS)}")
    positive = observed == 1
    spbc = neg_log_sigmoid(logits[positive]).mean() if bool(positive.any()) else logits.sum() * 0.0
    kept = ~rejected | (observed != 0)
    views = {"strong": (strong_logits,), "weak": (logits,), "both": (logits, strong_logits)}[ran_views]
    ran = sum(assume_negative_matrix(view, observed)[kept].mean() for view in views)
    consistency = F.mse_loss(strong_logits, logits)
    w_spbc, w_ran, w_l2 = weights
    total = w_spbc * spbc + w_ran * ran + w_l2 * consistency
    return total, {"spbc": spbc.detach(), "ran": ran.detach(), "l2": consistency.detach()}


@dataclass
class StepResult:
    loss: Tensor
    logits: Tensor  # weak-view logits, detached
    rejected: Tensor | None = None  # (B, C) entries dropped or corrected this step
    parts: dict[str, Tensor] = field(default_factory=dict)  # named loss parts, detached


@contextmanager
def frozen_batchnorm_statistics(model: nn.Module) -> Iterator[None]:
    """BatchNorm keeps using batch statistics but does not fold them into its running averages.

    In training mode with ``track_running_stats`` off, BatchNorm normalises with the batch statistics
    and leaves every buffer alone, ``num_batches_tracked`` included (a momentum of 0 would still count
    the batch, which shifts the cumulative average of ``momentum=None`` layers)."""
    saved = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training and module.track_running_stats:
            saved.append(module)
            module.track_running_stats = False
    try:
        yield
    finally:
        for module in saved:
            module.track_running_stats = True


@contextmanager
def repeated_batchnorm_updates(model: nn.Module, passes: int) -> Iterator[None]:
    """Every BatchNorm that updates its running statistics folds each batch in ``passes`` times, as
    if the backbone ran ``passes`` times on it: the CALR code runs the backbone twice per model call
    (once for the logits, once more for the CAM), and in training mode the second pass sees the same
    batch statistics. The extra folds repeat the layer's own update (``F.batch_norm`` on its input,
    ``num_batches_tracked`` counted too), so they equal what a second pass would leave behind without
    its cost. Local statistics only: not for SyncBatchNorm (the configuration refuses the pair)."""
    if passes <= 1:
        yield
        return

    def fold_again(module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
        if not (module.training and module.track_running_stats):
            return
        with torch.no_grad():
            for _ in range(passes - 1):
                module.num_batches_tracked.add_(1)
                factor = 1.0 / float(module.num_batches_tracked) if module.momentum is None else module.momentum
                F.batch_norm(inputs[0], module.running_mean, module.running_var, None, None, True, factor,
                             module.eps)

    handles = [module.register_forward_hook(fold_again) for module in model.modules()
               if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def batchnorm_in_eval_mode(model: nn.Module) -> Iterator[None]:
    """BatchNorm normalises with its running statistics (as at test time) and updates nothing."""
    saved = [module for module in model.modules()
             if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training]
    for module in saved:
        module.eval()
    try:
        yield
    finally:
        for module in saved:
            module.train()


@contextmanager
def masked_pass_batchnorm(model: nn.Module, mode: str) -> Iterator[None]:
    """BatchNorm in the masked pass: ``batch`` (batch statistics, buffers untouched), ``eval``
    (running statistics) or ``update`` (batch statistics folded into the buffers, as the reference)."""
    if mode == "batch":
        with frozen_batchnorm_statistics(model):
            yield
    elif mode == "eval":
        with batchnorm_in_eval_mode(model):
            yield
    elif mode == "update":
        yield
    else:
        raise ValueError(f"unknown masked-pass BatchNorm mode {mode!r}; choose one of "
                         f"{', '.join(MASKED_BATCHNORM_MODES)}")


# The reference's rule, and ours: what a CALR built without options (no recipe) uses. Chosen by the
# ablations of the method benchmark (README, "Method benchmark"; Decisions).
REFERENCE_OPTIONS: dict[str, Any] = {"bias_correction": False, "masked_bn": "update", "per_class_gap": False,
                                     "ran_views": "strong"}
CALR_DEFAULTS: dict[str, Any] = {"bias_correction": True, "masked_bn": "batch", "per_class_gap": False,
                                 "ran_views": "both"}


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


class CALR(Objective):
    """CAM-based loss rejection: one weak and one strong pass with autograd, one masked pass without.

    ``reference=True`` runs the public code's rule: the masked pass with autograd and with BatchNorm
    folding the masked batch into its running statistics (slower, and it lets x^M shift the statistics
    used at test time), running averages without bias correction, one global gap threshold.

    Without ``reference``, every option left at None takes the value in ``CALR_DEFAULTS``, the
    defaults that won the method benchmark (README, "Method benchmark"):

    - ``bias_correction``: divide the running averages by ``1 - m**t``. Uncorrected, they start at 0
      and hold ``1 - m**t`` of their value (7% after 76 steps at m = 0.999), so a short warm-up
      leaves T_gap near 0 and A_c near 0 and the rule rejects far too much.
    - ``masked_bn``: BatchNorm in the masked pass, see :func:`masked_pass_batchnorm`.
    - ``per_class_gap``: one gap threshold per class instead of one for all.
    - ``ran_views``: the view(s) RAN trains the negatives on: ``strong`` (the paper's), ``weak``, or
      ``both`` (the sum). The paper's CALR sees its negatives only through RandAugment; ``both`` also
      trains them on the view that matches test images, which won on every world of the benchmark.
    - ``warmup_steps``: when given, rejection starts after this many training steps of this
      objective instead of after ``warmup_epochs`` epochs.
    - ``batchnorm_passes=2`` folds every batch of every model call into BatchNorm twice, as the CALR
      code does by running the backbone twice per call (see :func:`repeated_batchnorm_updates`);
      IGNORE's code runs it once.
    """

    name = "calr"
    needs_strong_view = True

    def __init__(self, num_classes: int, cam_threshold: float = 0.5, cam_norm: CamNorm = "image",
                 warmup_epochs: int = 3, weights: tuple[float, float, float] = (0.5, 1.0, 0.5),
                 momentum: float = 0.999, bias_correction: bool | None = None, reference: bool = False,
                 masked_bn: str | None = None, per_class_gap: bool | None = None, warmup_steps: int | None = None,
                 batchnorm_passes: int = 1, ran_views: str | None = None):
        super().__init__()
        chosen = REFERENCE_OPTIONS if reference else CALR_DEFAULTS
        if reference and masked_bn not in (None, "update"):
            raise ValueError(f"reference CALR updates BatchNorm in the masked pass; masked_bn={masked_bn!r} "
                             "contradicts it")
        if reference and ran_views not in (None, "strong"):
            raise ValueError(f"reference CALR computes RAN on the strong view; ran_views={ran_views!r} contradicts it")
        self.ran_views = chosen["ran_views"] if ran_views is None else ran_views
        if self.ran_views not in RAN_VIEWS:
            raise ValueError(f"unknown ran_views {self.ran_views!r}; choose one of {', '.join(RAN_VIEWS)}")
        if batchnorm_passes < 1:
            raise ValueError(f"batchnorm_passes must be at least 1, got {batchnorm_passes}")
        self.batchnorm_passes = batchnorm_passes
        self.cam_threshold = cam_threshold
        self.cam_norm = cam_norm
        self.warmup_epochs = warmup_epochs
        if warmup_steps is not None and warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = warmup_steps
        self.weights = tuple(weights)
        self.reference = reference
        self.masked_bn = chosen["masked_bn"] if masked_bn is None else masked_bn
        if self.masked_bn not in MASKED_BATCHNORM_MODES:
            raise ValueError(f"unknown masked_bn {self.masked_bn!r}; choose one of {', '.join(MASKED_BATCHNORM_MODES)}")
        self.thresholds = RunningThresholds(
            num_classes, momentum, chosen["bias_correction"] if bias_correction is None else bias_correction,
            per_class_gap=chosen["per_class_gap"] if per_class_gap is None else per_class_gap)
        self._rejecting = False

    def get_extra_state(self) -> dict[str, Any]:
        return self.thresholds.state_dict()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.thresholds.load_state_dict(state)

    def masked_logits(self, model: nn.Module, spml_model: SPMLModel, images: Tensor, output,
                      observed: Tensor) -> Tensor:
        """Logits of the images masked to their observed positive's CAM (detached)."""
        with torch.no_grad():
            masks = positive_masks(spml_model, output, observed, tuple(images.shape[-2:]), self.cam_threshold,
                                   self.cam_norm)
            masked_images = apply_masks(images, masks)
        if self.reference:
            return model(masked_images).logits.detach()
        with torch.no_grad(), masked_pass_batchnorm(model, self.masked_bn):
            return model(masked_images).logits

    def rejection_active(self, epoch: int) -> bool:
        """Whether the rule rejects in this step (called after the step's threshold update)."""
        if self.warmup_steps is not None:
            return self.thresholds.steps > self.warmup_steps
        return epoch > self.warmup_epochs

    def _warn_if_unsettled(self) -> None:
        held = self.thresholds.settled_fraction
        if held < 0.5:
            log.warning(
                "CALR starts rejecting after %d steps while its running averages hold only %.0f%% of their "
                "value (momentum %g, no bias correction): T_gap and A_c are near 0 and the rule will reject "
                "far too much. Use loss_options {bias_correction: true} or a longer warm-up.",
                self.thresholds.steps, 100 * held, self.thresholds.momentum)

    def step(self, model: nn.Module, batch: dict[str, Tensor], epoch: int) -> StepResult:
        spml_model: SPMLModel = getattr(model, "module", model)  # unwrap DistributedDataParallel
        images, observed = batch["image"], batch["observed"]
        with repeated_batchnorm_updates(spml_model, self.batchnorm_passes):
            output = model(images)
            strong_logits = model(batch["strong"]).logits
            masked = self.masked_logits(model, spml_model, images, output, observed)
        logits = output.logits
        detached = logits.detach()
        self.thresholds.to(detached.device).update(detached, masked, observed)
        if not self.rejection_active(epoch):
            rejected = torch.zeros_like(observed, dtype=torch.bool)
        else:
            if not self._rejecting:
                self._rejecting = True
                self._warn_if_unsettled()
            rejected = rejection_mask(detached, masked, observed, self.thresholds.gap_threshold_tensor,
                                      self.thresholds.class_average)
        loss, parts = calr_loss(logits, strong_logits, observed, rejected, self.weights, self.ran_views)
        return StepResult(loss=loss, logits=detached, rejected=rejected, parts=parts)


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
