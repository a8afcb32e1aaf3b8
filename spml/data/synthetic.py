"""A synthetic multi-label world: scenes of coloured shapes on cluttered backgrounds, with full labels.

Each class is a shape AND a hue band of its own. A colleague measured why both are needed: a small
CNN trained from scratch stayed at chance on shapes alone, while shape plus hue band reached 99.7 mAP
with full labels (91.4 with assume-negative) in 8 epochs at 128 px on 1,200 images. Objects of a
scene are placed apart from each other, because CALR masks the image down to the region of the one
positive: the other objects must lie elsewhere for the masked logits to drop. The background clutter
(thin strokes and small blobs) is low in saturation and smaller than any object, so it is never
confusable with one.

Every scene is rendered from its own generator seeded by (seed, split, index), so any image can be
re-rendered alone, and the same seed always gives the same bytes.

A :class:`World` varies what matters to the method (number of classes, objects per scene, object size,
clutter); ``World()`` is the default world, whose scenes are byte-identical to those rendered before
worlds had parameters (the demo and its results depend on them).
"""

from __future__ import annotations

import colorsys
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from spml.data.protocol import sample_single_positive
from spml.data.writer import Row, check_writable, render_dataset, write_rendered
from spml.runtime import atomic_write_text

Box = tuple[int, int, int, int]

LEFT_OUT_FILE = "left_out.csv"  # a partial world's left-out training labels (image,class), for scoring only

# class name -> (hue band centre in degrees, shape). Neighbouring hues are at least 28 degrees apart.
_CLASS_TABLE = {
    "circle": (0.0, "circle"),  # red
    "square": (30.0, "square"),  # orange
    "triangle": (57.0, "triangle"),  # yellow
    "star": (90.0, "star"),  # lime
    "cross": (125.0, "cross"),  # green
    "ring": (165.0, "ring"),  # teal
    "diamond": (198.0, "diamond"),  # sky blue
    "crescent": (232.0, "crescent"),  # blue
    "bar": (268.0, "bar"),  # violet
    "heart": (310.0, "heart"),  # magenta
}
SYNTHETIC_CLASSES: list[str] = list(_CLASS_TABLE)

HUE_JITTER = 5.0  # degrees either side of a band's centre
OBJECT_COUNTS = (1, 2, 3, 4)
OBJECT_COUNT_P = (0.15, 0.35, 0.35, 0.15)  # mean 2.5 objects per scene
RADIUS_RANGE = (0.11, 0.19)  # object half-size, as a fraction of the image side
MIN_SEPARATION = 0.95  # centres at least this times the sum of radii apart: at most a sliver of overlap
MAX_CLASSES = 20  # beyond 10, hue bands 18 degrees apart: still twice the jitter band, and shapes alternate


@dataclass(frozen=True)
class World:
    """The parameters of a synthetic world; the defaults are the world the demo was trained on.

    - ``classes``: up to 10 take the first entries of the class table; 11 to 20 reuse the ten shapes,
      each twice, with hue bands spread evenly so that neighbouring hues carry different shapes.
    - ``object_counts`` / ``object_count_p``: how many objects a scene asks for (None: uniform).
    - ``radius_range``: object half-size as a fraction of the image side.
    - ``clutter``: multiplies the number of background strokes and blobs (0: a plain gradient).
    """

    classes: int = 10
    object_counts: tuple[int, ...] = OBJECT_COUNTS
    object_count_p: tuple[float, ...] | None = OBJECT_COUNT_P
    radius_range: tuple[float, float] = RADIUS_RANGE
    clutter: float = 1.0

    def __post_init__(self) -> None:
        if not 2 <= self.classes <= MAX_CLASSES:
            raise ValueError(f"a world has 2 to {MAX_CLASSES} classes, got {self.classes}")
        if not self.object_counts or min(self.object_counts) < 1:
            raise ValueError(f"object_counts must be counts of at least 1, got {self.object_counts}")
        if self.object_count_p is not None and len(self.object_count_p) != len(self.object_counts):
            raise ValueError("object_count_p needs one probability per entry of object_counts")
        low, high = self.radius_range
        if not 0.02 <= low <= high <= 0.4:
            raise ValueError(f"radius_range must satisfy 0.02 <= low <= high <= 0.4, got {self.radius_range}")
        if self.clutter < 0:
            raise ValueError(f"clutter must be >= 0, got {self.clutter}")

    @property
    def class_table(self) -> list[tuple[str, float, str]]:
        """(name, hue band centre in degrees, shape) of every class, in class order."""
        table = [(name, hue, shape) for name, (hue, shape) in _CLASS_TABLE.items()]
        if self.classes <= len(table):
            return table[: self.classes]
        shapes = [shape for _, _, shape in table]
        step = 360.0 / self.classes
        return [(f"{shapes[i % len(shapes)]}{i // len(shapes) + 1}", i * step, shapes[i % len(shapes)])
                for i in range(self.classes)]

    @property
    def class_names(self) -> list[str]:
        return [name for name, _, _ in self.class_table]


