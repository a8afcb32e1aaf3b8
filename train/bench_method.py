"""``python -m train bench-method``: does CALR beat assume-negative on worlds nobody tuned it for?

Trains full labels (the ceiling), AN, LL-R and CALR as a user gets it without a recipe (``calr``), and
any ablation variant of CALR, on several synthetic worlds that differ in what matters to the method:
number of classes, objects per image, object size, clutter, steps per epoch, single-positive or
partial labels. Several seeds each; a seed renders its own world and initialises its own model.

Every run goes through the trainer's own pieces (``build_objective``, ``build_optimizer``,
``train_one_epoch``, the project's weak and strong views, model selection by clean-validation mAP),
with the images rendered into memory instead of PNG files so that a CPU runs the sweep in minutes.
Writes ``runs.json`` (every run, with its per-epoch rejection statistics; a killed sweep resumes
from it), ``results.csv``, ``epochs.csv``, ``summary.json`` and ``table.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from spml.data import Split, sample_single_positive
from spml.data.synthetic import World, render_scene
from spml.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, strong_transform, weak_transform
from spml.metrics import mean_average_precision
from spml.runtime import DistInfo, atomic_write_text
from train.config import TrainConfig
from train.engine import build_objective, build_optimizer
from train.loop import predict, rejection_diagnostics, train_one_epoch


@dataclass(frozen=True)
class BenchWorld:
    """One world of the sweep: what it renders, how it is labelled, and its training budget."""

    name: str
    world: World
    train: int
    val: int
    test: int
    batch_size: int
    epochs: int = 8
    image_size: int = 64
    labels: str = "single"  # single: one positive by the protocol; partial: each label kept with p = keep
    keep: float = 0.5

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.train / self.batch_size)

    def describe(self) -> str:
        w = self.world
        objects = f"{min(w.object_counts)}-{max(w.object_counts)}"
        labels = "single positive" if self.labels == "single" else f"partial (keep {self.keep:g})"
        return (f"{w.classes} classes, {objects} objects, radius {w.radius_range[0]:g}-{w.radius_range[1]:g}, "
                f"clutter {w.clutter:g}, {self.train} images / {self.steps_per_epoch} steps an epoch, {labels}")


def _uniform(low: int, high: int) -> dict[str, Any]:
    return {"object_counts": tuple(range(low, high + 1)), "object_count_p": None}


WORLDS: dict[str, BenchWorld] = {w.name: w for w in (
    BenchWorld("base", World(), 640, 160, 320, batch_size=32),
    BenchWorld("six-large", World(classes=6, radius_range=(0.16, 0.24), clutter=0.5, **_uniform(1, 3)),
               512, 128, 256, batch_size=16),
    BenchWorld("twenty-small", World(classes=20, radius_range=(0.09, 0.13), **_uniform(2, 5)),
               768, 128, 256, batch_size=32),
    BenchWorld("clutter-small", World(radius_range=(0.08, 0.12), clutter=2.5), 512, 128, 256, batch_size=16),
    BenchWorld("long-epochs", World(**_uniform(2, 4)), 2400, 128, 256, batch_size=8, epochs=4),
    BenchWorld("partial", World(classes=14, **_uniform(2, 5)), 512, 128, 256, batch_size=16, labels="partial"),
)}
# Not in the default sweep: a batch of 4 (many small, noisy steps), and the same scenes at batch 16.
EXTRA_WORLDS: dict[str, BenchWorld] = {w.name: w for w in (
    BenchWorld("small-batch", World(**_uniform(2, 4)), 600, 128, 256, batch_size=4, epochs=5),
    BenchWorld("small-batch-b16", World(**_uniform(2, 4)), 600, 128, 256, batch_size=16, epochs=5),
)}
QUICK_WORLDS: dict[str, BenchWorld] = {w.name: w for w in (
    BenchWorld("quick-single", World(classes=6, **_uniform(1, 3)), 64, 32, 32, batch_size=16, epochs=4,
               image_size=48),
    BenchWorld("quick-partial", World(classes=6, **_uniform(2, 3)), 64, 32, 32, batch_size=16, epochs=4,
               image_size=48, labels="partial"),
)}

# method name -> (loss, loss_options). "calr" is CALR as a user gets it without a recipe ("ours");
# the calr-* variants change one option each, for the ablations.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("full", {}),
    "an": ("an", {}),
    "ll-r": ("ll-r", {}),
    "calr": ("calr", {}),
    "calr-reference": ("calr", {"reference": True}),
    "calr-no-bias-correction": ("calr", {"bias_correction": False}),
    "calr-bn-eval": ("calr", {"masked_bn": "eval"}),
    "calr-bn-update": ("calr", {"masked_bn": "update"}),
    "calr-class-gap": ("calr", {"per_class_gap": True}),
    "calr-cam-0.3": ("calr", {"cam_threshold": 0.3}),
    "calr-cam-0.7": ("calr", {"cam_threshold": 0.7}),
    "calr-warmup-1": ("calr", {"warmup_epochs": 1}),
    # The other way to settle uncorrected averages: wait until they hold half their value (693 steps
    # at m = 0.999), counted in steps whatever the epoch length.
    "calr-settle-no-bias-correction": ("calr", {"bias_correction": False, "warmup_steps": 693}),
    "calr-no-rejection": ("calr", {"warmup_steps": 10**9}),  # CALR's other terms alone
    "calr-no-l2": ("calr", {"weights": (0.5, 1.0, 0.0)}),  # without the strong/weak consistency term
    "calr-ran-strong": ("calr", {"ran_views": "strong"}),  # RAN on the strong view only: the paper's, ours until now
    "calr-ran-weak": ("calr", {"ran_views": "weak"}),
}
DEFAULT_METHODS = ("full", "an", "ll-r", "calr")
DEFAULT_SEEDS = (0, 1, 2)


@dataclass
class WorldData:
    classes: list[str]
    images: dict[str, list[Image.Image]]
    labels: dict[str, np.ndarray]
    observed: np.ndarray  # the training split's observed matrix (1 positive, 0 unknown)


def render_world(spec: BenchWorld, seed: int) -> WorldData:
    """Render the three splits in memory and draw the training split's observed labels."""
    classes = spec.world.class_names
    images: dict[str, list[Image.Image]] = {}
    labels: dict[str, np.ndarray] = {}
    for split, count in (("train", spec.train), ("val", spec.val), ("test", spec.test)):
        images[split], rows = [], []
        for index in range(count):
            image, names, _ = render_scene(seed, split, index, spec.image_size, spec.world)
            images[split].append(image)
            rows.append([name in names for name in classes])
        labels[split] = np.asarray(rows, dtype=np.uint8)
    return WorldData(classes, images, labels, observe(labels["train"], spec, seed))


