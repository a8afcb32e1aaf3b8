"""CALR, CAM-based loss rejection: its loss (SPBC + RAN + consistency), its options, the BatchNorm
handling of its masked pass, and the objective that runs its training step."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spml.cam import CamNorm, apply_masks, positive_masks
from spml.losses.base import Objective, StepResult, assume_negative_matrix, neg_log_sigmoid
from spml.model import SPMLModel
from spml.rejection import RunningThresholds, placebo_mask, probe_columns, probe_decisions, rejection_mask

RAN_VIEWS = ("strong", "both", "weak")
MASKED_BATCHNORM_MODES = ("batch", "eval", "update")
log = logging.getLogger(__name__)


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
# ablations of the method benchmark (docs/benchmarks.md; docs/method.md, Decisions). min_precision 0.65:
# the gate wants a true precision of 0.5, and on the partial world an epoch's estimate while gated ran
# 0.14 to 0.17 above the precision the rule had once it acted (docs/benchmarks.md, "The rule's gate").
REFERENCE_OPTIONS: dict[str, Any] = {"bias_correction": False, "masked_bn": "update", "per_class_gap": False,
                                     "ran_views": "strong", "min_precision": 0.0}
CALR_DEFAULTS: dict[str, Any] = {"bias_correction": True, "masked_bn": "batch", "per_class_gap": False,
                                 "ran_views": "both", "min_precision": 0.65}
# The gate guards a backbone trained from scratch: there the ungated rule cost 2.9 mAP with several
# positives. With ImageNet features the same imprecise rule gained, on real photos and on that very
# world's scenes (docs/method.md, "The gate and the backbone"), so ours leaves it off there.
PRETRAINED_MIN_PRECISION = 0.0


def calr_defaults(reference: bool, pretrained: bool) -> dict[str, Any]:
    """The options a CALR run takes where none is given: the reference's, or ours for a backbone trained
    from scratch (``CALR_DEFAULTS``) or from ImageNet weights (the gate off). ``train fit`` writes them
    into the run's config; a ``CALR`` built directly takes ``CALR_DEFAULTS``."""
    if reference:
        return dict(REFERENCE_OPTIONS)
    return {**CALR_DEFAULTS, "min_precision": PRETRAINED_MIN_PRECISION} if pretrained else dict(CALR_DEFAULTS)


