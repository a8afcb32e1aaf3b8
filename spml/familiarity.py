"""Does an image look like the checkpoint's training world? A distance to its training images' statistics.

What is measured: a small descriptor of the image itself, the square roots of its joint colour histogram
(hue x saturation x value, 8 x 4 x 4 bins) and of its histogram of brightness differences between
neighbouring pixels (8 bins), on a 64 x 64 thumbnail. Calibration stores the mean and the covariance of
the descriptors of the training images, the covariance shrunk towards its average variance (``SHRINK``)
and kept as its leading eigenvectors plus one variance for the rest; the distance of an image is its
Mahalanobis distance to that mean, divided by the descriptor's length. The threshold is a high quantile of
the training images' own distances times a margin.

A second test catches what the distance misses: images with (almost) no saturated colour. Each hue bin of a
training scene is often empty, so a grey photo's histogram looks ordinary bin by bin, yet every scene of the
synthetic world has coloured shapes. Calibration stores a colour floor, a low quantile of the training
images' share of saturated pixels times a margin (0 where the training images themselves have none, which
turns the test off); an image whose share is below it is taken for another world too.

Why not the network's own pooled features: on the demo model they do not tell photos from its world (a
photo's features sit close to the training mean: 3 of 18 sample photos flagged, against 13 of 18 with this
descriptor and 18 of 18 with the colour floor added, each with at most 1 false alarm on the 600 test scenes;
docs/method.md, Decisions). The descriptor does not depend on the architecture and costs a thumbnail, not a
forward pass.

``calibrate_checkpoint`` writes the statistics into a checkpoint's config.json under ``familiarity``;
``spml.inspect.analyze`` reads them into ``result.in_distribution``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from spml.checkpoint import CONFIG_NAME, LoadedModel, read_config
from spml.data.generic import load_dataset
from spml.data.images import ImageLoadError, load_image
from spml.runtime import atomic_write_text

THUMBNAIL = 64
COLOUR_BINS = (8, 4, 4)  # hue, saturation, value
GRADIENT_BINS = 8  # |neighbour difference| of the value channel, in [0, 0.5)
SHRINK = 0.1  # covariance shrunk towards its average variance: stable with 136 dimensions and ~1,000 images
COMPONENTS = 48  # eigenvectors kept; the rest of the space gets the shrinkage floor as its variance
QUANTILE = 0.99  # of the training images' distances ...
MARGIN = 1.5  # ... times this: the threshold
SATURATED = 0.25  # a thumbnail pixel is saturated above this saturation (HSV, in [0, 1))
COLOUR_QUANTILE = 0.01  # of the training images' saturated shares ...
COLOUR_MARGIN = 0.5  # ... times this: the colour floor
DESCRIPTOR = "sqrt HSV 8x4x4 histogram + sqrt |gradient| 8-bin histogram of a 64x64 thumbnail"


def _thumbnail_hsv(picture: Image.Image) -> np.ndarray:
    """The THUMBNAIL x THUMBNAIL thumbnail in HSV, uint8: a channel's level c stands for c / 256 in [0, 1)."""
    small = picture.convert("RGB").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR)
    return np.asarray(small.convert("HSV"))


def features(picture: Image.Image) -> tuple[np.ndarray, float]:
    """The image's descriptor, (136,) float64, and its share of saturated pixels, from one thumbnail."""
    hsv = _thumbnail_hsv(picture)
    # Saturation c / 256 > SATURATED, in integer levels (exact: c is an integer).
    return _descriptor(hsv), float((hsv[..., 1] > int(SATURATED * 256)).mean())


