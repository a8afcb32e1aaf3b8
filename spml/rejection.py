"""The rejection rule of CALR: which unannotated labels are dropped from the loss.

An unannotated class c of image i is rejected when its logit moves a lot between the whole image and
the image masked to the annotated positive's region (its evidence lies elsewhere) AND its logit is
high for that class:  |z_ic - z^M_ic| > T_gap  and  z_ic > A_c.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def logit_gap(logits: Tensor, masked_logits: Tensor) -> Tensor:
    """g = |z - z^M| per image and class, on raw logits."""
    return (logits - masked_logits).abs()


def rejection_mask(
    logits: Tensor,
    masked_logits: Tensor,
    observed: Tensor,
    gap_threshold: float | Tensor,
    class_average: Tensor,
) -> Tensor:
    """Boolean (B, C): True where an unobserved entry is taken for a false negative.

    ``observed`` is 1 for the annotated positive, -1 for a known negative, 0 for unknown (a {0, 1}
    positive-only matrix works too). Only unknown entries can be rejected.
    """
    gap = logit_gap(logits, masked_logits)
    unknown = observed == 0
    return unknown & (gap > gap_threshold) & (logits > class_average.to(logits.device))


def placebo_mask(flagged: Tensor, observed: Tensor, generator: torch.Generator) -> Tensor:
    """Boolean (B, C): in each image as many unknown entries as ``flagged`` rejects there, drawn at random.

    The control of the rule's share: it drops as much of the loss as the rule does, but not the entries
    the rule chose. ``generator`` (a CPU generator) is its own random stream, so the training's is untouched."""
    unknown = observed == 0
    scores = torch.rand(observed.shape, generator=generator).to(observed.device)
    scores = torch.where(unknown, scores, torch.full_like(scores, -1.0))  # unknown entries first
    rank = scores.argsort(dim=1, descending=True).argsort(dim=1)
    return unknown & (rank < flagged.sum(dim=1, keepdim=True))


def probe_columns(observed: Tensor, turn: int) -> Tensor:
    """(B,) the annotated positive each image hides from the rule as its probe, -1 where an image has
    fewer than two: its ``turn mod count``-th positive in class order, so that every positive takes its
    turn without drawing a random number (the training's random stream stays as it was)."""
    positive = observed == 1
    counts = positive.sum(dim=1)
    rank = positive.long().cumsum(dim=1) - 1  # each positive's place among its image's positives
    chosen = positive & (rank == (turn % counts.clamp_min(1))[:, None])
    return torch.where(counts >= 2, chosen.to(torch.uint8).argmax(dim=1), torch.full_like(counts, -1))


def probe_decisions(logits: Tensor, probe_logits: Tensor, columns: Tensor, gap_threshold: float | Tensor,
                    class_average: Tensor) -> Tensor:
    """Boolean (P,): whether the rule would reject each probe, the images' positive hidden from the mask
    (``columns`` >= 0 rows only; ``probe_logits`` from those images masked to their other positives).

    A probe is a positive outside the masked region, as an unannotated positive is; the share the rule
    would reject samples its recall. ``gap_threshold`` is a number, a 0-d tensor or one per class."""
    rows = torch.nonzero(columns >= 0).squeeze(1)
    classes = columns[rows]
    z = logits[rows, classes]
    gap = (z - probe_logits[rows, classes]).abs()
    threshold = torch.as_tensor(gap_threshold, device=z.device)
    if threshold.dim() == 1:
        threshold = threshold[classes]
    return (gap > threshold) & (z > class_average.to(z.device)[classes])


def estimated_precision(probes: int, probes_flagged: int, flagged: int, expected_missing: float | None
                        ) -> float | None:
    """The rule's precision as the probes tell it: its recall on them times the positives that lack a
    label, over the entries it flags; at most 1. None without probes, flags or an expected count.

    ``expected_missing`` is the number of unannotated positives the flagged entries were drawn from
    (images seen times expected labels per image, minus the annotated positives)."""
    if probes == 0 or flagged == 0 or expected_missing is None:
        return None
    return min(1.0, probes_flagged / probes * max(expected_missing, 0.0) / flagged)