def observe(labels: np.ndarray, spec: BenchWorld, seed: int) -> np.ndarray:
    """The training labels an annotator left: one positive by the protocol, or each true label kept
    with probability ``spec.keep`` (at least one per image with any label)."""
    if spec.labels == "single":
        return sample_single_positive(labels).astype(np.int8)
    rng = np.random.default_rng([seed, 1200])
    kept = (labels > 0) & (rng.random(labels.shape) < spec.keep)
    for row in np.flatnonzero(~kept.any(axis=1) & (labels > 0).any(axis=1)):
        kept[row, rng.choice(np.flatnonzero(labels[row]))] = True
    return kept.astype(np.int8)


class InMemoryImages(torch.utils.data.Dataset):
    """The trainer's items (``image``, ``strong``, ``observed``, ``labels``, ``index``) from PIL images."""

    def __init__(self, images: list[Image.Image], labels: np.ndarray, observed: np.ndarray, image_size: int,
                 strong: bool, training: bool = True):
        self.images, self.labels, self.observed = images, labels, observed
        self.weak = weak_transform(image_size, IMAGENET_MEAN, IMAGENET_STD)
        self.eval = eval_transform(image_size, IMAGENET_MEAN, IMAGENET_STD)
        self.strong = strong_transform(image_size, IMAGENET_MEAN, IMAGENET_STD) if strong else None
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