DEFAULT_WORLD = World()


def _circle(n: int = 48, radius: float = 1.0, cx: float = 0.0) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + radius * np.cos(t), radius * np.sin(t)], axis=1)


def _star() -> np.ndarray:
    t = -np.pi / 2 + np.arange(10) * np.pi / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y + 2.5], axis=1)
    return pts / np.abs(pts).max()


def _regular(n: int, start: float) -> np.ndarray:
    t = start + np.arange(n) * 2.0 * np.pi / n
    return np.stack([np.cos(t), np.sin(t)], axis=1)


_W = 0.32  # half-width of the cross's arms
_CROSS = 0.95 * np.array(
    [[-_W, -1], [_W, -1], [_W, -_W], [1, -_W], [1, _W], [_W, _W], [_W, 1], [-_W, 1], [-_W, _W], [-1, _W],
     [-1, -_W], [-_W, -_W]]
)  # fmt: skip
# shape -> contours in unit coordinates (inside the unit disc), each filled (True) or cut out (False).
_SHAPES: dict[str, list[tuple[np.ndarray, bool]]] = {
    "circle": [(_circle(), True)],
    "square": [(np.array([[-0.72, -0.72], [0.72, -0.72], [0.72, 0.72], [-0.72, 0.72]]), True)],
    "triangle": [(_regular(3, -np.pi / 2), True)],
    "star": [(_star(), True)],
    "cross": [(_CROSS, True)],
    "ring": [(_circle(), True), (_circle(radius=0.55), False)],
    "diamond": [(np.array([[0.0, -1.0], [0.55, 0.0], [0.0, 1.0], [-0.55, 0.0]]), True)],
    "crescent": [(_circle(), True), (_circle(radius=0.85, cx=0.5), False)],
    "bar": [(np.array([[-0.3, -1.0], [0.3, -1.0], [0.3, 1.0], [-0.3, 1.0]]), True)],
    "heart": [(_heart(), True)],
}


@dataclass(frozen=True)
class _Object:
    cls: int
    shape: str
    cx: float  # centre and radius as fractions of the image side
    cy: float
    radius: float
    angle: float  # radians
    aspect: tuple[float, float]
    rgb: tuple[int, int, int]


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    # crc32 rather than hash(): str hashes are salted per process, crc32 is the same everywhere.
    return np.random.default_rng([seed, zlib.crc32(split.encode("utf-8")), index])


def _hsv(h_deg: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, s, v)
    return round(r * 255), round(g * 255), round(b * 255)


def _layout(rng: np.random.Generator, world: World) -> list[_Object]:
    """Choose the objects of a scene: distinct classes, placed apart. Drawn first from the generator."""
    table = world.class_table
    p = None if world.object_count_p is None else list(world.object_count_p)
    count = min(int(rng.choice(world.object_counts, p=p)), world.classes)
    classes = rng.choice(world.classes, size=count, replace=False)
    objects: list[_Object] = []
    for cls in classes:
        _, centre, shape = table[cls]
        hue = centre + rng.uniform(-HUE_JITTER, HUE_JITTER)
        rgb = _hsv(hue, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
        aspect = (float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.85, 1.15)))
        angle = float(rng.uniform(0.0, 2.0 * np.pi))
        for _ in range(60):  # rejection sampling of a free place; an object that finds none is dropped
            radius = float(rng.uniform(*world.radius_range))
            reach = radius * max(aspect)
            cx, cy = rng.uniform(reach, 1.0 - reach, size=2)
            if all(
                np.hypot(cx - o.cx, cy - o.cy) >= MIN_SEPARATION * (reach + o.radius * max(o.aspect))
                for o in objects
            ):
                objects.append(_Object(int(cls), shape, float(cx), float(cy), radius, angle, aspect, rgb))
                break
    return objects


