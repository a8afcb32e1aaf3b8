"""Classifiers whose single forward pass gives the logits and everything the class maps need.

Every model returns a :class:`ModelOutput`; ``model.class_maps(output, classes)`` turns that output
into class activation maps without running the backbone again. Architectures register themselves in
``ARCHITECTURES`` so that a checkpoint can rebuild them from ``config.json`` alone.
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


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def compact_backbone(width: int = 32) -> tuple[nn.Module, int]:
    """A small VGG-style network of output stride 16, trainable from scratch on a CPU in minutes.

    Stride 16 (not 32) keeps the CAM at 8x8 for a 128 px input, enough detail to separate objects.
    """
    channels = [width, 2 * width, 4 * width, 8 * width]
    layers: list[nn.Module] = []
    in_channels = 3
    for out_channels in channels:
        layers += [_conv_bn_relu(in_channels, out_channels, 2), _conv_bn_relu(out_channels, out_channels, 1)]
        in_channels = out_channels
    return nn.Sequential(*layers), in_channels


_RESNET_FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}


def resnet_backbone(name: str, pretrained: bool) -> tuple[nn.Module, int]:
    """A torchvision ResNet without its pooling and classifier (output stride 32)."""
    import torchvision

    weights = None
    if pretrained:
        # IMAGENET1K_V1 is what `pretrained=True` gave the reference implementations.
        weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    try:
        network = torchvision.models.get_model(name, weights=weights)
    except Exception as error:  # noqa: BLE001 - any download failure gets the same advice
        raise RuntimeError(
            f"could not load the ImageNet weights of {name} ({type(error).__name__}: {error}). "
            "Put the weights file in the torch hub cache ($TORCH_HOME/hub/checkpoints), "
            "or train from scratch with --no-pretrained."
        ) from error
    backbone = nn.Sequential(*list(network.children())[:-2])
    return backbone, _RESNET_FEATURE_DIMS[name]


def _build_compact(num_classes: int, pretrained: bool = False, width: int = 32) -> SPMLModel:
    if pretrained:
        raise ValueError("the compact backbone has no pretrained weights; use --no-pretrained")
    backbone, dim = compact_backbone(width)
    return LinearCAMModel("compact", backbone, dim, num_classes, width=width)


def _resnet_builder(name: str) -> Callable[..., SPMLModel]:
    def build(num_classes: int, pretrained: bool = False) -> SPMLModel:
        backbone, dim = resnet_backbone(name, pretrained)
        return LinearCAMModel(name, backbone, dim, num_classes)

    return build


ARCHITECTURES: dict[str, Callable[..., SPMLModel]] = {
    "compact": _build_compact,
    **{name: _resnet_builder(name) for name in _RESNET_FEATURE_DIMS},
}


def register_architecture(name: str, builder: Callable[..., SPMLModel]) -> None:
    ARCHITECTURES[name] = builder


def create_model(arch: str, num_classes: int, pretrained: bool = False, **kwargs: Any) -> SPMLModel:
    """Build an architecture by name; ``kwargs`` are its own options (e.g. ``width`` for compact)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(sorted(ARCHITECTURES))}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    return ARCHITECTURES[arch](num_classes=num_classes, pretrained=pretrained, **kwargs)


def _build_q2l(num_classes: int, pretrained: bool = False, **options: Any) -> SPMLModel:
    # Imported on use: spml.q2l builds on this module, so importing it at the top would be circular.
    from spml.q2l import Query2Label

    return Query2Label(num_classes, pretrained=pretrained, **options)


register_architecture("q2l", _build_q2l)
