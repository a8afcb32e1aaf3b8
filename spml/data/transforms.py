"""Image transforms of the method: the weak view, the strong view and the evaluation view."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def input_normalization(network: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the inputs ``network`` expects: its ``input_normalization`` where its pretrained
    weights ask for their own (EfficientNet-Lite's TensorFlow weights), else ImageNet's."""
    own = getattr(network, "input_normalization", None)
    return (tuple(own[0]), tuple(own[1])) if own is not None else (IMAGENET_MEAN, IMAGENET_STD)


def _finish(mean: Sequence[float], std: Sequence[float]) -> list[Callable[[Any], Any]]:
    return [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]


def weak_transform(
    image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> T.Compose:
    """Resize to (S, S) (no crop: the CAM mask must cover the whole image), random flip, normalise."""
    return T.Compose([T.Resize((image_size, image_size)), T.RandomHorizontalFlip(), *_finish(mean, std)])


def strong_transform(
    image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> T.Compose:
    """RandAugment(3 ops, magnitude 5) on the original image, then the weak pipeline (its own flip)."""
    return T.Compose(
        [T.RandAugment(num_ops=3, magnitude=5), *weak_transform(image_size, mean, std).transforms]
    )


def eval_transform(
    image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> T.Compose:
    """Resize to (S, S) and normalise: what validation, test and the app see."""
    return T.Compose([T.Resize((image_size, image_size)), *_finish(mean, std)])
