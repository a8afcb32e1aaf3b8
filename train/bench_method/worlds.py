"""What the sweep runs: its worlds (synthetic ones, and scenes of real photos; each rendered in memory,
with the training labels an annotator would leave), the backbone each world trains, and the methods
(a loss and its options)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from spml.data import sample_single_positive
from spml.data.scenes import (
    PhotoFolder,
    plan_scenes,
    read_photo_folder,
    render_photo_scene,
    scene_labels,
    split_photos,
)
from spml.data.synthetic import World, render_scene
from spml.losses.calr import CALR_DEFAULTS
from train.config import TrainConfig

# Where the real-photo worlds read their photos unless --photos says otherwise (beside the checkout).
DEFAULT_PHOTOS = Path("../shared/photos/train")
# The COCO worlds' set (instances.json and images/ in one folder) unless --coco says otherwise.
DEFAULT_COCO = Path("../shared/coco")


@dataclass(frozen=True)
class Backbone:
    """The network a world's runs train, and its optimiser's learning rates: the same for every method."""

    arch: str = "compact"
    options: tuple[tuple[str, Any], ...] = (("width", 16),)
    pretrained: bool = False
    lr: float = 1e-3
    head_lr_multiplier: float = 1.0
    channels_last: bool = False

    def describe(self) -> str:
        options = ", ".join(f"{key} {value}" for key, value in self.options)
        weights = "ImageNet weights" if self.pretrained else "from scratch"
        return f"{self.arch} ({options}), {weights}, Adam {self.lr:g} (head x{self.head_lr_multiplier:g})"


COMPACT = Backbone()
# The photos model's recipe (train/configs/photos_calr.yaml): ImageNet features, the stem and 5 of the
# 7 stages frozen, Adam 3e-4 with the head at x10.
PHOTO_BACKBONE = Backbone("efficientnet_lite0", (("frozen_stages", 5),), True, 3e-4, 10.0, True)
PHOTO_BACKBONE_FINETUNED = replace(PHOTO_BACKBONE, options=(("frozen_stages", 0),))  # every stage trained


@dataclass(frozen=True)
class PhotoScenes:
    """Scenes composed from an image folder of real photos (:mod:`spml.data.scenes`): ``mix`` gives the
    shares of scenes with 1, 2, 3 and 4 photos. Each seed splits the photos anew into train, val and test
    (per class; no photo in two splits)."""

    mix: tuple[float, float, float, float]
    val_fraction: float = 0.1
    test_fraction: float = 0.2

    def objects(self) -> str:
        present = [k + 1 for k, share in enumerate(self.mix) if share > 0]
        return f"{min(present)}-{max(present)}"


@dataclass(frozen=True)
class CocoPhotos:
    """Real multi-label photos of a COCO-format set, split by photo anew for each seed as ``train prepare
    coco`` splits them (70 / 10 / 20); the world's ``train``, ``val`` and ``test`` cap each split."""

    def objects(self) -> str:
        return "every object annotated as a box"


@dataclass(frozen=True)
class BenchWorld:
    """One world of the sweep: what it renders, how it is labelled, what trains on it, and the budget."""

    name: str
    world: World | PhotoScenes | CocoPhotos
    train: int
    val: int
    test: int
    batch_size: int
    epochs: int = 8
    image_size: int = 64
    labels: str = "single"  # single: one positive by the protocol; partial: each label kept with p = keep
    keep: float = 0.5
    backbone: Backbone = COMPACT
    warmup_epochs: int = 3  # CALR's epochs without rejection (the trainer's default)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.train / self.batch_size)

    def train_config(self, loss: str, loss_options: dict[str, Any], seed: int, **settings: Any) -> TrainConfig:
        """The trainer's configuration of a run on this world, resolved as ``train fit`` resolves it (CALR's
        defaults follow the backbone): its backbone, size and budget; ``settings`` add the rest (data and
        run folders, device, ...)."""
        backbone = self.backbone
        return TrainConfig(loss=loss, arch=backbone.arch, arch_options=dict(backbone.options),
                           pretrained=backbone.pretrained, epochs=self.epochs, batch_size=self.batch_size,
                           image_size=self.image_size, lr=backbone.lr, head_lr_multiplier=backbone.head_lr_multiplier,
                           warmup_epochs=self.warmup_epochs, loss_options=dict(loss_options), workers=0, seed=seed,
                           channels_last=backbone.channels_last, **settings).validate()

    def describe(self) -> str:
        w = self.world
        labels = "single positive" if self.labels == "single" else f"partial (keep {self.keep:g})"
        budget = f"{self.train} images / {self.steps_per_epoch} steps an epoch, {labels}"
        if isinstance(w, PhotoScenes):
            return (f"scenes of {w.objects()} real photos, {self.image_size} px, {budget}, "
                    f"{self.backbone.describe()}")
        if isinstance(w, CocoPhotos):
            return f"COCO-format photos, {self.image_size} px, {budget}, {self.backbone.describe()}"
        objects = f"{min(w.object_counts)}-{max(w.object_counts)}"
        network = "" if self.backbone == COMPACT else f", {self.backbone.describe()}"
        return (f"{w.classes} classes, {objects} objects, radius {w.radius_range[0]:g}-{w.radius_range[1]:g}, "
                f"clutter {w.clutter:g}, {self.image_size} px, {budget}{network}")


