"""Runs the sweep: each (world, seed, method) trained and tested through the trainer's own pieces,
resumable from ``runs.json``; and the ``python -m train bench-method`` command line."""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from spml.data import Split
from spml.data.transforms import eval_transform, input_normalization, strong_transform, weak_transform
from spml.metrics import mean_average_precision
from spml.runtime import DistInfo, atomic_write_text
from train.bench_method.results import RunResult, has_separability, markdown_tables, write_outputs
from train.bench_method.separability import rule_scores, separation, split_logits
from train.bench_method.worlds import (
    COCO_WORLDS,
    DEFAULT_COCO,
    DEFAULT_METHODS,
    DEFAULT_PHOTOS,
    DEFAULT_SEEDS,
    EXTRA_WORLDS,
    METHODS,
    PHOTO_WORLDS,
    QUICK_WORLDS,
    WORLDS,
    BenchWorld,
    WorldData,
    render_world,
)
from train.engine import build_objective, build_optimizer, prepare_network
from train.loop import expected_labels, predict, rejection_diagnostics, train_one_epoch


class InMemoryImages(torch.utils.data.Dataset):
    """The trainer's items (``image``, ``strong``, ``observed``, ``labels``, ``index``) from PIL images."""

    def __init__(self, images: list[Image.Image], labels: np.ndarray, observed: np.ndarray, image_size: int,
                 strong: bool, normalization: tuple[tuple[float, ...], tuple[float, ...]], training: bool = True):
        self.images, self.labels, self.observed = images, labels, observed
        self.weak = weak_transform(image_size, *normalization)
        self.eval = eval_transform(image_size, *normalization)
        self.strong = strong_transform(image_size, *normalization) if strong else None
        self.training = training  # False: the evaluation view (validation and test sets)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.images[index]
        item = {"image": (self.weak if self.training else self.eval)(image),
                "observed": torch.from_numpy(self.observed[index].astype(np.int64)),
                "labels": torch.from_numpy(self.labels[index].astype(np.float32)), "index": index}
        if self.training and self.strong is not None:
            item["strong"] = self.strong(image)
        return item


def _mean_average_precision(network: torch.nn.Module, dataset: InMemoryImages, batch_size: int,
                            channels_last: bool) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    scores, labels = predict(network, loader, torch.device("cpu"), channels_last=channels_last)
    return mean_average_precision(scores, labels, scorable_only=True)  # COCO's person has no negative


def run_one(spec: BenchWorld, data: WorldData, method: str, seed: int, separability: bool = False) -> RunResult:
    """Train one method on one world with one seed; test the model of the best validation epoch.

    ``separability``: after each epoch also measure how well the scores a rejection rule can read
    separate the training split's unannotated real labels (:mod:`train.bench_method.separability`)."""
    from spml.model import create_model

    loss, options = METHODS[method]
    backbone = spec.backbone
    config = spec.train_config(loss, options, seed, data="-", out="-", amp=False, log_every=10**9)
    train_split = Split(name="train", source=Path("-"), classes=data.classes, images=[], rows=[],
                        labels=data.labels["train"], observed=data.observed, has_hidden_labels=True)
    device, info = torch.device("cpu"), DistInfo()
    torch.manual_seed(seed)
    network = prepare_network(create_model(backbone.arch, len(data.classes), pretrained=backbone.pretrained,
                                           **config.arch_options), config, info, device)
    normalization = input_normalization(network)
    objective = build_objective(config, train_split)
    train_set = InMemoryImages(data.images["train"], data.labels["train"], data.observed, spec.image_size,
                               objective.needs_strong_view, normalization)
    val_set, test_set = (InMemoryImages(data.images[split], data.labels[split],
                                        np.zeros_like(data.labels[split], dtype=np.int8), spec.image_size, False,
                                        normalization, training=False)
                         for split in ("val", "test"))
    generator = torch.Generator()
    loader = DataLoader(train_set, batch_size=spec.batch_size, shuffle=True, generator=generator)
    optimizer = build_optimizer(config, network, objective)
    start = time.perf_counter()
    best_val, best_epoch, best_state, epochs = -1.0, 0, None, []
    labels_per_image = expected_labels(config, train_split)
    if separability:
        evaluation_view = InMemoryImages(data.images["train"], data.labels["train"], data.observed, spec.image_size,
                                         False, normalization, training=False)
        train_images = torch.stack([evaluation_view[i]["image"] for i in range(len(evaluation_view))])
        train_observed = torch.from_numpy(data.observed.astype(np.int64))
    for epoch in range(1, spec.epochs + 1):
        torch.manual_seed(seed * 1000 + epoch)
        generator.manual_seed(seed * 1000 + epoch)
        stats = train_one_epoch(network, objective, loader, optimizer, None, epoch, device, config, info, True)
        val_map = _mean_average_precision(network, val_set, 64, backbone.channels_last)
        row = {"epoch": epoch, "val_map": round(val_map, 4), "rejected": stats.rejected,
               "rejection_precision": stats.rejection_precision,
               "rejected_fraction_of_unknown": stats.rejected / max(stats.unknown_entries, 1),
               **rejection_diagnostics(objective, stats, train_split, labels_per_image)}
        if hasattr(objective, "thresholds"):
            row["gap_threshold"] = objective.thresholds.gap_threshold
        if separability:
            logits = split_logits(network, train_images, train_observed, 64,
                                  getattr(objective, "cam_threshold", config.cam_threshold),
                                  getattr(objective, "cam_norm", config.cam_norm))
            row.update({f"sep_{key}": value for key, value in
                        separation(rule_scores(*logits), data.labels["train"], data.observed).items()})
        epochs.append(row)
        if val_map > best_val:
            best_val, best_epoch, best_state = val_map, epoch, copy.deepcopy(network.state_dict())
    network.load_state_dict(best_state)
    test_map = _mean_average_precision(network, test_set, 64, backbone.channels_last)
    return RunResult(spec.name, method, seed, test_map, best_val, best_epoch, time.perf_counter() - start, epochs)


