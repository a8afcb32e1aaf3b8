"""A training run: ``fit`` builds it (network, objective, optimizer, schedule), trains it epoch by epoch
(:mod:`train.loop`), keeps the best checkpoint by clean-validation mAP, resumes it after a kill, and
tests and calibrates the best model at the end. DDP-aware."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from spml.checkpoint import LoadedModel, save_checkpoint
from spml.data import ImageDataset, Split, load_dataset, strong_transform, weak_transform
from spml.data.dataset import SkipBrokenImages
from spml.data.transforms import input_normalization
from spml.losses import Objective, create_objective
from spml.model import SPMLModel, create_model
from spml.runtime import DistInfo, atomic_path, atomic_write_text, close_distributed, init_distributed, resolve_device
from train import distributed
from train.board import RunBoard, cam_grid, grid_images
from train.config import TrainConfig, check_paths
from train.fold_split import without_fold
from train.loop import (
    calr_thresholds,
    collate_skipping_none,
    evaluate,
    expected_labels,
    rejection_diagnostics,
    steps_per_epoch,
    train_one_epoch,
)

log = logging.getLogger("train")
STATE_NAME = "state.pt"
# Options that may differ between the run that started and the command that resumes it.
_RESUMABLE_DIFFERENCES = {"out", "device", "workers", "log_every", "eval_batch_size", "tensorboard", "export",
                          "export_half"}


def build_optimizer(config: TrainConfig, network: SPMLModel, objective: Objective) -> torch.optim.Optimizer:
    backbone, head = network.parameter_groups()
    head_lr = config.lr * config.head_lr_multiplier
    groups = [{"params": [p for p in backbone if p.requires_grad], "lr": config.lr},
              {"params": [p for p in head if p.requires_grad] + list(objective.parameters()), "lr": head_lr}]
    optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(groups, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    if config.schedule == "none":
        return None
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=max(1, config.epochs * steps_per_epoch), pct_start=config.warmup_fraction)


def build_objective(config: TrainConfig, train_split: Split) -> Objective:
    options = dict(config.loss_options)
    if config.loss == "calr":
        options.setdefault("cam_threshold", config.cam_threshold)
        options.setdefault("cam_norm", config.cam_norm)
        options.setdefault("warmup_epochs", config.warmup_epochs)
        # Probes need an image with two annotated positives; the same answer on every rank.
        positives = (train_split.observed == 1).sum(axis=1)
        options.setdefault("probes", bool(positives.size and positives.max() >= 2))
    expected = config.expected_positives
    if expected is None and config.loss in ("epr", "role"):
        expected = float(train_split.labels.sum(axis=1).mean())
        log.info("expected positives per image not given: using the training labels' mean, %.2f", expected)
    return create_objective(config.loss, train_split.labels.shape[1],
                            train_observed=torch.from_numpy(train_split.observed.astype(np.int8)),
                            expected_positives=expected, **options)


def rejection_hints(config: TrainConfig, train_split: Split) -> list[str]:
    """Where the benchmark measured the CALR rule costing accuracy, said for this run's log (``config``
    validated, so that its CALR options are resolved): several annotated positives per image (1.9 on the
    ``partial`` world; 1.5 is half-way from single-positive data) where the run has a gate but no label
    count for its estimate, and a batch of 4 or fewer. Advice only: nothing about the run is changed."""
    warmup = int(config.loss_options.get("warmup_epochs", config.warmup_epochs))
    if config.loss != "calr" or warmup >= config.epochs:
        return []
    hints = []
    positives = float((train_split.observed == 1).sum(axis=1).mean()) if len(train_split.observed) else 0.0
    gate = float(config.loss_options.get("min_precision", 0.0))
    if positives >= 1.5 and gate > 0 and expected_labels(config, train_split) is None:
        hints.append(f"{positives:.1f} annotated positives per training image and no label count: without "
                     "--expected-positives (labels per image) the probes cannot estimate the rule's precision, "
                     "so its gate never closes; ungated, the rule cost 2.9 mAP on the benchmark's "
                     "several-positives world trained from scratch (three seeds)")
    if config.batch_size <= 4:
        hints.append(f"batch {config.batch_size}: at batch 4 CALR lost to AN by 1.8 mAP in the benchmark (the "
                     "rule rejected at precision 0.38); compare with --loss an or a larger batch")
    return hints


def early_stop_reached(best_val_map: float, val_map: float, drop: float | None) -> bool:
    """The public codes' rule: stop once validation mAP falls more than ``drop`` points below the
    best so far (CALR: 2, Large-Loss: 3); ``None`` never stops."""
    return drop is not None and best_val_map - val_map > drop


def per_process_batch(batch_size: int, world_size: int) -> int:
    """The recipe's ``batch_size`` is the global batch: each of the ``world_size`` processes loads its share."""
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} is the global batch and must divide evenly among the "
                         f"{world_size} processes of this run; choose a multiple of {world_size}")
    return batch_size // world_size