def _uniform(low: int, high: int) -> dict[str, Any]:
    return {"object_counts": tuple(range(low, high + 1)), "object_count_p": None}


PARTIAL = BenchWorld("partial", World(classes=14, **_uniform(2, 5)), 512, 128, 256, batch_size=16, labels="partial")
WORLDS: dict[str, BenchWorld] = {w.name: w for w in (
    BenchWorld("base", World(), 640, 160, 320, batch_size=32),
    BenchWorld("six-large", World(classes=6, radius_range=(0.16, 0.24), clutter=0.5, **_uniform(1, 3)),
               512, 128, 256, batch_size=16),
    BenchWorld("twenty-small", World(classes=20, radius_range=(0.09, 0.13), **_uniform(2, 5)),
               768, 128, 256, batch_size=32),
    BenchWorld("clutter-small", World(radius_range=(0.08, 0.12), clutter=2.5), 512, 128, 256, batch_size=16),
    BenchWorld("long-epochs", World(**_uniform(2, 4)), 2400, 128, 256, batch_size=8, epochs=4),
    PARTIAL,
)}
# Not in the default sweep: a batch of 4 (many small, noisy steps), and the same scenes at batch 16.
EXTRA_WORLDS: dict[str, BenchWorld] = {w.name: w for w in (
    BenchWorld("small-batch", World(**_uniform(2, 4)), 600, 128, 256, batch_size=4, epochs=5),
    BenchWorld("small-batch-b16", World(**_uniform(2, 4)), 600, 128, 256, batch_size=16, epochs=5),
    # The partial world's scenes and labels on the photos model's ImageNet backbone (at the photo worlds'
    # 160 px, where its 5 x 5 maps still give CAMs), and the same 160 px scenes from scratch: does the
    # ungated rule pay with pretrained features where it costs from scratch (docs/method.md, "On real photos")?
    replace(PARTIAL, name="partial-pretrained", image_size=160, backbone=PHOTO_BACKBONE),
    replace(PARTIAL, name="partial-160", image_size=160),
)}
QUICK_WORLDS: dict[str, BenchWorld] = {w.name: w for w in (
    BenchWorld("quick-single", World(classes=6, **_uniform(1, 3)), 64, 32, 32, batch_size=16, epochs=4,
               image_size=48),
    BenchWorld("quick-partial", World(classes=6, **_uniform(2, 3)), 64, 32, 32, batch_size=16, epochs=4,
               image_size=48, labels="partial"),
)}

# Scenes of the real photos of ../shared/photos on the photos model's backbone; not in the default sweep
# (they need the photos; --worlds names them). Every scene holds 2 to 4 objects. Sized so that a CALR run
# takes a few minutes on this machine's 2 cores (docs/benchmarks.md, "The method on real photos"); the
# rule starts after 2 epochs, as in the photos model's recipe (pretrained features know the objects early).
PHOTOS_SEVERAL = BenchWorld("photos-several", PhotoScenes(mix=(0.0, 0.3, 0.2, 0.5)), 600, 150, 300, batch_size=16,
                            epochs=6, image_size=160, backbone=PHOTO_BACKBONE, warmup_epochs=2)
PHOTOS_PARTIAL = replace(PHOTOS_SEVERAL, name="photos-partial", labels="partial")
PHOTO_WORLDS: dict[str, BenchWorld] = {w.name: w for w in (
    PHOTOS_SEVERAL,
    PHOTOS_PARTIAL,
    # The same scenes and labels trained twice as long: does the gate open once the model knows more?
    replace(PHOTOS_PARTIAL, name="photos-partial-long", epochs=12),
    # The same scenes and labels with every stage of the ImageNet backbone trained, as the paper's recipes
    # train theirs: does the gate's default for ImageNet weights hold beyond frozen features?
    replace(PHOTOS_PARTIAL, name="photos-partial-finetune", backbone=PHOTO_BACKBONE_FINETUNED),
)}

# Real multi-label photos (../shared/coco: 2,149 COCO photos, every object a box), split by photo; not in
# the default sweep (they need the photos; --worlds names them). The photos worlds' backbone at 192 px
# (6 x 6 maps; the photo worlds' 160 px leaves COCO's small objects a pixel or two of the map), every photo
# of the training split, 5 epochs with the rule on from the third: sized so that a CALR run takes about
# ten minutes on one of this machine's 2 cores (docs/benchmarks.md).
COCO_SINGLE = BenchWorld("coco", CocoPhotos(), 1504, 215, 430, batch_size=32, epochs=5, image_size=192,
                         backbone=PHOTO_BACKBONE, warmup_epochs=2)
