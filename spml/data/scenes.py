"""Multi-object scenes from single-label photos (``python -m train prepare photos``).

An image-folder data set (one folder a class, one label a photo) becomes a multi-label one: each scene
places 1 to 4 photos of distinct classes on a square canvas, and its full labels are their classes.
The photos are split into train and val first (per class, seeded), so that no photo is seen by both
splits; the single positive of each scene is then drawn by the protocol (``sample_single_positive``).
Beside the scenes, the plain photos are written as a single-positive set of their own (``photos/``),
which links to the photo folder instead of copying it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from spml.data.images import IMAGE_SUFFIXES
from spml.data.protocol import sample_single_positive
from spml.data.transforms import LETTERBOX_FILL, paste_fitted
from spml.data.writer import Row, check_writable, link_images, render_dataset, write_rendered
from spml.runtime import atomic_write_text

# A box on the unit square: (left, top, right, bottom).
Box = tuple[float, float, float, float]
# Where each photo of a scene of k photos goes. Three photos give one large and two small objects.
LAYOUTS: dict[int, tuple[Box, ...]] = {
    1: ((0.0, 0.0, 1.0, 1.0),),
    2: ((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)),
    3: ((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 0.5), (0.5, 0.5, 1.0, 1.0)),
    4: ((0.0, 0.0, 0.5, 0.5), (0.5, 0.0, 1.0, 0.5), (0.0, 0.5, 0.5, 1.0), (0.5, 0.5, 1.0, 1.0)),
}
# Share of scenes with 1, 2, 3 and 4 photos (the default mix).
DEFAULT_MIX = (0.2, 0.3, 0.2, 0.3)
BACKGROUND = LETTERBOX_FILL  # what a photo does not fill in its cell: the letterbox's grey
SCENES_FOLDER = "scenes"
PHOTOS_FOLDER = "photos"
SOURCES_FILE = "sources.json"


@dataclass(frozen=True)
class PhotoFolder:
    """An image-folder data set: class names (sorted folder names) and each class's photos (sorted)."""

    root: Path
    classes: list[str]
    photos: dict[str, list[str]]  # class -> photo paths relative to root, with forward slashes


def read_photo_folder(root: str | Path) -> PhotoFolder:
    """The classes and photos of ``root/<class>/<photo>``; a ValueError naming what is wrong."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory (expected one folder a class, e.g. ../shared/photos/train)")
    photos: dict[str, list[str]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            photos[folder.name] = [f"{folder.name}/{name}" for name in files]
    if len(photos) < 2:
        raise ValueError(f"{root}: found {len(photos)} class folder(s) with images; scenes need at least 2")
    return PhotoFolder(root, sorted(photos), photos)


def split_photos(folder: PhotoFolder, val_fraction: float, seed: int) -> dict[str, dict[str, list[str]]]:
    """{"train": class -> photos, "val": ...}: per class, ``round(val_fraction * n)`` photos (at least one
    where a class has two or more) go to val, drawn by a ``RandomState(seed)``; each list stays sorted."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.RandomState(seed)
    splits: dict[str, dict[str, list[str]]] = {"train": {}, "val": {}}
    for name in folder.classes:
        photos = folder.photos[name]
        n_val = max(int(round(val_fraction * len(photos))), 1 if len(photos) >= 2 else 0)
        chosen = set(rng.permutation(len(photos))[:n_val].tolist())
        splits["val"][name] = [p for i, p in enumerate(photos) if i in chosen]
        splits["train"][name] = [p for i, p in enumerate(photos) if i not in chosen]
    return splits


def plan_scenes(pools: dict[str, list[str]], count: int, mix: Sequence[float], rng: np.random.RandomState,
                ) -> list[list[str]]:
    """``count`` scenes, each a list of photos of distinct classes: the number of photos drawn by ``mix``
    (shares of 1, 2, 3, 4), the classes uniformly among those with photos, a photo uniformly in each."""
    classes = [name for name in sorted(pools) if pools[name]]
    if len(mix) != len(LAYOUTS) or min(mix) < 0 or sum(mix) <= 0:
        raise ValueError(f"mix must be {len(LAYOUTS)} shares >= 0 (of scenes with 1..{len(LAYOUTS)} photos), got {mix}")
    shares = np.asarray(mix, dtype=float) / sum(mix)
    most = max(k for k in LAYOUTS if shares[k - 1] > 0)
    if len(classes) < most:
        raise ValueError(f"scenes of {most} photos need {most} classes with photos; found {len(classes)}")
    scenes = []
    for _ in range(count):
        k = int(rng.choice(len(LAYOUTS), p=shares)) + 1
        chosen = rng.choice(len(classes), size=k, replace=False)
        scenes.append([pools[classes[c]][rng.randint(len(pools[classes[c]]))] for c in chosen])
    return scenes