class CALR(Objective):
    """CAM-based loss rejection: one weak and one strong pass with autograd, one masked pass without.

    ``reference=True`` runs the public code's rule: the masked pass with autograd and with BatchNorm
    folding the masked batch into its running statistics (slower, and it lets x^M shift the statistics
    used at test time), running averages without bias correction, one global gap threshold.

    Without ``reference``, every option left at None takes the value in ``CALR_DEFAULTS``, the
    defaults that won the method benchmark (docs/benchmarks.md):

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
    - ``probes``: with several annotated positives per image, each step also masks every image that has
      two or more to all its positives but one (the probe, see :func:`spml.rejection.probe_columns`)
      and records whether the rule would reject the probe: a sample of the rule's recall, from which
      ``train fit`` estimates its precision (:func:`spml.rejection.estimated_precision`). One more
      pass without autograd, on the whole batch so that every rank of a distributed run makes the
      same calls; it changes nothing in the training (BatchNorm buffers untouched, the random stream
      restored). ``train fit`` turns it on when the training split has an image with two or more
      annotated positives.
    - ``min_precision``: the rule rejects in an epoch only while the precision its probes estimated
      over the previous epoch (``estimated_precision``, set by the trainer) is at least this; 0 turns
      the gate off. Without an estimate (single positives, no expected label count) it never closes.
      ``train fit`` turns it off for an ImageNet-pretrained backbone (:func:`calr_defaults`).
    - ``placebo``: a control, not a method: each image rejects as many unknown entries as the rule
      flags in it, but drawn at random (:func:`spml.rejection.placebo_mask`). What CALR gains over its
      placebo is what the rule's choice of entries earns, beyond the dropping of some loss terms.
    """

    name = "calr"
    needs_strong_view = True

    def __init__(self, num_classes: int, cam_threshold: float = 0.5, cam_norm: CamNorm = "image",
                 warmup_epochs: int = 3, weights: tuple[float, float, float] = (0.5, 1.0, 0.5),
                 momentum: float = 0.999, bias_correction: bool | None = None, reference: bool = False,
                 masked_bn: str | None = None, per_class_gap: bool | None = None, warmup_steps: int | None = None,
                 batchnorm_passes: int = 1, ran_views: str | None = None, probes: bool = False,
                 min_precision: float | None = None, placebo: bool = False):
        super().__init__()
        # The placebo's own stream, seeded from the run's seed: the training's random numbers stay as they were.
        self._placebo_generator = torch.Generator().manual_seed(torch.initial_seed()) if placebo else None
        self.probes = probes
        chosen = REFERENCE_OPTIONS if reference else CALR_DEFAULTS
        if reference and min_precision not in (None, 0.0):
            raise ValueError(f"reference CALR rejects whatever its precision; min_precision={min_precision!r} "
                             "contradicts it")
        self.min_precision = float(chosen["min_precision"] if min_precision is None else min_precision)
        if not 0.0 <= self.min_precision <= 1.0:
            raise ValueError(f"min_precision must be in [0, 1], got {self.min_precision}")
        self.estimated_precision: float | None = None  # over the last finished epoch
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
        state = {**self.thresholds.state_dict(), "estimated_precision": self.estimated_precision}
        if self._placebo_generator is not None:
            state["placebo_generator"] = self._placebo_generator.get_state()
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.estimated_precision = state.get("estimated_precision")
        self.thresholds.load_state_dict(state)
        if self._placebo_generator is not None and "placebo_generator" in state:
            self._placebo_generator.set_state(state["placebo_generator"])

    @property
    def gated(self) -> bool:
        """Whether the rule is held off because its estimated precision is below ``min_precision``."""
        return self.estimated_precision is not None and self.estimated_precision < self.min_precision

    def masked_images(self, spml_model: SPMLModel, images: Tensor, output, observed: Tensor) -> Tensor:
        """The images masked to the CAMs of their ``observed`` positives."""
        with torch.no_grad():
            masks = positive_masks(spml_model, output, observed, tuple(images.shape[-2:]), self.cam_threshold,
                                   self.cam_norm)
            return apply_masks(images, masks)

    def masked_logits(self, model: nn.Module, spml_model: SPMLModel, images: Tensor, output,
                      observed: Tensor) -> Tensor:
        """Logits of the images masked to their observed positive's CAM (detached)."""
        masked_images = self.masked_images(spml_model, images, output, observed)
        if self.reference:
            return model(masked_images).logits.detach()
        with torch.no_grad(), masked_pass_batchnorm(model, self.masked_bn):
            return model(masked_images).logits

    def probe_counts(self, model: nn.Module, spml_model: SPMLModel, images: Tensor, output, observed: Tensor,
                     flagged: Tensor) -> Tensor:
        """(3,) probes in the batch, probes the rule would reject, and the batch's flagged entries."""
        columns = probe_columns(observed, self.thresholds.steps)
        probes = columns >= 0
        hidden = observed.clone()
        hidden[probes, columns[probes]] = 0
        masked_images = self.masked_images(spml_model, images, output, hidden)
        # Batch statistics even where the rule's pass folds them into the buffers: the probe must not
        # change the training, nor draw from its random stream (dropout in a transformer head).
        devices = [images.device] if images.device.type == "cuda" else []
        mode = "batch" if self.masked_bn == "update" else self.masked_bn
        with torch.no_grad(), torch.random.fork_rng(devices=devices), masked_pass_batchnorm(model, mode):
            probe_logits = model(masked_images).logits.float()
        decisions = probe_decisions(output.logits.detach().float(), probe_logits, columns,
                                    self.thresholds.gap_threshold_tensor, self.thresholds.class_average)
        return torch.stack([probes.sum(), decisions.sum(), flagged.sum()]).float()

    def rejection_active(self, epoch: int) -> bool:
        """Whether the rule rejects in this step (called after the step's threshold update)."""
        if self.gated:
            return False
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
        active = self.rejection_active(epoch)
        if active and not self._rejecting:
            self._rejecting = True
            self._warn_if_unsettled()
        flagged = None
        if active or self.probes:  # the rule's decision: acted on, or only reported during the warm-up
            flagged = rejection_mask(detached, masked, observed, self.thresholds.gap_threshold_tensor,
                                     self.thresholds.class_average)
        rejected = flagged if active else torch.zeros_like(observed, dtype=torch.bool)
        if active and self._placebo_generator is not None:
            rejected = placebo_mask(flagged, observed, self._placebo_generator)
        counts = self.probe_counts(model, spml_model, images, output, observed, flagged) if self.probes else None
        loss, parts = calr_loss(logits, strong_logits, observed, rejected, self.weights, self.ran_views)
        return StepResult(loss=loss, logits=detached, rejected=rejected, parts=parts, probe_counts=counts)
