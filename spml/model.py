"""Classifiers whose single forward pass gives the logits and everything the class maps need.

Every model returns a :class:`ModelOutput`; ``model.class_maps(output, classes)`` turns that output
into class activation maps without running the backbone again.

This module is the interface and the registry only: it knows no architecture by name. Each
architecture lives in its own module of :mod:`spml.architectures` and registers itself there with
:func:`register_architecture`, so that a checkpoint can rebuild it from ``config.json`` alone; the
``spml`` package imports :mod:`spml.architectures`, so every built-in architecture is registered
whenever any part of spml is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


def full_precision(device_type: str) -> torch.autocast:
    """A region that autocast does not reach: under mixed precision only the backbone runs in
    bfloat16; the head, the logits and the class maps stay float32, so the gap, the running
    thresholds and the evaluation ranking see the same numbers as an fp32 run of those features."""
    return torch.autocast(device_type=device_type, enabled=False)


@dataclass
class ModelOutput:
    """What one forward pass yields: logits and the state the class maps are made from."""

    logits: Tensor  # (B, C)
    features: Tensor  # (B, D, h, w), the last feature map, float32
    attention: Tensor | None = None  # (B, C, h*w), per-class attention (Query2Label only)


class SPMLModel(nn.Module):
    """Uniform interface: ``forward(images) -> ModelOutput`` and ``class_maps(output, classes)``."""

    arch: str
    num_classes: int
    # The input normalisation (mean, std) the pretrained weights expect; None: ImageNet's.
    input_normalization: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None

    def class_maps(self, output: ModelOutput, classes: Tensor | None = None, bias: bool = True) -> Tensor:
        """Raw class activation maps: (B, h, w) for ``classes`` (one class index per image), or
        (B, C, h, w) for every class when ``classes`` is None. ``bias=False`` leaves the head's bias
        out (the CALR code's form); models whose maps hold no bias ignore it."""
        raise NotImplementedError

    def arch_config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this architecture (stored in config.json)."""
        raise NotImplementedError

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, head parameters): the head trains with a larger learning rate."""
        raise NotImplementedError


class LinearCAMModel(SPMLModel):
    """Backbone + global average pooling + linear head; CAM_c = W_c . F + b_c.

    With the bias inside the map, average-pooling CAM_c gives exactly the logit z_c, so the map and
    the logit are two views of one computation.
    """

    def __init__(self, arch: str, backbone: nn.Module, feature_dim: int, num_classes: int, **config: Any):
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)
        self._config = config

    def forward(self, images: Tensor) -> ModelOutput:
        features = self.backbone(images)
        with full_precision(features.device.type):
            features = features.float()
            logits = self.head(features.mean(dim=(2, 3)))
        return ModelOutput(logits=logits, features=features)

    def class_maps(self, output: ModelOutput, classes: Tensor | None = None, bias: bool = True) -> Tensor:
        features = output.features
        with full_precision(features.device.type):
            if classes is None:
                maps = torch.einsum("bdhw,cd->bchw", features, self.head.weight)
                return maps + self.head.bias[None, :, None, None] if bias else maps
            weights = self.head.weight[classes]  # (B, D): only the wanted class of each image
            maps = torch.einsum("bdhw,bd->bhw", features, weights)
            return maps + self.head.bias[classes][:, None, None] if bias else maps

    def arch_config(self) -> dict[str, Any]:
        return {"arch": self.arch, "num_classes": self.num_classes, **self._config}

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        return list(self.backbone.parameters()), list(self.head.parameters())


# name -> builder(num_classes, pretrained=False, **options); filled by the modules of spml.architectures.
ARCHITECTURES: dict[str, Callable[..., SPMLModel]] = {}


def register_architecture(name: str, builder: Callable[..., SPMLModel] | None = None):
    """Register ``builder(num_classes, pretrained=False, **options) -> SPMLModel`` under ``name``.

    ``register_architecture(name, builder)`` registers and returns ``builder``;
    ``@register_architecture(name)`` above a builder's definition does the same as a decorator."""

    def register(function: Callable[..., SPMLModel]) -> Callable[..., SPMLModel]:
        ARCHITECTURES[name] = function
        return function

    return register if builder is None else register(builder)


def create_model(arch: str, num_classes: int, pretrained: bool = False, **kwargs: Any) -> SPMLModel:
    """Build an architecture by name; ``kwargs`` are its own options (e.g. ``width`` for compact)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(sorted(ARCHITECTURES))}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    return ARCHITECTURES[arch](num_classes=num_classes, pretrained=pretrained, **kwargs)
