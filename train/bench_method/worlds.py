"""What the sweep runs: its synthetic worlds (each rendered in memory, with the training labels an
annotator would leave) and its methods (a loss and its options)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from spml.data import sample_single_positive
from spml.data.synthetic import World, render_scene


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

NO_REJECTION = "calr-no-rejection"  # ours with the rule never on: the rule's share is measured against it
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
    NO_REJECTION: ("calr", {"warmup_steps": 10**9}),  # CALR's other terms alone
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