@dataclass
class RunResult:
    world: str
    method: str
    seed: int
    test_map: float
    best_val_map: float
    best_epoch: int
    seconds: float
    epochs: list[dict[str, Any]] = field(default_factory=list)


def _mean_average_precision(network: torch.nn.Module, dataset: InMemoryImages, batch_size: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    scores, labels = predict(network, loader, torch.device("cpu"))
    return mean_average_precision(scores, labels)


def run_one(spec: BenchWorld, data: WorldData, method: str, seed: int) -> RunResult:
    """Train one method on one world with one seed; test the model of the best validation epoch."""
    from spml.model import create_model

    loss, options = METHODS[method]
    config = TrainConfig(data="-", out="-", loss=loss, arch="compact", arch_options={"width": 16},
                         pretrained=False, epochs=spec.epochs, batch_size=spec.batch_size,
                         image_size=spec.image_size, lr=1e-3, head_lr_multiplier=1.0, loss_options=dict(options),
                         workers=0, seed=seed, amp=False, channels_last=False, log_every=10**9)
    train_split = Split(name="train", source=Path("-"), classes=data.classes, images=[], rows=[],
                        labels=data.labels["train"], observed=data.observed, has_hidden_labels=True)
    torch.manual_seed(seed)
    network = create_model("compact", len(data.classes), pretrained=False, width=16)
    objective = build_objective(config, train_split)
    train_set = InMemoryImages(data.images["train"], data.labels["train"], data.observed, spec.image_size,
                               objective.needs_strong_view)
    val_set, test_set = (InMemoryImages(data.images[split], data.labels[split],
                                        np.zeros_like(data.labels[split], dtype=np.int8), spec.image_size, False,
                                        training=False)
                         for split in ("val", "test"))
    generator = torch.Generator()
    loader = DataLoader(train_set, batch_size=spec.batch_size, shuffle=True, generator=generator)
    optimizer = build_optimizer(config, network, objective)
    device, info = torch.device("cpu"), DistInfo()
    start = time.perf_counter()
    best_val, best_epoch, best_state, epochs = -1.0, 0, None, []
    for epoch in range(1, spec.epochs + 1):
        torch.manual_seed(seed * 1000 + epoch)
        generator.manual_seed(seed * 1000 + epoch)
        stats = train_one_epoch(network, objective, loader, optimizer, None, epoch, device, config, info, True)
        val_map = _mean_average_precision(network, val_set, 64)
        row = {"epoch": epoch, "val_map": round(val_map, 4), "rejected": stats.rejected,
               "rejection_precision": stats.rejection_precision,
               "rejected_fraction_of_unknown": stats.rejected / max(stats.unknown_entries, 1),
               **rejection_diagnostics(objective, stats, train_split)}
        if hasattr(objective, "thresholds"):
            row["gap_threshold"] = objective.thresholds.gap_threshold
        epochs.append(row)
        if val_map > best_val:
            best_val, best_epoch, best_state = val_map, epoch, copy.deepcopy(network.state_dict())
    network.load_state_dict(best_state)
    test_map = _mean_average_precision(network, test_set, 64)
    return RunResult(spec.name, method, seed, test_map, best_val, best_epoch, time.perf_counter() - start, epochs)


def _spread(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), (float(statistics.stdev(values)) if len(values) > 1 else 0.0)


def summarize(results: list[RunResult], worlds: list[BenchWorld], methods: list[str]) -> dict[str, Any]:
    """Mean and spread over seeds per world and method, margins over AN, CALR's rejection by epoch."""
    table: dict[str, dict[str, Any]] = {}
    for spec in worlds:
        row: dict[str, Any] = {}
        for method in methods:
            runs = [r for r in results if r.world == spec.name and r.method == method]
            if not runs:
                continue
            mean, sd = _spread([r.test_map for r in runs])
            entry: dict[str, Any] = {"mean": mean, "sd": sd, "seeds": sorted(r.seed for r in runs)}
            if METHODS[method][0] == "calr":
                by_epoch = []
                for epoch in range(1, spec.epochs + 1):
                    rows = [r.epochs[epoch - 1] for r in runs]
                    precisions = [x["rejection_precision"] for x in rows if x["rejection_precision"] is not None]
                    by_epoch.append({
                        "epoch": epoch,
                        "precision": float(np.mean(precisions)) if precisions else None,
                        "recall": float(np.mean([x["rejection_recall"] or 0.0 for x in rows])),
                        "rejected_fraction_of_unknown": float(np.mean([x["rejected_fraction_of_unknown"]
                                                                       for x in rows])),
                        "averages_held": float(np.mean([x["averages_held"] for x in rows]))})
                entry["rejection"] = by_epoch
            row[method] = entry
        table[spec.name] = row
    margins: dict[str, Any] = {}
    for method in methods:
        if METHODS[method][0] != "calr":
            continue
        per_world = {w: table[w][method]["mean"] - table[w]["an"]["mean"] for w in table
                     if method in table[w] and "an" in table[w]}
        if per_world:
            margins[method] = {"per_world": per_world, "mean": float(np.mean(list(per_world.values()))),
                               "min": float(min(per_world.values())),
                               "wins": sum(v > 0 for v in per_world.values()), "worlds": len(per_world)}
    return {"table": table, "margins_over_an": margins, "seeds_asked": len({r.seed for r in results})}


def markdown_tables(summary: dict[str, Any], worlds: list[BenchWorld], methods: list[str]) -> str:
    """The test mAP table (mean ± sd over seeds), CALR's margins over AN, and rejection by epoch."""
    table = summary["table"]
    lines = ["| world | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for spec in worlds:
        cells = []
        for method in methods:
            entry = table[spec.name].get(method)
            count = "" if entry is None or len(entry["seeds"]) == summary["seeds_asked"] else \
                f" ({len(entry['seeds'])} seed{'s' if len(entry['seeds']) > 1 else ''})"
            cells.append("" if entry is None else f"{entry['mean']:.2f} ± {entry['sd']:.2f}{count}")
        lines.append(f"| {spec.name} | " + " | ".join(cells) + " |")
    margins = summary["margins_over_an"]
    if margins:
        lines += ["", "| CALR variant | " + " | ".join(s.name for s in worlds) + " | mean | worlds won |",
                  "|---|" + "---|" * (len(worlds) + 2)]
        for method, margin in margins.items():
            cells = [f"{margin['per_world'][s.name]:+.2f}" if s.name in margin["per_world"] else ""
                     for s in worlds]
            lines.append(f"| {method} - an | " + " | ".join(cells)
                         + f" | {margin['mean']:+.2f} | {margin['wins']}/{margin['worlds']} |")
    for method in methods:
        if METHODS[method][0] != "calr":
            continue
        lines += ["", f"{method}: rejection precision / recall by epoch (mean over seeds)", "",
                  "| world | " + " | ".join(f"ep {e}" for e in range(1, max(s.epochs for s in worlds) + 1)) + " |",
                  "|---|" + "---|" * max(s.epochs for s in worlds)]
        for spec in worlds:
            entry = table[spec.name].get(method)
            if entry is None:
                continue
            cells = ["-" if e["precision"] is None else f"{e['precision']:.2f} / {e['recall']:.2f}"
                     for e in entry["rejection"]]
            lines.append(f"| {spec.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_outputs(out: Path, results: list[RunResult], worlds: list[BenchWorld], methods: list[str],
                   meta: dict[str, Any]) -> dict[str, Any]:
    summary = summarize(results, worlds, methods)
    atomic_write_text(out / "summary.json", json.dumps({**meta, **summary}, indent=2) + "\n")
    markdown = markdown_tables(summary, worlds, methods)
    atomic_write_text(out / "table.md", markdown)
    atomic_write_text(out / "results.csv", _csv(
        ["world", "method", "seed", "test_map", "best_val_map", "best_epoch", "seconds"],
        [{k: v for k, v in asdict(r).items() if k != "epochs"} for r in results]))
    epoch_rows = [{"world": r.world, "method": r.method, "seed": r.seed, **e} for r in results for e in r.epochs]
    columns = list(dict.fromkeys(key for row in epoch_rows for key in row))
    atomic_write_text(out / "epochs.csv", _csv(columns, epoch_rows))
    return summary


def _csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in columns})
    return buffer.getvalue()


