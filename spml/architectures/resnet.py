"""``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``: a torchvision ResNet with a linear CAM head."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from spml.model import LinearCAMModel, SPMLModel, register_architecture

RESNET_FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}


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
    return backbone, RESNET_FEATURE_DIMS[name]


def _resnet_builder(name: str) -> Callable[..., SPMLModel]:
    def build(num_classes: int, pretrained: bool = False) -> SPMLModel:
        backbone, dim = resnet_backbone(name, pretrained)
        return LinearCAMModel(name, backbone, dim, num_classes)

    return build


for _name in RESNET_FEATURE_DIMS:
    register_architecture(_name, _resnet_builder(_name))
