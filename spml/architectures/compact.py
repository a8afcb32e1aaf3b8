"""``compact``: a small VGG-style backbone with a linear CAM head, trainable from scratch on a CPU."""

from __future__ import annotations

from torch import nn

from spml.model import LinearCAMModel, SPMLModel, register_architecture


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


@register_architecture("compact")
def build_compact(num_classes: int, pretrained: bool = False, width: int = 32) -> SPMLModel:
    if pretrained:
        raise ValueError("the compact backbone has no pretrained weights; use --no-pretrained")
    backbone, dim = compact_backbone(width)
    return LinearCAMModel("compact", backbone, dim, num_classes, width=width)