def _load_done(path: Path) -> list[RunResult]:
    if not path.is_file():
        return []
    try:
        return [RunResult(**entry) for entry in json.loads(path.read_text())]
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: not a runs file of this benchmark ({error}); "
                         "remove it or choose another --out") from error


def run_sweep(worlds: list[BenchWorld], methods: list[str], seeds: list[int], out: Path,
              threads: int = 1, progress: bool = True, train: bool = True) -> dict[str, Any]:
    """Run every (world, seed, method) not already in ``out/runs.json``; write the tables.

    ``train=False`` only writes the tables of the runs already there (a sweep cut short, or the
    ``runs.json`` lists of several processes joined into one)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    if "an" not in methods:
        raise ValueError("the benchmark measures against AN: include 'an' in --methods")
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    runs_path = out / "runs.json"
    results = _load_done(runs_path)
    done = {(r.world, r.method, r.seed) for r in results}
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
                cache = ((spec.name, seed), render_world(spec, seed))
            result = run_one(spec, cache[1], method, seed)
            results.append(result)
            atomic_write_text(runs_path, json.dumps([asdict(r) for r in results]) + "\n")
            bar.set_postfix(world=spec.name, method=method, seed=seed, test_map=f"{result.test_map:.2f}")
            bar.update(1)
    return _write_outputs(out, [r for r in results if (r.world, r.method, r.seed) in
                                {(s.name, m, d) for s in worlds for m in methods for d in seeds}],
                          worlds, methods, meta)


def add_bench_method_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="two tiny worlds, one seed: a smoke run in seconds")
    parser.add_argument("--worlds", help=f"comma-separated subset of {', '.join(WORLDS)}")
    parser.add_argument("--methods", help=f"comma-separated, default {','.join(DEFAULT_METHODS)}; "
                                          f"known: {', '.join(METHODS)}")
    parser.add_argument("--seeds", help="comma-separated seeds (default 0,1,2; --quick: 0)")
    parser.add_argument("--out", default="runs/bench-method", help="folder for runs.json and the tables")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the tables of the runs already in OUT/runs.json")
    parser.set_defaults(func=_run)


def _names(text: str | None, default: list[str] | tuple[str, ...]) -> list[str]:
    return list(default) if not text else [name.strip() for name in text.split(",") if name.strip()]


def _run(args: argparse.Namespace) -> int:
    catalogue = QUICK_WORLDS if args.quick else {**WORLDS, **EXTRA_WORLDS}
    names = _names(args.worlds, list(QUICK_WORLDS if args.quick else WORLDS))
    missing = [name for name in names if name not in catalogue]
    if missing:
        raise ValueError(f"unknown world(s) {', '.join(missing)}; known: {', '.join(catalogue)}")
    worlds = [catalogue[name] for name in names]
    methods = _names(args.methods, DEFAULT_METHODS)
    seeds = [int(s) for s in _names(args.seeds, ["0"] if args.quick else [str(s) for s in DEFAULT_SEEDS])]
    out = Path(args.out)
    start = time.perf_counter()
    summary = run_sweep(worlds, methods, seeds, out, args.threads, train=not args.report_only)
    for spec in worlds:
        print(f"{spec.name}: {spec.describe()}")
    print(markdown_tables(summary, worlds, methods))
    print(f"{len(worlds)} worlds x {len(methods)} methods x {len(seeds)} seeds in "
          f"{time.perf_counter() - start:.0f} s; tables in {out}")
    return 0