def _descriptor(hsv: np.ndarray) -> np.ndarray:
    # Integer arithmetic on the uint8 levels throughout: the bin of level c among b bins of [0, 1) is
    # floor(c / 256 * b) = c * b // 256: the same numbers as in floating point, 30% faster.
    levels = hsv.astype(np.int32)
    bins = COLOUR_BINS
    index = [levels[..., channel] * count // 256 for channel, count in enumerate(bins)]
    flat = (index[0] * bins[1] + index[1]) * bins[2] + index[2]
    colours = np.bincount(flat.ravel(), minlength=bins[0] * bins[1] * bins[2]) / flat.size
    value = levels[..., 2]
    steps = np.concatenate([np.abs(np.diff(value, axis=1)).ravel(), np.abs(np.diff(value, axis=0)).ravel()])
    # np.histogram(steps / 256, GRADIENT_BINS, range=(0, 0.5)): steps over 128 (0.5) are left out, and
    # 128 itself falls in the last bin (a closed one).
    index_of_step = steps * (2 * GRADIENT_BINS) // 256
    index_of_step[steps == 128] = GRADIENT_BINS - 1
    gradients = np.bincount(index_of_step, minlength=GRADIENT_BINS + 64)[:GRADIENT_BINS] / steps.size
    return np.sqrt(np.concatenate([colours, gradients]))


@dataclass(frozen=True)
class ImageStatistics:
    """Mean and (shrunk, truncated) covariance of the training descriptors, and the threshold."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (K, D) leading eigenvectors of the shrunk covariance
    variances: np.ndarray  # (K,) their eigenvalues
    floor: float  # the variance of every other direction
    threshold: float
    images: int
    data: str = ""
    split: str = ""
    colour_floor: float = 0.0  # a smaller share of saturated pixels is another world; 0: no such test

    def distance(self, descriptors: np.ndarray) -> np.ndarray:
        """(N,) Mahalanobis distance / D of each row of ``descriptors`` (N, D)."""
        centred = np.atleast_2d(descriptors) - self.mean
        projected = centred @ self.components.T
        rest = (centred ** 2).sum(axis=1) - (projected ** 2).sum(axis=1)
        return ((projected ** 2 / self.variances).sum(axis=1) + np.maximum(rest, 0.0) / self.floor) / centred.shape[1]

    def familiar(self, descriptors: np.ndarray, shares: np.ndarray) -> np.ndarray:
        """(N,) bool: within the distance threshold and at or above the colour floor."""
        return (self.distance(descriptors) <= self.threshold) & (np.asarray(shares) >= self.colour_floor)

    def in_distribution(self, picture: Image.Image) -> tuple[bool, float, str]:
        """Whether ``picture`` looks like the training images, its distance, and why not ("" when it does)."""
        descriptor, share = features(picture)
        distance = float(self.distance(descriptor)[0])
        if distance > self.threshold:
            return False, distance, (f"its colours and textures are far from the training images' (distance "
                                     f"{distance:.2f} > {self.threshold:.2f})")
        if share < self.colour_floor:
            return False, distance, (f"it has almost no strong colour ({100 * share:.1f}% of its pixels saturated, "
                                     f"under the floor of {100 * self.colour_floor:.1f}% set by the training images)")
        return True, distance, ""

    def to_config(self) -> dict[str, Any]:
        return {"descriptor": DESCRIPTOR, "distance": "Mahalanobis / D, shrunk covariance",
                "mean": self.mean.round(6).tolist(), "components": self.components.round(6).tolist(),
                "variances": self.variances.tolist(), "floor": self.floor, "threshold": self.threshold,
                "quantile": QUANTILE, "margin": MARGIN, "images": self.images, "data": self.data, "split": self.split,
                "colour_floor": self.colour_floor, "saturated": SATURATED, "colour_quantile": COLOUR_QUANTILE,
                "colour_margin": COLOUR_MARGIN}

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> ImageStatistics | None:
        if not config:
            return None
        return cls(mean=np.asarray(config["mean"], dtype=np.float64),
                   components=np.asarray(config["components"], dtype=np.float64),
                   variances=np.asarray(config["variances"], dtype=np.float64), floor=float(config["floor"]),
                   threshold=float(config["threshold"]), images=int(config.get("images", 0)),
                   data=str(config.get("data", "")), split=str(config.get("split", "")),
                   colour_floor=float(config.get("colour_floor", 0.0)))  # statistics made before the test: off


def fit_statistics(descriptors: np.ndarray, data: str = "", split: str = "",
                   shares: np.ndarray | None = None) -> ImageStatistics:
    """The statistics of ``descriptors`` (N, D), with the threshold set on their own distances, and the
    colour floor on ``shares`` (N,), the images' shares of saturated pixels (None: no colour test)."""
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
    floor = 0.0 if shares is None else float(np.quantile(shares, COLOUR_QUANTILE)) * COLOUR_MARGIN
    return replace(statistics, threshold=threshold, colour_floor=floor)


# scikit-image's sample photographs (shipped in its wheel), for measuring how often the notice is right.
SAMPLE_PHOTOS = ("astronaut", "camera", "cat", "chelsea", "coffee", "rocket", "moon", "coins", "brick", "grass",
                 "gravel", "hubble_deep_field", "retina", "immunohistochemistry", "cell", "page", "text", "clock")


def sample_photos() -> dict[str, Image.Image]:
    """scikit-image's sample photographs by name (a dev dependency: ImportError without it)."""
    from skimage import data

    return {name: Image.fromarray(getattr(data, name)()).convert("RGB") for name in SAMPLE_PHOTOS}


def statistics_of(model: LoadedModel) -> ImageStatistics | None:
    """The checkpoint's statistics (None when it holds none), parsed once per loaded model."""
    parsed = model.__dict__.get("_familiarity_parsed")
    if parsed is None or parsed[0] is not model.familiarity:
        parsed = (model.familiarity, ImageStatistics.from_config(model.familiarity))
        model.__dict__["_familiarity_parsed"] = parsed  # a cache beside the dataclass's fields
    return parsed[1]


def split_features(data: str | Path, split: str, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) descriptors and (N,) saturated shares of every readable image of ``split`` of the data set at
    ``data``; an image that cannot be decoded is left out, as training's broken-batch handling leaves it out."""
    descriptors, shares = [], []
    for path in tqdm(load_dataset(data, skip_bad=True).split(split).images, desc=f"describing {split}",
                     unit="image", disable=not progress):
        try:
            descriptor, share = features(load_image(path))
        except ImageLoadError:
            continue
        descriptors.append(descriptor)
        shares.append(share)
    if not descriptors:
        raise ValueError(f"no readable image in split {split!r} of {data}")
    return np.stack(descriptors), np.array(shares)


def calibrate_checkpoint(checkpoint: str | Path, model: LoadedModel, data: str | Path, split: str = "train",
                         progress: bool = True, log: Callable[[str], None] = print) -> ImageStatistics:
    """Compute the statistics of ``split`` and write them into the local checkpoint's config.json
    (atomically; every other entry kept) and into ``model``, the checkpoint loaded."""
    directory = Path(checkpoint)
    config = read_config(directory)
    descriptors, shares = split_features(data, split, progress)
    statistics = fit_statistics(descriptors, str(data), split, shares)
    config["familiarity"] = statistics.to_config()
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    model.familiarity = config["familiarity"]
    log(f"{directory / CONFIG_NAME}: image statistics of {statistics.images} images of {split}, "
        f"threshold {statistics.threshold:.3f}, colour floor {statistics.colour_floor:.4f}")
    return statistics
