"""One epoch of training and one evaluation pass: what ``train fit`` repeats each epoch, and what
``train bench-method`` runs in memory. DDP-aware: statistics are summed over the ranks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from spml.data import ImageDataset, Split, eval_transform
from spml.data.dataset import BrokenImage, SkipBrokenImages, collate_skipping_broken
from spml.data.transforms import input_normalization
from spml.losses import CALR, Objective
from spml.losses.base import StepResult
from spml.metrics import mean_average_precision, scorable_classes
from spml.rejection import estimated_precision
from spml.runtime import DistInfo
from train import distributed
from train.config import TrainConfig

log = logging.getLogger("train")


def collate_skipping_none(items: list[dict[str, Any] | BrokenImage]) -> dict[str, torch.Tensor] | None:
    """The batch of the decoded images (None when none is left); broken ones are logged and dropped."""
    batch, broken = collate_skipping_broken(items)
    for item in broken:
        log.warning("skipping a broken image: %s", item.message)
    return batch


@dataclass
class EpochStats:
    loss: float
    parts: dict[str, float]
    images: int
    seconds: float
    rejected: int
    rejected_true: int | None  # rejected entries that are real labels (None: full labels unknown)
    unknown_entries: int
    annotated: int = 0  # annotated positives seen
    probes: int = 0  # CALR's probes (see spml.rejection.probe_columns) and how many the rule flagged
    probes_flagged: int = 0
    flagged: int = 0  # unknown entries the rule flagged, whether it acted (rejected) or not (warm-up)

    @property
    def rejection_precision(self) -> float | None:
        if self.rejected_true is None or self.rejected == 0:
            return None
        return self.rejected_true / self.rejected


def to_device(batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool) -> dict[str, torch.Tensor]:
    """The batch's tensors on ``device`` (non-blocking), its images (4-D) channels-last when asked."""
    moved = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        if channels_last and value.dim() == 4:
            value = value.contiguous(memory_format=torch.channels_last)
        moved[key] = value
    return moved


def steps_per_epoch(loader: DataLoader, config: TrainConfig) -> int:
    """Batches an epoch runs: the whole loader, or ``max_steps_per_epoch`` of it for smoke runs."""
    if config.max_steps_per_epoch is None:
        return len(loader)
    return min(len(loader), config.max_steps_per_epoch)


def train_one_epoch(model: nn.Module, objective: Objective, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None, epoch: int, device: torch.device,
                    config: TrainConfig, info: DistInfo, full_labels_known: bool,
                    on_step: Callable[[int, float, list[float]], None] | None = None) -> EpochStats:
    """One pass over ``loader``. ``on_step(step, loss, learning rates)`` is called after each optimizer
    step (``step`` counted from 0 in the epoch; the rates those of the step, before the scheduler moves
    them): the run's TensorBoard curves."""
    model.train()
    objective.train()
    amp = bool(config.amp)
    channels_last = bool(config.channels_last)
    # loss sum, batches, rejected, rejected true positives, annotated positives, probes, probes flagged, flagged
    totals = torch.zeros(8, device=device)
    part_totals: dict[str, torch.Tensor] = {}
    unknown = torch.zeros((), device=device)
    images = 0
    start = time.perf_counter()
    steps = steps_per_epoch(loader, config)
    bar = tqdm(total=steps, desc=f"epoch {epoch}/{config.epochs}", unit="batch", disable=not info.is_main,
               dynamic_ncols=True, leave=False)
    objective_parameters = list(objective.parameters())
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        skip = batch is None  # every image of the batch was broken and skipped
        if config.skip_bad:
            # Every rank skips when one must: a rank that skipped alone would miss the collectives of
            # the step (DDP's gradient all-reduce, the running thresholds') and the others would wait.
            skip = distributed.any_rank(info, skip, device)
        if skip:
            if info.enabled and info.is_main:
                log.warning("step %d skipped on every rank: a rank's whole batch was broken", step)
            bar.update(1)
            continue
        batch = to_device(batch, device, channels_last)
        # Autocast reaches the backbone only: the models run their heads, logits and maps in float32.
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            result: StepResult = objective.step(model, batch, epoch)
        optimizer.zero_grad(set_to_none=True)
        result.loss.float().backward()
        distributed.average_gradients(info, objective_parameters)
        optimizer.step()
        if on_step is not None:
            on_step(step, float(result.loss.detach()), [group["lr"] for group in optimizer.param_groups])
        if scheduler is not None:
            scheduler.step()
        totals[0] += result.loss.detach().float()
        totals[1] += 1
        unknown += (batch["observed"] == 0).sum()
        totals[4] += (batch["observed"] == 1).sum()
        if result.probe_counts is not None:
            totals[5:8] += result.probe_counts
        if result.rejected is not None:
            totals[2] += result.rejected.sum()
            totals[3] += (result.rejected & (batch["labels"] > 0)).sum()
        for name, value in result.parts.items():
            part_totals[name] = part_totals.get(name, torch.zeros((), device=device)) + value.float()
        images += batch["image"].shape[0]
        bar.update(1)
        if info.is_main and (step % config.log_every == 0 or step == steps - 1):
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{float(totals[0] / totals[1].clamp_min(1)):.4f}",
                            img_s=f"{images * info.world_size / max(elapsed, 1e-9):.1f}")
    bar.close()
    names = sorted(part_totals)
    packed = torch.cat([totals, unknown[None], torch.stack([part_totals[n] for n in names]) if names
                        else torch.zeros(0, device=device)])
    packed = distributed.all_reduce_sum(info, packed)
    batches = max(float(packed[1]), 1.0)
    images_seen = int(distributed.all_reduce_sum(info, torch.tensor([images], device=device))[0])
    return EpochStats(
        loss=float(packed[0]) / batches,
        parts={name: float(packed[9 + i]) / batches for i, name in enumerate(names)},
        images=images_seen,
        seconds=time.perf_counter() - start,
        rejected=int(packed[2]),
        rejected_true=int(packed[3]) if full_labels_known else None,
        unknown_entries=int(packed[8]),
        annotated=int(packed[4]),
        probes=int(packed[5]),
        probes_flagged=int(packed[6]),
        flagged=int(packed[7]),
    )