def _clutter_count(rng: np.random.Generator, low: int, high: int, clutter: float) -> int:
    """A count in [low, high) scaled by ``clutter``; at 1.0 exactly the draw of the default world."""
    return int(rng.integers(round(low * clutter), max(1, round(high * clutter))))


def _background(rng: np.random.Generator, size: int, clutter: float = 1.0) -> np.ndarray:
    """A low-saturation gradient with thin strokes and small blobs."""
    c0 = np.array(_hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.18), rng.uniform(0.3, 0.9)), np.float32)
    c1 = np.array(_hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.18), rng.uniform(0.3, 0.9)), np.float32)
    theta = rng.uniform(0.0, 2.0 * np.pi)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    t = (xs * np.cos(theta) + ys * np.sin(theta) + 1.0) / 2.0
    # No per-pixel grain: it would triple the PNG size (about 12 kB a scene at 128 px without it).
    image = np.clip(c0 + (c1 - c0) * t[..., None], 0, 255).astype(np.uint8)
    scale = size / 128.0
    for _ in range(_clutter_count(rng, 14, 28, clutter)):
        colour = _hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.2), rng.uniform(0.15, 1.0))
        # A short polyline: a random start, then steps of up to a third of the image.
        steps = rng.uniform(-0.33, 0.33, size=(int(rng.integers(2, 5)), 2))
        steps[0] = rng.uniform(0.0, 1.0, size=2)
        points = (np.cumsum(steps, axis=0) * size).astype(np.int32)
        thickness = max(1, round(rng.uniform(0.8, 2.2) * scale))
        cv2.polylines(image, [points], False, colour, thickness, cv2.LINE_AA)
    for _ in range(_clutter_count(rng, 5, 16, clutter)):
        colour = _hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.2), rng.uniform(0.15, 1.0))
        centre = (int(rng.uniform(0, size)), int(rng.uniform(0, size)))
        axes = (max(1, round(rng.uniform(1.5, 5.0) * scale)), max(1, round(rng.uniform(1.5, 5.0) * scale)))
        cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    return image