def prepare_network(network: SPMLModel, config: TrainConfig, info: DistInfo, device: torch.device) -> SPMLModel:
    """Channels-last and, under torchrun with ``sync_bn``, BatchNorm statistics over the global batch."""
    if config.sync_bn and info.enabled:
        if device.type != "cuda":
            raise ValueError("sync_bn needs CUDA devices (PyTorch's SyncBatchNorm does not run on the CPU); "
                             "drop sync_bn or train on GPUs")
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    if config.channels_last:
        network = network.to(memory_format=torch.channels_last)
    return network


@dataclass
class RunState:
    """What a resumed run needs besides the weights: where it stopped and how it went so far."""

    epoch: int = 0
    best_val_map: float = -1.0
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_epoch: int | None = None  # the epoch after which the early stop ended training


def _atomic_torch_save(payload: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    columns = list(history[0])
    with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in history:
            writer.writerow({key: ("" if row.get(key) is None else row[key]) for key in columns})


def _check_same_run(run: Path, config: TrainConfig) -> None:
    saved_path = run / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    current = config.to_dict()
    # An option added since the run started counts as its default there.
    defaults = TrainConfig(data="-", out="-").to_dict()
    differences = sorted(key for key in current if key not in _RESUMABLE_DIFFERENCES
                         and saved.get(key, defaults[key]) != current[key])
    if differences:
        detail = ", ".join(f"{key}: {saved.get(key)!r} -> {current[key]!r}" for key in differences)
        raise ValueError(f"{run} holds a run with other settings ({detail}); resume it with the same "
                         "settings or choose another --out")


def _training_summary(config: TrainConfig, state: RunState, dataset_name: str) -> dict[str, Any]:
    return {"dataset": dataset_name, "loss": config.loss, "arch": config.arch, "epochs": config.epochs,
            "seed": config.seed, "image_size": config.image_size, "best_val_map": state.best_val_map,
            "best_epoch": state.best_epoch}


def fit(config: TrainConfig) -> dict[str, Any]:
    """Train, select by clean-validation mAP, test the best model; resume from ``config.out``."""
    check_paths(config)
    device = resolve_device(config.device)
    info = init_distributed(device.type)
    if config.amp is None:
        config.amp = device.type == "cuda"
    if config.channels_last is None:
        config.channels_last = device.type == "cuda"
    run = Path(config.out)
    try:
        return _fit(config, device, info, run)
    finally:
        close_distributed(info)


def initialize_from(source: str, network: SPMLModel, objective: Objective, classes: list[str]) -> None:
    """Load the weights of checkpoint ``source`` into ``network`` and, where both are CALR's, its running
    thresholds into ``objective``: a fine-tune starts where that model ended. A ValueError names a
    checkpoint of other classes or another architecture."""
    from spml.checkpoint import load_model

    loaded = load_model(source)
    if loaded.classes != classes:
        raise ValueError(f"init_from {source}: its {len(loaded.classes)} classes differ from the data set's "
                         f"{len(classes)} (or their order)")
    try:
        network.load_state_dict(loaded.network.state_dict())
    except RuntimeError as error:
        raise ValueError(f"init_from {source}: its weights do not fit this architecture ({error})") from None
    thresholds = calr_thresholds(objective)
    carried = thresholds is not None and loaded.thresholds is not None
    if carried:
        thresholds.load_state_dict(loaded.thresholds.state_dict())
    log.info("starting from the weights%s of %s", " and running thresholds" if carried else "", source)


def _fit(config: TrainConfig, device: torch.device, info: DistInfo, run: Path) -> dict[str, Any]:
    dataset = load_dataset(config.data, skip_bad=config.skip_bad, single_positive=config.single_positive)
    train_split, val_split = dataset.split("train"), dataset.split("val")
    if config.fold is not None:
        train_split = without_fold(train_split, dataset.root, config.folds_file, config.fold)
    test_split = dataset.splits.get("test")
    for split in (train_split, val_split):
        for message in split.skipped:
            log.warning("skipped: %s", message)
    if info.is_main:
        run.mkdir(parents=True, exist_ok=True)
        _check_same_run(run, config)
        atomic_write_text(run / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    distributed.barrier(info)
    summary_path = run / "summary.json"
    if summary_path.is_file():
        log.info("%s already finished; its summary: %s", run, summary_path)
        return json.loads(summary_path.read_text())

    torch.manual_seed(config.seed)
    num_classes = len(dataset.classes)
    network = create_model(config.arch, num_classes, pretrained=config.pretrained, **config.arch_options).to(device)
    network = prepare_network(network, config, info, device)
    objective = build_objective(config, train_split).to(device)
    state_path = run / STATE_NAME
    if config.init_from and not state_path.is_file():
        initialize_from(config.init_from, network, objective, dataset.classes)
    mean, std = input_normalization(network)
    train_set = ImageDataset(train_split, weak_transform(config.image_size, mean, std, config.resize),
                             strong_transform(config.image_size, mean, std, config.resize)
                             if objective.needs_strong_view else None)
    source = SkipBrokenImages(train_set) if config.skip_bad else train_set
    sampler = DistributedSampler(source, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=config.seed) if info.enabled else None
    generator = torch.Generator()
    loader = DataLoader(source, batch_size=per_process_batch(config.batch_size, info.world_size),
                        shuffle=sampler is None, sampler=sampler,
                        num_workers=config.workers, collate_fn=collate_skipping_none, generator=generator,
                        pin_memory=device.type == "cuda")
    optimizer = build_optimizer(config, network, objective)
    scheduler = build_scheduler(config, optimizer, steps_per_epoch(loader, config))
    model: nn.Module = DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None) \
        if info.enabled else network

    state = RunState()
    if state_path.is_file():
        # weights_only: a restricted unpickler that only rebuilds tensors and plain containers.
        saved = torch.load(state_path, map_location=device, weights_only=True)
        network.load_state_dict(saved["model"])
        objective.load_state_dict(saved["objective"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        state = RunState(**saved["run"])
        log.info("resuming %s after epoch %d (best val mAP %.2f at epoch %d)", run, state.epoch,
                 state.best_val_map, state.best_epoch)

    log.info("training %s/%s on %s: %d train, %d val images, %d classes, %s, world size %d, batch %d "
             "(%d per process), %d steps per epoch", config.arch, config.loss, config.data, len(train_split.images),
             len(val_split.images), num_classes, device, info.world_size, config.batch_size, loader.batch_size,
             steps_per_epoch(loader, config))
    for hint in rejection_hints(config, train_split):
        log.info("note: %s", hint)
    full_labels_known = train_split.has_hidden_labels
    labels_per_image = expected_labels(config, train_split)  # the probes' estimate needs it every epoch
    dataset_name = Path(config.data).name
    first_epoch = config.epochs + 1 if state.stopped_epoch is not None else state.epoch + 1
    epoch_steps = steps_per_epoch(loader, config)
    board = RunBoard.open(run, state.epoch * epoch_steps + 1) if config.tensorboard and info.is_main else None
    picks = grid_images(val_split) if board is not None else []
    for epoch in range(first_epoch, config.epochs + 1):
        # Shuffling and augmentation are seeded per epoch, so a resumed epoch replays identically.
        torch.manual_seed(config.seed * 1000 + epoch)
        generator.manual_seed(config.seed * 1000 + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        before = (epoch - 1) * epoch_steps
        on_step = None if board is None else (
            lambda step, loss, rates, before=before: board.step(before + step + 1, loss, rates))
        stats = train_one_epoch(model, objective, loader, optimizer, scheduler, epoch, device, config, info,
                                full_labels_known, on_step)
        objective.synchronize()
        val_map = evaluate(network, val_split, config, device, info)
        thresholds = calr_thresholds(objective)
        row = {"epoch": epoch, "train_loss": round(stats.loss, 6),
               **{f"loss_{name}": round(value, 6) for name, value in stats.parts.items()},
               "val_map": round(val_map, 4), "rejected": stats.rejected, "rejected_true": stats.rejected_true,
               "rejection_precision": None if stats.rejection_precision is None
               else round(stats.rejection_precision, 4),
               "rejected_fraction_of_unknown": round(stats.rejected / max(stats.unknown_entries, 1), 6),
               "gap_threshold": None if thresholds is None else round(thresholds.gap_threshold, 6),
               **rejection_diagnostics(objective, stats, None if config.max_steps_per_epoch else train_split,
                                       labels_per_image),
               "lr": optimizer.param_groups[0]["lr"], "seconds": round(stats.seconds, 2),
               "images_per_s": round(stats.images / max(stats.seconds, 1e-9), 2)}
        state.history.append(row)
        state.epoch = epoch
        if board is not None:
            board.epoch(epoch * epoch_steps, row, None if thresholds is None else thresholds.class_average)
            if picks:
                board.cams(epoch * epoch_steps, cam_grid(_loaded(network, dataset.classes, config, thresholds, {}),
                                                         picks))
        if info.is_main:
            if val_map > state.best_val_map:
                state.best_val_map, state.best_epoch = val_map, epoch
                # The best checkpoint keeps the thresholds of its own epoch, which describe its weights.
                save_checkpoint(_loaded(network, dataset.classes, config, thresholds,
                                        _training_summary(config, state, dataset_name)), run / "best")
            elif early_stop_reached(state.best_val_map, val_map, config.early_stop_drop):
                state.stopped_epoch = epoch
            _atomic_torch_save({"model": network.state_dict(), "objective": objective.state_dict(),
                                "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                                "run": state.__dict__}, state_path)
            _write_metrics(run / "metrics.csv", state.history)
            log.info("epoch %d: loss %.4f, val mAP %.2f (best %.2f @ %d), rejected %d%s, %.1f img/s", epoch,
                     stats.loss, val_map, state.best_val_map, state.best_epoch, stats.rejected,
                     "" if row["rejection_precision"] is None else f" (precision {row['rejection_precision']:.3f})",
                     row["images_per_s"])
            estimate = row.get("estimated_precision")
            if estimate is not None:
                log.info("epoch %d: the rule would reject %d of %d probes (hidden annotated positives); "
                         "estimated precision %.3f", epoch, stats.probes_flagged, stats.probes, estimate)
                if objective.gated and epoch < config.epochs:
                    log.info("the rule stays off in the next epoch: its estimated precision %.3f is below "
                             "min_precision %g", estimate, objective.min_precision)
                if estimate < 0.5 and stats.rejected:
                    if config.pretrained:  # ungated by default there, where the benchmark saw it pay
                        log.info("the rule's estimated precision is %.2f (below 0.5); with ImageNet features the "
                                 "benchmark's ungated rule gained at a precision of 0.14 to 0.56 with several "
                                 "positives (docs/method.md); to check on your data compare a run with "
                                 "--warmup-epochs %d (the rule off) on your validation split", estimate,
                                 config.epochs)
                    else:
                        log.warning("the rejection rule is guessing: its estimated precision is %.2f (below 0.5), "
                                    "so most entries it drops are likely true negatives; compare a run with "
                                    "--warmup-epochs %d (the rule off) on your validation split", estimate,
                                    config.epochs)
        state = distributed.broadcast_object(info, state)
        distributed.barrier(info)
        if state.stopped_epoch is not None:
            log.info("early stop after epoch %d: val mAP %.2f is more than %g below the best, %.2f at epoch %d",
                     epoch, val_map, config.early_stop_drop, state.best_val_map, state.best_epoch)
            break
    summary = _finish(config, test_split, state, device, info, run, dataset_name, board, state.epoch * epoch_steps)
    if board is not None:  # each epoch's events are flushed as written: a failed run keeps its curves
        board.close()
    return summary


def _loaded(network: SPMLModel, classes: list[str], config: TrainConfig, thresholds, training: dict) -> LoadedModel:
    mean, std = input_normalization(network)
    return LoadedModel(network=network, classes=list(classes), image_size=config.image_size, mean=mean,
                       std=std, cam_norm=config.cam_norm, cam_threshold=config.cam_threshold,
                       thresholds=thresholds, training=training, resize=config.resize)


def _finish(config: TrainConfig, test_split: Split | None, state: RunState, device: torch.device,
            info: DistInfo, run: Path, dataset_name: str, board: RunBoard | None = None,
            last_step: int = 0) -> dict[str, Any]:
    from spml.checkpoint import load_model
    from spml.familiarity import calibrate_checkpoint

    best = load_model(run / "best", device=device)
    test_map = evaluate(best.network, test_split, config, device, info) if test_split is not None else None
    summary = {**_training_summary(config, state, dataset_name), "test_map": test_map,
               "stopped_early_after_epoch": state.stopped_epoch, "data": str(config.data),
               "checkpoint": str(run / "best")}
    last = state.history[-1] if state.history else {}
    precisions = [row["rejection_precision"] for row in state.history if row.get("rejection_precision") is not None]
    summary["final_rejection_precision"] = last.get("rejection_precision")
    summary["mean_rejection_precision"] = float(np.mean(precisions)) if precisions else None
    if board is not None and test_map is not None:
        board.test(last_step, test_map)
    if info.is_main:
        best.training.update({"test_map": test_map})
        save_checkpoint(best, run / "best")
        # The training images' feature statistics: the app tells images of another world by them. A
        # failure here leaves the run finished (its best checkpoint tested) with the error named.
        try:
            calibrate_checkpoint(run / "best", best, [config.data, *config.calibration_data], "train",
                                 progress=False, log=log.info)
        except (OSError, ValueError) as error:
            summary["calibration_error"] = str(error)
            log.error("the run is finished, but the other-world statistics could not be written: %s", error)
        atomic_write_text(run / "summary.json", json.dumps(summary, indent=2) + "\n")
        log.info("done: best val mAP %.2f at epoch %d, test mAP %s", state.best_val_map, state.best_epoch,
                 "n/a" if test_map is None else f"{test_map:.2f}")
    distributed.barrier(info)
    return summary


def export_run(run: Path, destination: Path, half: bool = False) -> None:
    """Copy a finished run's best checkpoint, summary and metrics to ``destination``; ``half`` stores
    the weights in float16."""
    destination.mkdir(parents=True, exist_ok=True)
    if half:
        from spml.checkpoint import load_model

        save_checkpoint(load_model(run / "best"), destination, dtype=torch.float16)
    else:
        for name in ("model.safetensors", "config.json"):
            shutil.copy2(run / "best" / name, destination / name)
    for name in ("summary.json", "metrics.csv", "config.yaml"):
        if (run / name).is_file():
            shutil.copy2(run / name, destination / (name if name != "config.yaml" else "train_config.yaml"))