def _load_done(path: Path) -> list[RunResult]:
    if not path.is_file():
        return []
    try:
        return [RunResult(**entry) for entry in json.loads(path.read_text())]
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: not a runs file of this benchmark ({error}); "
                         "remove it or choose another --out") from error


def join_runs(out: Path, others: list[Path]) -> int:
    """Add to ``out/runs.json`` the runs of other sweeps' folders (several processes side by side, each with
    its own ``--out``) that it lacks; a run in both keeps ``out``'s. Returns how many were added."""
    runs_path = out / "runs.json"
    results = _load_done(runs_path)
    have = {(r.world, r.method, r.seed) for r in results}
    added = 0
    for other in others:
        if not (other / "runs.json").is_file():
            raise ValueError(f"{other}: no runs.json to join (give the --out folder of another sweep)")
        for result in _load_done(other / "runs.json"):
            if (result.world, result.method, result.seed) not in have:
                results.append(result)
                have.add((result.world, result.method, result.seed))
                added += 1
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(runs_path, json.dumps([asdict(r) for r in results]) + "\n")
    return added


def run_sweep(worlds: list[BenchWorld], methods: list[str], seeds: list[int], out: Path,
              threads: int = 1, progress: bool = True, train: bool = True, separability: bool = False,
              photos: Path = DEFAULT_PHOTOS, coco: Path = DEFAULT_COCO) -> dict[str, Any]:
    """Run every (world, seed, method) not already in ``out/runs.json``; write the tables.

    ``train=False`` only writes the tables of the runs already there (a sweep cut short, or the
    ``runs.json`` lists of several processes joined into one). ``separability`` measures it in every
    run (see :func:`run_one`); a run there that lacks it is run again. ``photos``: the image folder the
    real-photo worlds compose their scenes from; ``coco`` the COCO-format set of the COCO worlds."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    if "an" not in methods:
        raise ValueError("the benchmark measures against AN: include 'an' in --methods")
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    runs_path = out / "runs.json"
    results = _load_done(runs_path)
    done = {(r.world, r.method, r.seed) for r in results if has_separability(r) or not separability}
    # Seed by seed: a sweep cut short still has every world with the seeds it finished.
    todo = [(spec, seed, method) for seed in seeds for spec in worlds for method in methods
            if train and (spec.name, method, seed) not in done]
    meta = {"command_worlds": [s.name for s in worlds], "methods": methods, "seeds": seeds,
            "worlds": {s.name: {**asdict(s), "description": s.describe()} for s in worlds},
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"}
    cache: tuple[tuple[str, int], WorldData] | None = None
    with tqdm(total=len(todo), desc="bench-method", unit="run", disable=not progress) as bar:
        for spec, seed, method in todo:
            if cache is None or cache[0] != (spec.name, seed):
                cache = ((spec.name, seed), render_world(spec, seed, photos, coco))
            result = run_one(spec, cache[1], method, seed, separability)
            # A run measured again (for its separability) replaces its earlier entry once it is done.
            results = [r for r in results if (r.world, r.method, r.seed) != (spec.name, method, seed)] + [result]
            atomic_write_text(runs_path, json.dumps([asdict(r) for r in results]) + "\n")
            bar.set_postfix(world=spec.name, method=method, seed=seed, test_map=f"{result.test_map:.2f}")
            bar.update(1)
    return write_outputs(out, [r for r in results if (r.world, r.method, r.seed) in
                               {(s.name, m, d) for s in worlds for m in methods for d in seeds}],
                         worlds, methods, meta)


def add_bench_method_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="two tiny worlds, one seed: a smoke run in seconds")
    parser.add_argument("--worlds", help=f"comma-separated subset of {', '.join(WORLDS)}; the extra worlds "
                                         f"{', '.join(EXTRA_WORLDS)}; the real-photo worlds {', '.join(PHOTO_WORLDS)}; "
                                         f"the COCO worlds {', '.join(COCO_WORLDS)}")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS,
                        help=f"the image folder (one folder a class) of the real-photo worlds "
                             f"(default {DEFAULT_PHOTOS})")
    parser.add_argument("--coco", type=Path, default=DEFAULT_COCO,
                        help=f"the COCO-format set of the COCO worlds: a folder with instances.json and images/ "
                             f"(default {DEFAULT_COCO})")
    parser.add_argument("--methods", help=f"comma-separated, default {','.join(DEFAULT_METHODS)}; "
                                          f"known: {', '.join(METHODS)}")
    parser.add_argument("--seeds", help="comma-separated seeds (default 0,1,2; --quick: 0)")
    parser.add_argument("--out", default="runs/bench-method", help="folder for runs.json and the tables")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--separability", action="store_true",
                        help="after each epoch also measure how well the scores a rejection rule can read "
                             "(logit, gap, ...) separate the training split's unannotated real labels: AUROC "
                             "and precision at recall 0.3 / 0.5, the ceiling of any rule thresholding them "
                             "(three more passes over the training split an epoch)")
    parser.add_argument("--join", nargs="+", type=Path, default=[], metavar="DIR",
                        help="first add the finished runs in these other sweeps' --out folders to OUT/runs.json "
                             "(sweeps run side by side as separate processes)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the tables of the runs already in OUT/runs.json")
    parser.set_defaults(func=_run)


def _names(text: str | None, default: list[str] | tuple[str, ...]) -> list[str]:
    return list(default) if not text else [name.strip() for name in text.split(",") if name.strip()]


def _run(args: argparse.Namespace) -> int:
    catalogue = QUICK_WORLDS if args.quick else {**WORLDS, **EXTRA_WORLDS, **PHOTO_WORLDS, **COCO_WORLDS}
    names = _names(args.worlds, list(QUICK_WORLDS if args.quick else WORLDS))
    missing = [name for name in names if name not in catalogue]
    if missing:
        raise ValueError(f"unknown world(s) {', '.join(missing)}; known: {', '.join(catalogue)}")
    worlds = [catalogue[name] for name in names]
    methods = _names(args.methods, DEFAULT_METHODS)
    seeds = [int(s) for s in _names(args.seeds, ["0"] if args.quick else [str(s) for s in DEFAULT_SEEDS])]
    out = Path(args.out)
    if args.join:
        print(f"joined {join_runs(out, args.join)} run(s) into {out / 'runs.json'}")
    start = time.perf_counter()
    summary = run_sweep(worlds, methods, seeds, out, args.threads, train=not args.report_only,
                        separability=args.separability, photos=args.photos, coco=args.coco)
    for spec in worlds:
        print(f"{spec.name}: {spec.describe()}")
    print(markdown_tables(summary, worlds, methods))
    print(f"{len(worlds)} worlds x {len(methods)} methods x {len(seeds)} seeds in "
          f"{time.perf_counter() - start:.0f} s; tables in {out}")
    return 0
