"""Does an image look like the checkpoint's training world? A distance to its training images' statistics.

What is measured: a small descriptor of the image itself, the square roots of its joint colour histogram
(hue x saturation x value, 8 x 4 x 4 bins) and of its histogram of brightness differences between
neighbouring pixels (8 bins), on a 64 x 64 thumbnail. Calibration stores the mean and the covariance of
the descriptors of the training images, the covariance shrunk towards its average variance (``SHRINK``)
and kept as its leading eigenvectors plus one variance for the rest; the distance of an image is its
Mahalanobis distance to that mean, divided by the descriptor's length. The threshold is a high quantile of
the training images' own distances times a margin.

Three limits on single measures of the thumbnail catch what the distance misses (``LIMITS``), each set at
calibration from a quantile of the training images' own values times a margin, each off where the training
images give it nothing to hold (statistics written before a limit existed have it off):
- the colour floor, on the share of saturated pixels: each hue bin of a training scene is often empty, so a
  grey photo's histogram looks ordinary bin by bin, yet every scene of the synthetic world has coloured shapes;
- the detail floor, on the share of neighbour steps of more than ``DETAIL_STEP`` levels: a blank image has
  none, yet in a world of photos on a grey canvas its histograms sit near an almost empty scene's;
- the roughness ceiling, on the mean step to a neighbour over the mean step to a pixel ``ROUGHNESS_LAG``
  away: about 0.45 for photos and scenes (neighbours alike), about 0.9 for noise (each pixel on its own), whose
  thumbnail, averaged grey, the distance takes for an ordinary textured photo.

Why not the network's own pooled features: on the demo model they do not tell photos from its world (a
photo's features sit close to the training mean: 3 of 18 sample photos flagged, against 13 of 18 with this
descriptor and 18 of 18 with the colour floor added, each with at most 1 false alarm on the 600 test scenes;
docs/method.md, Decisions); on the photos model they flag no blank image and a quarter of scikit-image's
photos (docs/app.md, The photos model). The descriptor does not depend on the architecture and costs a
thumbnail, not a forward pass.

``calibrate_checkpoint`` writes the statistics into a checkpoint's config.json under ``familiarity``;
``spml.inspect.analyze`` reads them into ``result.in_distribution``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from spml.checkpoint import CONFIG_NAME, LoadedModel, read_config
from spml.data.generic import load_dataset
from spml.data.images import ImageLoadError, load_image
from spml.data.synthetic import render_scene
from spml.runtime import atomic_write_text

THUMBNAIL = 64
COLOUR_BINS = (8, 4, 4)  # hue, saturation, value
GRADIENT_BINS = 8  # |neighbour difference| of the value channel, in [0, 0.5)
SHRINK = 0.1  # covariance shrunk towards its average variance: stable with 136 dimensions and ~1,000 images
COMPONENTS = 48  # eigenvectors kept; the rest of the space gets the shrinkage floor as its variance
QUANTILE = 0.99  # of the training images' distances ...
MARGIN = 1.5  # ... times this: the threshold
SATURATED = 0.25  # a thumbnail pixel is saturated above this saturation (HSV, in [0, 1))
DETAIL_STEP = 4  # a neighbour step of the value channel counts as detail above this many levels (of 256)
ROUGHNESS_LAG = 4  # pixels: the far neighbour of the roughness measure
DESCRIPTOR = "sqrt HSV 8x4x4 histogram + sqrt |gradient| 8-bin histogram of a 64x64 thumbnail"


class Measures(NamedTuple):
    """Single measures of an image's thumbnail, each held to a limit (``LIMITS``)."""

    saturated: float  # share of saturated pixels
    detail: float  # share of neighbour steps above DETAIL_STEP levels
    roughness: float  # (mean neighbour step + 1) / (mean step to the pixel ROUGHNESS_LAG away + 1)


@dataclass(frozen=True)
class Limit:
    """A floor (or a ceiling) on one measure: a quantile of the training images' values times a margin."""

    measure: str  # a field of Measures
    floor: bool  # True: values under the limit are another world; False: values over it
    quantile: float
    margin: float
    reason: str  # why an image past the limit is flagged; formatted with value and limit, in percent or not
    percent: bool = True

    @property
    def column(self) -> int:
        """The measure's column in the (N, 3) arrays of measures."""
        return Measures._fields.index(self.measure)

    def fit(self, measures: np.ndarray) -> float:
        return float(np.quantile(measures[:, self.column], self.quantile)) * self.margin

    def passes(self, values: np.ndarray, limit: float) -> np.ndarray:
        return values >= limit if self.floor else values <= limit

    def explain(self, value: float, limit: float) -> str:
        scale = 100.0 if self.percent else 1.0
        return self.reason.format(value=scale * value, limit=scale * limit)