class RunningThresholds:
    """The two exponential moving averages of the rule, updated every training step.

    - ``gap_threshold`` (T_gap): average over the batch's observed positives of their logit gap;
    - ``class_average`` (A_c): per class, average over the batch of the logit z_c.

    Defaults follow the reference: momentum 0.999, both start at 0, no bias correction (so they
    climb slowly from 0 during warm-up). ``bias_correction=True`` divides by ``1 - m**t`` as Adam
    does. A step whose batch has no observed positive leaves T_gap unchanged (the reference would
    average an empty set and turn it into NaN for good). Under torch.distributed the batch averages
    are taken over the global batch, so every rank holds the same thresholds.

    ``per_class_gap=True`` keeps one gap threshold per class, averaged over that class's observed
    positives only (a class absent from a batch keeps its value); ``gap_threshold_tensor`` is then a
    (C,) tensor and ``gap_threshold`` its mean.
    """

    def __init__(self, num_classes: int, momentum: float = 0.999, bias_correction: bool = False,
                 device: torch.device | str | None = None, per_class_gap: bool = False):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.num_classes = num_classes
        self.momentum = momentum
        self.bias_correction = bias_correction
        self.per_class_gap = per_class_gap
        gap_shape = (num_classes,) if per_class_gap else ()
        self._gap = torch.zeros(gap_shape, device=device)
        self._class_average = torch.zeros(num_classes, device=device)
        self._gap_steps = torch.zeros(gap_shape, device=device)
        self._average_steps = torch.zeros((), device=device)

    @torch.no_grad()
    def update(self, logits: Tensor, masked_logits: Tensor, observed: Tensor) -> RunningThresholds:
        positives = observed == 1
        gaps = logit_gap(logits.float(), masked_logits.float()) * positives
        if self.per_class_gap:  # each class's gaps over its own positives
            gap_sums, positive_counts = gaps.sum(dim=0), positives.sum(dim=0).float()
        else:  # one threshold: every positive of the batch
            gap_sums, positive_counts = gaps.sum()[None], positives.sum()[None].float()
        # One vector for one all-reduce: [gap sums (G), positive counts (G), logit sums (C), image count].
        stats = torch.cat([
            gap_sums,
            positive_counts,
            logits.float().sum(dim=0),
            torch.tensor([float(logits.shape[0])], device=logits.device),
        ]).to(self._gap.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        g = gap_sums.numel()
        shape = self._gap.shape  # () for one threshold, (C,) per class
        gap_sums, positive_counts = stats[:g].reshape(shape), stats[g:2 * g].reshape(shape)
        logit_sums, image_count = stats[2 * g:-1], stats[-1]
        has_positive = positive_counts > 0
        batch_gap = gap_sums / positive_counts.clamp_min(1.0)
        m = self.momentum
        self._gap = torch.where(has_positive, m * self._gap + (1 - m) * batch_gap, self._gap)
        self._gap_steps = self._gap_steps + has_positive.float()
        self._class_average = m * self._class_average + (1 - m) * logit_sums / image_count
        self._average_steps = self._average_steps + 1
        return self

    @property
    def steps(self) -> int:
        """Updates so far (every training step makes one)."""
        return int(self._average_steps)

    @property
    def settled_fraction(self) -> float:
        """How much of its settled value the smaller of T_gap and A_c holds in the rule now.

        An uncorrected average started at 0 holds ``1 - m**t`` of it after t updates (0.07 after 76
        steps at m = 0.999); a bias-corrected one holds all of it from the first update on."""
        if self.bias_correction:
            return 1.0 if self.steps > 0 else 0.0
        gap_steps = float(self._gap_steps.min())  # per-class gaps: the class seen least
        return float(1 - self.momentum ** min(gap_steps, float(self._average_steps)))

    def _unbiased(self, value: Tensor, steps: Tensor) -> Tensor:
        """``value`` divided by ``1 - m**steps`` where it has been updated: the settled estimate."""
        return torch.where(steps > 0, value / (1 - self.momentum ** steps), value)

    def _corrected(self, value: Tensor, steps: Tensor) -> Tensor:
        return self._unbiased(value, steps) if self.bias_correction else value

    @property
    def gap_threshold_tensor(self) -> Tensor:
        """T_gap as a 0-d tensor on the thresholds' device (no host synchronisation)."""
        return self._corrected(self._gap, self._gap_steps)

    @property
    def gap_threshold(self) -> float:
        """T_gap (with per-class gaps: their mean, a summary for display)."""
        return float(self.gap_threshold_tensor.mean())

    @property
    def settled_gap_threshold(self) -> float:
        """T_gap as its settled (bias-corrected) estimate, whatever the rule uses: a diagnostic."""
        return float(self._unbiased(self._gap, self._gap_steps).mean())

    @property
    def settled_class_average(self) -> Tensor:
        """A_c as its settled (bias-corrected) estimate, whatever the rule uses: a diagnostic."""
        return self._unbiased(self._class_average, self._average_steps)

    @property
    def class_average(self) -> Tensor:
        return self._corrected(self._class_average, self._average_steps)

    def to(self, device: torch.device | str) -> RunningThresholds:
        for name in ("_gap", "_class_average", "_gap_steps", "_average_steps"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers only, so that the state fits in config.json as well as a resume file.

        With per-class gaps, ``raw_gap`` and ``gap_steps`` are lists, ``gap_thresholds`` holds each
        class's T_gap and ``gap_threshold`` their mean."""
        state: dict[str, Any] = {
            "num_classes": self.num_classes,
            "momentum": self.momentum,
            "bias_correction": self.bias_correction,
            "raw_gap": self._gap.tolist(),
            "raw_class_average": [float(v) for v in self._class_average.cpu()],
            "gap_steps": [int(v) for v in self._gap_steps.cpu()] if self.per_class_gap else int(self._gap_steps),
            "average_steps": int(self._average_steps),
            "gap_threshold": self.gap_threshold,
            "class_average": [float(v) for v in self.class_average.cpu()],
        }
        if self.per_class_gap:
            state["per_class_gap"] = True
            state["gap_thresholds"] = self.gap_threshold_tensor.tolist()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> RunningThresholds:
        if len(state["raw_class_average"]) != self.num_classes:
            raise ValueError(
                f"thresholds for {len(state['raw_class_average'])} classes cannot load into {self.num_classes}")
        if bool(state.get("per_class_gap", False)) != self.per_class_gap:
            raise ValueError("per-class gap thresholds cannot load into global ones, nor the other way round")
        device = self._gap.device
        self.momentum = float(state["momentum"])
        self.bias_correction = bool(state["bias_correction"])
        self._gap = torch.tensor(state["raw_gap"], dtype=torch.float32, device=device)
        self._class_average = torch.tensor(state["raw_class_average"], dtype=torch.float32, device=device)
        self._gap_steps = torch.tensor(state["gap_steps"], dtype=torch.float32, device=device)
        self._average_steps = torch.tensor(float(state["average_steps"]), device=device)
        return self

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device | str | None = None) -> RunningThresholds:
        thresholds = cls(int(state["num_classes"]), float(state["momentum"]), bool(state["bias_correction"]), device,
                         per_class_gap=bool(state.get("per_class_gap", False)))
        return thresholds.load_state_dict(state)