@torch.inference_mode()
def predict(network: nn.Module, loader: DataLoader, device: torch.device, amp: bool = False,
            channels_last: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores and full labels of every image the loader yields, in loader order."""
    network.eval()
    scores, labels = [], []
    for batch in loader:
        if batch is None:
            continue
        images = batch["image"].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            logits = network(images).logits
        scores.append(torch.sigmoid(logits.float()).cpu().numpy())
        labels.append(batch["labels"].numpy())
    if not scores:
        return np.zeros((0, 0)), np.zeros((0, 0))
    return np.concatenate(scores), np.concatenate(labels)


def evaluate(network: nn.Module, split: Split, config: TrainConfig, device: torch.device,
             info: DistInfo = DistInfo()) -> float:
    """Clean-label mAP of ``network`` on ``split``; under DDP each rank scores a shard."""
    dataset = ImageDataset(split, eval_transform(config.image_size, *input_normalization(network), config.resize))
    indices = list(range(info.rank, len(dataset), info.world_size))
    source = SkipBrokenImages(dataset) if config.skip_bad else dataset
    loader = DataLoader(Subset(source, indices), batch_size=config.eval_batch_size or config.batch_size,
                        shuffle=False, num_workers=config.workers, collate_fn=collate_skipping_none,
                        pin_memory=device.type == "cuda")
    scores, labels = predict(network, loader, device, bool(config.amp), bool(config.channels_last))
    shards = distributed.all_gather_objects(info, (scores, labels))
    all_scores = np.concatenate([s for s, _ in shards if s.size])
    all_labels = np.concatenate([t for _, t in shards if t.size])
    # Over the classes with a positive and a negative in the split (on a full benchmark split, every
    # class); a split too small to hold one (a smoke run's) is scored over all classes, as the protocol.
    return mean_average_precision(all_scores, all_labels, scorable_only=bool(scorable_classes(all_labels).any()))


def calr_thresholds(objective: Objective):
    """CALR's running thresholds (T_gap, A_c); None for the other losses."""
    return objective.thresholds if isinstance(objective, CALR) else None


def expected_labels(config: TrainConfig, train_split: Split) -> float | None:
    """Labels per training image: ``--expected-positives`` when given, else the mean of the split's
    full labels where it has them (a synthetic or converted set), else unknown (None)."""
    if config.expected_positives is not None:
        return float(config.expected_positives)
    return float(train_split.labels.sum(axis=1).mean()) if train_split.has_hidden_labels else None


def rejection_diagnostics(objective: Objective, stats: EpochStats, train_split: Split | None,
                          expected_positives: float | None = None) -> dict[str, Any]:
    """CALR's metrics.csv columns that tell early whether the rule misbehaves (empty for other losses).

    ``rejection_recall``: rejected real labels over the hidden positives of ``train_split``, which the
    epoch saw in full (None without the split or its full labels); ``averages_held``: the share of
    their settled value that T_gap and A_c hold in the rule (1 - m^t without bias correction:
    rejecting while it is small rejects nearly everything); the ``*_settled`` columns are the
    bias-corrected values the averages are heading for. With probes (several annotated positives):
    ``probes``, ``probe_recall`` (the share of them the rule would reject) and ``estimated_precision``
    (:func:`spml.rejection.estimated_precision`, which needs ``expected_positives``, labels per image),
    which it also hands to the objective: its ``min_precision`` gate reads it in the next epoch."""
    thresholds = calr_thresholds(objective)
    if thresholds is None:
        return {}
    recall = None
    if train_split is not None and train_split.has_hidden_labels and stats.rejected_true is not None:
        hidden = int(((train_split.observed == 0) & (train_split.labels > 0)).sum())
        recall = round(stats.rejected_true / hidden, 4) if hidden else None
    probe_recall = estimate = None
    if stats.probes:
        probe_recall = round(stats.probes_flagged / stats.probes, 4)
        missing = None if expected_positives is None else expected_positives * stats.images - stats.annotated
        estimate = estimated_precision(stats.probes, stats.probes_flagged, stats.flagged, missing)
    objective.estimated_precision = estimate  # the gate of the next epoch reads it (min_precision)
    return {"rejection_recall": recall, "probes": stats.probes, "probe_recall": probe_recall,
            "estimated_precision": None if estimate is None else round(estimate, 4),
            "averages_held": round(thresholds.settled_fraction, 4),
            "gap_threshold_settled": round(thresholds.settled_gap_threshold, 6),
            "class_average_mean": round(float(thresholds.class_average.mean()), 6),
            "class_average_settled_mean": round(float(thresholds.settled_class_average.mean()), 6)}