def _object_mask(obj: _Object, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cos, sin = np.cos(obj.angle), np.sin(obj.angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    for contour, filled in _SHAPES[obj.shape]:
        points = (contour * np.array(obj.aspect)) @ rotation.T * (obj.radius * size)
        points += np.array([obj.cx, obj.cy]) * size
        # 4 bits of sub-pixel precision keep small shapes smooth.
        fixed = np.round(points * 16).astype(np.int32)
        cv2.fillPoly(mask, [fixed], 255 if filled else 0, cv2.LINE_AA, shift=4)
    return mask


def render_scene(
    seed: int, split: str, index: int, image_size: int = 128, world: World = DEFAULT_WORLD
) -> tuple[Image.Image, list[str], list[tuple[str, Box]]]:
    """Render scene ``index`` of ``split``: (RGB image, label names in class order, objects with boxes).

    A box is ``(x0, y0, x1, y1)`` in pixels, x1 and y1 exclusive: the extent of the object's own shape
    (pixels it covers by more than half). Objects are placed so that they overlap by a sliver at most.
    """
    rng = _rng(seed, split, index)
    objects = _layout(rng, world)
    image = _background(rng, image_size, world.clutter).astype(np.float32)
    names = world.class_names
    found: list[tuple[str, Box]] = []
    for obj in objects:
        mask = _object_mask(obj, image_size)
        alpha = (mask.astype(np.float32) / 255.0)[..., None]
        image = image * (1.0 - alpha) + np.array(obj.rgb, np.float32) * alpha
        ys, xs = np.nonzero(mask > 127)
        if xs.size == 0:  # a shape thinner than a pixel at a tiny image size: take any coverage
            ys, xs = np.nonzero(mask)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        found.append((names[obj.cls], box))
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    labels = [name for name in names if any(name == n for n, _ in found)]
    return Image.fromarray(pixels, mode="RGB"), labels, found


def _scene_labels(seed: int, split: str, index: int, world: World = DEFAULT_WORLD) -> list[str]:
    """The labels of a scene without rendering it: the layout comes first in the scene's generator."""
    present = {obj.cls for obj in _layout(_rng(seed, split, index), world)}
    return [name for i, name in enumerate(world.class_names) if i in present]


def _single_positive_rows(rows: list[Row], classes: list[str]) -> list[Row]:
    """The rows with one positive each, drawn by the protocol over the file's rows in file order:
    what loading the file without a ``positive`` column drew before the column was written."""
    index = {name: i for i, name in enumerate(classes)}
    labels = np.zeros((len(rows), len(classes)), dtype=np.uint8)
    for i, row in enumerate(rows):
        labels[i, [index[n] for n in row.labels]] = 1
    drawn = sample_single_positive(labels)
    return [
        Row(row.image, row.labels, positive=[classes[c] for c in np.flatnonzero(drawn[i])])
        for i, row in enumerate(rows)
    ]


def partial_positives(seed: int, index: int, labels: list[str], keep_probability: float) -> list[str]:
    """The annotated labels of training scene ``index`` in a partial world: each true label is kept
    with probability ``keep_probability``, and at least one is (a random one, when none was).

    Drawn from a generator of its own, seeded by (seed, "partial", index), so the scenes and their
    full labels are those of the single-positive world with the same seed."""
    if not labels:
        return []
    rng = _rng(seed, "partial", index)
    keep = rng.random(len(labels)) < keep_probability
    if not keep.any():
        keep[rng.integers(len(labels))] = True
    return [name for name, kept in zip(labels, keep, strict=True) if kept]


def make_synthetic_dataset(
    out: str | Path,
    seed: int = 0,
    train: int = 1200,
    val: int = 300,
    test: int = 600,
    image_size: int = 128,
    progress: bool = True,
    overwrite: bool = False,
    partial: float | None = None,
    world: World = DEFAULT_WORLD,
) -> Path:
    """Write a synthetic data set in the generic format: PNGs under ``out/images/<split>/`` and CSVs.

    The CSVs carry full labels and a ``positive`` column. By default it holds one positive per row,
    drawn by the protocol over each file's rows in file order (exactly what loading the files without
    the column drew before the column was written, so a seed gives the same world as before). A split
    of size 0 gets no CSV (without val.csv, train is split 80/20 by the protocol).

    ``partial`` (a probability p) writes a partial-label world instead: each training row's ``positive``
    holds its labels kept with probability p each, at least one (:func:`partial_positives`); the
    left-out ones are listed in ``out/left_out.csv`` (``image,class``) for scoring only. Validation and
    test rows observe all their labels. Refuses to replace a different data set unless ``overwrite``.
    """
    out = Path(out)
    sizes = {"train": train, "val": val, "test": test}
    if train <= 0 or min(sizes.values()) < 0:
        raise ValueError(f"split sizes must be >= 0 with a non-empty train, got {sizes}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    if partial is not None and not 0.0 < partial <= 1.0:
        raise ValueError(f"the partial keep probability must be in (0, 1], got {partial}")
    full = {
        split: [
            Row(image=f"images/{split}/{index:06d}.png", labels=_scene_labels(seed, split, index, world))
            for index in range(count)
        ]
        for split, count in sizes.items()
        if count > 0
    }
    if partial is None:
        splits = {split: _single_positive_rows(rows, world.class_names) for split, rows in full.items()}
    else:
        splits = {
            split: [
                Row(row.image, row.labels, positive=partial_positives(seed, index, row.labels, partial)
                    if split == "train" else row.labels)
                for index, row in enumerate(rows)
            ]
            for split, rows in full.items()
        }
    # Check before rendering: a refused run must not have overwritten the images of another data set.
    files = render_dataset(world.class_names, splits)
    check_writable(out, files, overwrite)
    total = sum(len(rows) for rows in splits.values())
    with tqdm(total=total, desc="rendering synthetic scenes", unit="img", disable=not progress) as bar:
        for split, rows in splits.items():
            folder = out / "images" / split
            folder.mkdir(parents=True, exist_ok=True)
            for index, row in enumerate(rows):
                image, labels, _ = render_scene(seed, split, index, image_size, world)
                if labels != row.labels:  # both come from _layout: a mismatch is a bug, never data
                    raise RuntimeError(f"scene {split}/{index}: rendered labels differ from the layout's")
                image.save(out / row.image, format="PNG")
                bar.update(1)
    written = write_rendered(out, files)
    left_out = out / LEFT_OUT_FILE
    if partial is None:
        left_out.unlink(missing_ok=True)  # a stale list would score this world against another's labels
    else:
        lines = ["image,class\n"] + [
            f"{row.image},{name}\n" for row in splits["train"] for name in row.labels if name not in row.positives
        ]
        atomic_write_text(left_out, "".join(lines))
    return written