COCO_WORLDS: dict[str, BenchWorld] = {w.name: w for w in (
    COCO_SINGLE,
    replace(COCO_SINGLE, name="coco-partial", labels="partial"),
)}

NO_REJECTION = "calr-no-rejection"  # ours with the rule never on: the rule's share is measured against it
# method name -> (loss, loss_options). "calr" is CALR as a user gets it without a recipe ("ours");
# the calr-* variants change one option each, for the ablations.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("full", {}),
    "an": ("an", {}),
    "an-ls": ("an-ls", {}),
    "epr": ("epr", {}),
    "role": ("role", {}),
    "ll-r": ("ll-r", {}),
    "ll-ct": ("ll-ct", {}),
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
    "calr-no-gate": ("calr", {"min_precision": 0.0}),  # the rule acts whatever its probes estimate
    # The gate of a backbone trained from scratch, on any backbone (ours with ImageNet weights leaves it off).
    "calr-gated": ("calr", {"min_precision": CALR_DEFAULTS["min_precision"]}),
    "calr-placebo": ("calr", {"placebo": True}),  # as many rejections as the rule, at random: the share's noise
    "calr-placebo-no-gate": ("calr", {"placebo": True, "min_precision": 0.0}),  # calr-no-gate's noise
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
    sources: dict[str, list[list[str]]] | None = None  # a world of real photos: each scene's photos, by split


def render_world(spec: BenchWorld, seed: int, photos: Path = DEFAULT_PHOTOS, coco: Path = DEFAULT_COCO) -> WorldData:
    """Render the three splits in memory and draw the training split's observed labels (a world of real
    photos composes its scenes from the image folder ``photos``; a COCO world reads the set in ``coco``)."""
    if isinstance(spec.world, PhotoScenes):
        return _compose_photo_world(spec, spec.world, seed, photos)
    if isinstance(spec.world, CocoPhotos):
        return _read_coco_world(spec, seed, coco)
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


def _compose_photo_world(spec: BenchWorld, scenes: PhotoScenes, seed: int, photos: Path) -> WorldData:
    folder = read_photo_folder(photos)
    held = scenes.val_fraction + scenes.test_fraction
    first = split_photos(folder, held, seed)
    second = split_photos(PhotoFolder(folder.root, folder.classes, first["val"]), scenes.test_fraction / held, seed)
    pools = {"train": first["train"], "val": second["train"], "test": second["val"]}
    rng = np.random.RandomState([seed, 1300])
    images: dict[str, list[Image.Image]] = {}
    labels: dict[str, np.ndarray] = {}
    sources: dict[str, list[list[str]]] = {}
    for split, count in (("train", spec.train), ("val", spec.val), ("test", spec.test)):
        sources[split] = plan_scenes(pools[split], count, scenes.mix, rng)
        images[split] = [render_photo_scene(folder.root, scene, spec.image_size) for scene in sources[split]]
        labels[split] = scene_labels(sources[split], folder.classes)
    return WorldData(folder.classes, images, labels, observe(labels["train"], spec, seed), sources)


def _read_coco_world(spec: BenchWorld, seed: int, coco: Path) -> WorldData:
    from spml.data.images import load_image
    from spml.data.importers import coco as coco_importer
    from train.prepare import split_photos

    for needed in (coco / "instances.json", coco / "images"):
        if not needed.exists():
            raise ValueError(f"{needed}: not found (a COCO world reads instances.json and images/ in --coco)")
    collected = coco_importer.read(coco / "instances.json", coco / "images", require_labels=True)
    entries = sorted(collected.splits["train"], key=lambda entry: entry.image)
    column = {name: j for j, name in enumerate(collected.classes)}
    caps = {"train": spec.train, "val": spec.val, "test": spec.test}
    images: dict[str, list[Image.Image]] = {}
    labels: dict[str, np.ndarray] = {}
    for split, index in split_photos(len(entries), seed).items():
        chosen = [entries[i] for i in index[:caps[split]]]
        # Stored at the input size, stretched as the trainer's view stretches them: the photos fit in memory.
        images[split] = [load_image(collected.image_root / e.image).resize((spec.image_size, spec.image_size),
                                                                          Image.Resampling.BILINEAR) for e in chosen]
        labels[split] = np.zeros((len(chosen), len(collected.classes)), dtype=np.uint8)
        for i, entry in enumerate(chosen):
            labels[split][i, [column[name] for name in entry.labels]] = 1
    return WorldData(collected.classes, images, labels, observe(labels["train"], spec, seed))


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