# The limits by their config.json key, in the order an image is tested against them.
LIMITS = {
    "colour_floor": Limit("saturated", True, 0.01, 0.5,
                          "it has almost no strong colour ({value:.1f}% of its pixels saturated, under the floor "
                          "of {limit:.1f}% set by the training images)"),
    "detail_floor": Limit("detail", True, 0.01, 0.5,
                          "it is almost flat ({value:.1f}% of its neighbouring pixels differ, under the floor of "
                          "{limit:.1f}% set by the training images)"),
    "roughness_ceiling": Limit("roughness", False, 0.99, 1.25,
                               "its pixels vary like noise, each unlike its neighbours (roughness {value:.2f}, over "
                               "the ceiling of {limit:.2f} set by the training images)", percent=False),
}
# What a limit is where the statistics do not hold it (written before it existed): a test that passes all.
LIMIT_OFF = {"colour_floor": 0.0, "detail_floor": 0.0, "roughness_ceiling": math.inf}


def _thumbnail_hsv(picture: Image.Image) -> np.ndarray:
    """The THUMBNAIL x THUMBNAIL thumbnail in HSV, uint8: a channel's level c stands for c / 256 in [0, 1)."""
    small = picture.convert("RGB").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR)
    return np.asarray(small.convert("HSV"))


def features(picture: Image.Image) -> tuple[np.ndarray, Measures]:
    """The image's descriptor, (136,) float64, and its measures, from one thumbnail."""
    hsv = _thumbnail_hsv(picture)
    value = hsv[..., 2].astype(np.int32)
    steps = np.concatenate([np.abs(np.diff(value, axis=1)).ravel(), np.abs(np.diff(value, axis=0)).ravel()])
    lag = ROUGHNESS_LAG
    far = np.concatenate([np.abs(value[:, lag:] - value[:, :-lag]).ravel(), np.abs(value[lag:] - value[:-lag]).ravel()])
    # Saturation c / 256 > SATURATED, in integer levels (exact: c is an integer).
    measures = Measures(saturated=float((hsv[..., 1] > int(SATURATED * 256)).mean()),
                        detail=float((steps > DETAIL_STEP).mean()),
                        roughness=float((steps.mean() + 1.0) / (far.mean() + 1.0)))
    return _descriptor(hsv, steps), measures


