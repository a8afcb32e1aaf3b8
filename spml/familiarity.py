"""Does an image look like the checkpoint's training world? A distance to its training images' statistics.

What is measured: a small descriptor of the image itself, the square roots of its joint colour histogram
(hue x saturation x value, 8 x 4 x 4 bins) and of its histogram of brightness differences between
neighbouring pixels (8 bins), on a 64 x 64 thumbnail. Calibration stores the mean and the covariance of
the descriptors of the training images, the covariance shrunk towards its average variance (``SHRINK``)
and kept as its leading eigenvectors plus one variance for the rest; the distance of an image is its
Mahalanobis distance to that mean, divided by the descriptor's length. The threshold is a high quantile of
the training images' own distances times a margin.

Why not the network's own pooled features: on the demo model they do not tell photos from its world (a
photo's features sit close to the training mean: 3 of 18 sample photos flagged, against 13 of 18 with this
descriptor, each with no false alarm on the 600 test scenes; README, "Decisions"). The descriptor does not
depend on the architecture and costs a thumbnail, not a forward pass.

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
DESCRIPTOR = "sqrt HSV 8x4x4 histogram + sqrt |gradient| 8-bin histogram of a 64x64 thumbnail"


def describe(picture: Image.Image) -> np.ndarray:
    """The image's descriptor: (136,) float64."""
    small = picture.convert("RGB").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR)
    hsv = np.asarray(small.convert("HSV"), dtype=np.float32) / 256.0
    bins = np.array(COLOUR_BINS)
    index = (hsv * bins).astype(np.int64)
    flat = (index[..., 0] * bins[1] + index[..., 1]) * bins[2] + index[..., 2]
    colours = np.bincount(flat.ravel(), minlength=int(bins.prod())) / flat.size
    value = hsv[..., 2]
    steps = np.concatenate([np.abs(np.diff(value, axis=1)).ravel(), np.abs(np.diff(value, axis=0)).ravel()])
    # np.histogram(steps, GRADIENT_BINS, range=(0, 0.5)), 5x faster: steps over 0.5 are left out, and 0.5
    # itself falls in the last bin (a closed one).
    index = (steps * (GRADIENT_BINS / 0.5)).astype(np.int64)
    index[steps == 0.5] = GRADIENT_BINS - 1
    gradients = np.bincount(index, minlength=GRADIENT_BINS + 64)[:GRADIENT_BINS] / steps.size
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

    def distance(self, descriptors: np.ndarray) -> np.ndarray:
        """(N,) Mahalanobis distance / D of each row of ``descriptors`` (N, D)."""
        centred = np.atleast_2d(descriptors) - self.mean
        projected = centred @ self.components.T
        rest = (centred ** 2).sum(axis=1) - (projected ** 2).sum(axis=1)
        return ((projected ** 2 / self.variances).sum(axis=1) + np.maximum(rest, 0.0) / self.floor) / centred.shape[1]

    def in_distribution(self, picture: Image.Image) -> tuple[bool, float]:
        distance = float(self.distance(describe(picture))[0])
        return distance <= self.threshold, distance

    def to_config(self) -> dict[str, Any]:
        return {"descriptor": DESCRIPTOR, "distance": "Mahalanobis / D, shrunk covariance",
                "mean": self.mean.round(6).tolist(), "components": self.components.round(6).tolist(),
                "variances": self.variances.tolist(), "floor": self.floor, "threshold": self.threshold,
                "quantile": QUANTILE, "margin": MARGIN, "images": self.images, "data": self.data, "split": self.split}

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> ImageStatistics | None:
        if not config:
            return None
        return cls(mean=np.asarray(config["mean"], dtype=np.float64),
                   components=np.asarray(config["components"], dtype=np.float64),
                   variances=np.asarray(config["variances"], dtype=np.float64), floor=float(config["floor"]),
                   threshold=float(config["threshold"]), images=int(config.get("images", 0)),
                   data=str(config.get("data", "")), split=str(config.get("split", "")))


def fit_statistics(descriptors: np.ndarray, data: str = "", split: str = "") -> ImageStatistics:
    """The statistics of ``descriptors`` (N, D), with the threshold set on their own distances."""
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
    return replace(statistics, threshold=threshold)


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


def split_descriptors(data: str | Path, split: str, progress: bool = True) -> np.ndarray:
    """(N, D) descriptors of every readable image of ``split`` of the data set at ``data``; an image that
    cannot be decoded is left out, as training's broken-batch handling leaves it out."""
    descriptors = []
    for path in tqdm(load_dataset(data, skip_bad=True).split(split).images, desc=f"describing {split}",
                     unit="image", disable=not progress):
        try:
            descriptors.append(describe(load_image(path)))
        except ImageLoadError:
            continue
    if not descriptors:
        raise ValueError(f"no readable image in split {split!r} of {data}")
    return np.stack(descriptors)


def calibrate_checkpoint(checkpoint: str | Path, model: LoadedModel, data: str | Path, split: str = "train",
                         progress: bool = True, log: Callable[[str], None] = print) -> ImageStatistics:
    """Compute the statistics of ``split`` and write them into the local checkpoint's config.json
    (atomically; every other entry kept) and into ``model``, the checkpoint loaded."""
    directory = Path(checkpoint)
    config = read_config(directory)
    statistics = fit_statistics(split_descriptors(data, split, progress), str(data), split)
    config["familiarity"] = statistics.to_config()
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    model.familiarity = config["familiarity"]
    log(f"{directory / CONFIG_NAME}: image statistics of {statistics.images} images of {split}, "
        f"threshold {statistics.threshold:.3f}")
    return statistics