def compose_scene(photos: Sequence[Image.Image], size: int) -> Image.Image:
    """A ``size`` x ``size`` scene: each photo scaled to fit its cell of the layout (aspect kept), centred,
    on a grey background."""
    if len(photos) not in LAYOUTS:
        raise ValueError(f"a scene holds 1 to {len(LAYOUTS)} photos, got {len(photos)}")
    canvas = Image.new("RGB", (size, size), BACKGROUND)
    for photo, (left, top, right, bottom) in zip(photos, LAYOUTS[len(photos)], strict=True):
        cell = (round(left * size), round(top * size), round(right * size), round(bottom * size))
        paste_fitted(canvas, photo, cell)
    return canvas


def render_photo_scene(root: Path, scene: Sequence[str], size: int) -> Image.Image:
    """The scene of the photos ``scene`` (paths relative to ``root``), composed at ``size``."""
    images = []
    for photo in scene:
        with Image.open(root / photo) as opened:
            images.append(opened.convert("RGB"))
    return compose_scene(images, size)


def _class_of(photo: str) -> str:
    return photo.split("/", 1)[0]


def scene_labels(scenes: Sequence[Sequence[str]], classes: list[str]) -> np.ndarray:
    """The full labels (scenes x classes, 0/1) of scenes given as photo paths ``<class>/<photo>``."""
    order = {c: i for i, c in enumerate(classes)}
    labels = np.zeros((len(scenes), len(classes)), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        labels[i, [order[_class_of(p)] for p in scene]] = 1
    return labels


def _scene_rows(name: str, scenes: list[list[str]], classes: list[str]) -> list[Row]:
    labels = scene_labels(scenes, classes)
    observed = sample_single_positive(labels)
    return [Row(image=f"{SCENES_FOLDER}/{name}/{i:06d}.jpg", labels=[classes[j] for j in np.flatnonzero(labels[i])],
                positive=classes[int(np.flatnonzero(observed[i])[0])]) for i in range(len(scenes))]


# How the training photos join the scenes (``train prepare photos --train-photos MODE``).
TRAIN_PHOTOS_MODES = ("single-positive", "single-label")


def make_photo_scenes(photos_dir: str | Path, out: str | Path, seed: int = 0, train: int = 2400, val: int = 600,
                      val_fraction: float = 0.2, image_size: int = 448, mix: Sequence[float] = DEFAULT_MIX,
                      overwrite: bool = False, progress: bool = True, train_photos: str | None = None) -> Path:
    """Write the scene data set to ``out`` and the plain photos' single-positive set to ``out/photos``.

    With ``train_photos`` the scenes' train.csv also lists every training photo alone (as
    ``photos/images/...``): a model then learns single photos as they are uploaded, beside the scenes.
    ``single-positive``: its folder's class its one positive, every other class unknown (a face beside a
    French horn may be there); ``single-label``: every other class a known negative, as an image-folder set
    declares (and as a classifier fitted on it assumes). Val stays scenes only.

    Deterministic for a seed: the same photos make the same CSVs and the same scene files.
    ``out/sources.json`` names the photos of every scene."""
    if train_photos is not None and train_photos not in TRAIN_PHOTOS_MODES:
        raise ValueError(f"unknown train_photos {train_photos!r}; choose one of {', '.join(TRAIN_PHOTOS_MODES)}")
    folder = read_photo_folder(photos_dir)
    out = Path(out).expanduser()
    pools = split_photos(folder, val_fraction, seed)
    rng = np.random.RandomState(seed)
    plans = {"train": plan_scenes(pools["train"], train, mix, rng), "val": plan_scenes(pools["val"], val, mix, rng)}
    photo_rows = {split: [Row(image=f"images/{p}", labels=[_class_of(p)], positive=_class_of(p))
                          for name in folder.classes for p in pools[split][name]] for split in ("train", "val")}
    scene_rows = {split: _scene_rows(split, scenes, folder.classes) for split, scenes in plans.items()}
    if train_photos is not None:
        absent = train_photos == "single-label"
        scene_rows["train"] += [replace(row, image=f"{PHOTOS_FOLDER}/{row.image}",
                                        negatives=[c for c in folder.classes if c not in row.labels] if absent else [])
                                for row in photo_rows["train"]]
    files = render_dataset(folder.classes, scene_rows)
    photo_files = render_dataset(folder.classes, photo_rows)
    check_writable(out, files, overwrite)
    check_writable(out / PHOTOS_FOLDER, photo_files, overwrite)
    link_images(out / PHOTOS_FOLDER / "images", folder.root, overwrite)
    write_rendered(out / PHOTOS_FOLDER, photo_files)
    total = sum(len(scenes) for scenes in plans.values())
    with tqdm(total=total, desc="composing scenes", unit="scene", disable=not progress) as bar:
        for split, scenes in plans.items():
            (out / SCENES_FOLDER / split).mkdir(parents=True, exist_ok=True)
            for i, scene in enumerate(scenes):
                render_photo_scene(folder.root, scene, image_size).save(out / SCENES_FOLDER / split / f"{i:06d}.jpg",
                                                                         quality=90)
                bar.update()
    sources = {"photos": str(folder.root.resolve()), "seed": seed, "val_fraction": val_fraction,
               "image_size": image_size, "mix": list(mix), "train_photos": train_photos, "scenes": plans}
    atomic_write_text(out / SOURCES_FILE, json.dumps(sources, indent=1) + "\n")
    return write_rendered(out, files)