def _descriptor(hsv: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The histograms of ``hsv`` and of ``steps``, the value channel's neighbour steps (in levels)."""
    # Integer arithmetic on the uint8 levels throughout: the bin of level c among b bins of [0, 1) is
    # floor(c / 256 * b) = c * b // 256: the same numbers as in floating point, 30% faster.
    levels = hsv.astype(np.int32)
    bins = COLOUR_BINS
    index = [levels[..., channel] * count // 256 for channel, count in enumerate(bins)]
    flat = (index[0] * bins[1] + index[1]) * bins[2] + index[2]
    colours = np.bincount(flat.ravel(), minlength=bins[0] * bins[1] * bins[2]) / flat.size
    # np.histogram(steps / 256, GRADIENT_BINS, range=(0, 0.5)): steps over 128 (0.5) are left out, and
    # 128 itself falls in the last bin (a closed one).
    index_of_step = steps * (2 * GRADIENT_BINS) // 256
    index_of_step[steps == 128] = GRADIENT_BINS - 1
    gradients = np.bincount(index_of_step, minlength=GRADIENT_BINS + 64)[:GRADIENT_BINS] / steps.size
    return np.sqrt(np.concatenate([colours, gradients]))


@dataclass(frozen=True)
class ImageStatistics:
    """Mean and (shrunk, truncated) covariance of the training descriptors, the threshold, and the limits."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (K, D) leading eigenvectors of the shrunk covariance
    variances: np.ndarray  # (K,) their eigenvalues
    floor: float  # the variance of every other direction
    threshold: float
    images: int
    data: str = ""
    split: str = ""
    colour_floor: float = LIMIT_OFF["colour_floor"]  # LIMITS: a limit at its LIMIT_OFF value tests nothing
    detail_floor: float = LIMIT_OFF["detail_floor"]
    roughness_ceiling: float = LIMIT_OFF["roughness_ceiling"]

    def distance(self, descriptors: np.ndarray) -> np.ndarray:
        """(N,) Mahalanobis distance / D of each row of ``descriptors`` (N, D)."""
        centred = np.atleast_2d(descriptors) - self.mean
        projected = centred @ self.components.T
        rest = (centred ** 2).sum(axis=1) - (projected ** 2).sum(axis=1)
        return ((projected ** 2 / self.variances).sum(axis=1) + np.maximum(rest, 0.0) / self.floor) / centred.shape[1]

    def within_limits(self, measures: np.ndarray) -> dict[str, np.ndarray]:
        """For each limit, (N,) bool: the rows of ``measures`` (N, 3) that it lets through."""
        measures = np.atleast_2d(np.asarray(measures, dtype=np.float64))
        return {key: limit.passes(measures[:, limit.column], getattr(self, key)) for key, limit in LIMITS.items()}

    def familiar(self, descriptors: np.ndarray, measures: np.ndarray) -> np.ndarray:
        """(N,) bool: within the distance threshold and every limit."""
        return np.logical_and.reduce([self.distance(descriptors) <= self.threshold,
                                      *self.within_limits(measures).values()])

    def in_distribution(self, picture: Image.Image) -> tuple[bool, float, str]:
        """Whether ``picture`` looks like the training images, its distance, and why not ("" when it does)."""
        descriptor, measures = features(picture)
        distance = float(self.distance(descriptor)[0])
        if distance > self.threshold:
            return False, distance, (f"its colours and textures are far from the training images' (distance "
                                     f"{distance:.2f} > {self.threshold:.2f})")
        for key, passed in self.within_limits(np.array(measures)).items():
            if not passed[0]:
                limit = LIMITS[key]
                return False, distance, limit.explain(getattr(measures, limit.measure), getattr(self, key))
        return True, distance, ""

    def to_config(self) -> dict[str, Any]:
        limits = {key: (None if math.isinf(getattr(self, key)) else getattr(self, key)) for key in LIMITS}
        return {"descriptor": DESCRIPTOR, "distance": "Mahalanobis / D, shrunk covariance",
                "mean": self.mean.round(6).tolist(), "components": self.components.round(6).tolist(),
                "variances": self.variances.tolist(), "floor": self.floor, "threshold": self.threshold,
                "quantile": QUANTILE, "margin": MARGIN, "images": self.images, "data": self.data, "split": self.split,
                **limits, "saturated": SATURATED, "detail_step": DETAIL_STEP, "roughness_lag": ROUGHNESS_LAG,
                "limits": {key: {"measure": limit.measure, "quantile": limit.quantile, "margin": limit.margin}
                           for key, limit in LIMITS.items()}}

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> ImageStatistics | None:
        if not config:
            return None
        # A limit absent (statistics made before it existed) or null is off.
        limits = {key: float(LIMIT_OFF[key] if config.get(key) is None else config[key]) for key in LIMITS}
        return cls(mean=np.asarray(config["mean"], dtype=np.float64),
                   components=np.asarray(config["components"], dtype=np.float64),
                   variances=np.asarray(config["variances"], dtype=np.float64), floor=float(config["floor"]),
                   threshold=float(config["threshold"]), images=int(config.get("images", 0)),
                   data=str(config.get("data", "")), split=str(config.get("split", "")), **limits)


def fit_statistics(descriptors: np.ndarray, data: str = "", split: str = "",
                   measures: np.ndarray | None = None) -> ImageStatistics:
    """The statistics of ``descriptors`` (N, D), with the threshold set on their own distances, and the
    limits on ``measures`` (N, 3), the images' Measures (None: no limit)."""
    if descriptors.shape[0] < 2:
        raise ValueError(f"calibration needs at least 2 images, got {descriptors.shape[0]}")
    mean = descriptors.mean(axis=0)
    covariance = np.cov(descriptors, rowvar=False)
    floor = SHRINK * float(np.trace(covariance)) / covariance.shape[0]
    eigenvalues, eigenvectors = np.linalg.eigh((1.0 - SHRINK) * covariance)
    order = np.argsort(eigenvalues)[::-1][:COMPONENTS]
    statistics = ImageStatistics(mean, eigenvectors[:, order].T, eigenvalues[order] + floor, floor, 0.0,
                                 descriptors.shape[0], data, split)
    threshold = float(np.quantile(statistics.distance(descriptors), QUANTILE)) * MARGIN
    limits = {} if measures is None else {key: limit.fit(np.atleast_2d(measures)) for key, limit in LIMITS.items()}
    return replace(statistics, threshold=threshold, **limits)


# Flat images that no world of photos or scenes holds: black, white, greys, strong and pale colours.
BLANK_COLOURS = ((0, 0, 0), (255, 255, 255), (128, 128, 128), (200, 200, 200), (60, 60, 60), (255, 0, 0),
                 (0, 128, 255), (20, 160, 40), (240, 230, 200), (124, 116, 104))


def other_worlds(size: int, count: int = 100, seed: int = 0) -> dict[str, list[Image.Image]]:
    """Images of other worlds at ``size`` px, to count what the notice catches: ``count`` test scenes of the
    synthetic world, ``count`` images of uniform noise (half in colour, half grey), and flat images."""
    rng = np.random.default_rng(seed)
    noise = [rng.integers(0, 256, (size, size, 3) if index % 2 == 0 else (size, size), dtype=np.uint8)
             for index in range(count)]
    return {"synthetic scenes": [render_scene(seed, "test", index, size)[0] for index in range(count)],
            "uniform noise": [Image.fromarray(pixels).convert("RGB") for pixels in noise],
            "blank images": [Image.new("RGB", (size, size), colour) for colour in BLANK_COLOURS]}


def statistics_of(model: LoadedModel) -> ImageStatistics | None:
    """The checkpoint's statistics (None when it holds none), parsed once per loaded model."""
    parsed = model.__dict__.get("_familiarity_parsed")
    if parsed is None or parsed[0] is not model.familiarity:
        parsed = (model.familiarity, ImageStatistics.from_config(model.familiarity))
        model.__dict__["_familiarity_parsed"] = parsed  # a cache beside the dataclass's fields
    return parsed[1]


def describe(pictures: Iterable[Image.Image], what: str = "the images") -> tuple[np.ndarray, np.ndarray]:
    """(N, D) descriptors and (N, 3) measures of ``pictures``; a ValueError naming ``what`` when there are none."""
    described = [features(picture) for picture in pictures]
    if not described:
        raise ValueError(f"no readable image in {what}")
    return np.stack([descriptor for descriptor, _ in described]), np.array([m for _, m in described], dtype=np.float64)


def split_features(data: str | Path, split: str, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) descriptors and (N, 3) measures of every readable image of ``split`` of the data set at
    ``data``; an image that cannot be decoded is left out, as training's broken-batch handling leaves it out."""

    def readable() -> Iterator[Image.Image]:
        for path in tqdm(load_dataset(data, skip_bad=True).split(split).images, desc=f"describing {split}",
                         unit="image", disable=not progress):
            try:
                yield load_image(path)
            except ImageLoadError:
                continue

    return describe(readable(), f"split {split!r} of {data}")


def calibrate_checkpoint(checkpoint: str | Path, model: LoadedModel, data: str | Path | Sequence[str | Path],
                         split: str = "train", progress: bool = True,
                         log: Callable[[str], None] = print) -> ImageStatistics:
    """Compute the statistics of ``split`` of ``data`` (one data set, or several taken together: a world of
    scenes and of the single photos they are made of) and write them into the local checkpoint's
    config.json (atomically; every other entry kept) and into ``model``, the checkpoint loaded."""
    directory = Path(checkpoint)
    config = read_config(directory)
    sources = [data] if isinstance(data, (str, Path)) else list(data)
    parts = [split_features(source, split, progress) for source in sources]
    statistics = fit_statistics(np.concatenate([descriptors for descriptors, _ in parts]),
                                " + ".join(str(source) for source in sources), split,
                                np.concatenate([measures for _, measures in parts]))
    config["familiarity"] = statistics.to_config()
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    model.familiarity = config["familiarity"]
    limits = ", ".join(f"{key.replace('_', ' ')} {getattr(statistics, key):.4f}" for key in LIMITS)
    log(f"{directory / CONFIG_NAME}: image statistics of {statistics.images} images of {split}, "
        f"threshold {statistics.threshold:.3f}, {limits}")
    return statistics
