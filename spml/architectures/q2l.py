"""``q2l``, Query2Label (Q2L): a ResNet backbone, a small transformer and one learned query per class.

Each class query attends to the image features through the decoder's cross-attention; the query's
output gives that class's logit. The last decoder layer's cross-attention of a class query says
where in the image the class was found, so it doubles as the spatial weight of the class map
(method.md section 3). Everything the map needs comes out of the one forward pass that gives the
logits.

The layout follows the public Q2L/DETR design as the CALR experiments configure it: post-norm
layers, no self-attention among the queries in the decoder, decoder targets that start at zero with
the query embedding added at every layer, a final LayerNorm on the decoder output, and a ResNet whose
BatchNorm is frozen and whose stem and first stage are not trained.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from spml.architectures.compact import compact_backbone
from spml.architectures.resnet import resnet_backbone
from spml.model import ModelOutput, SPMLModel, full_precision, register_architecture

BACKBONES: tuple[str, ...] = ("compact", "resnet18", "resnet34", "resnet50", "resnet101")


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all stored as buffers.

    With batches of 16 large images, updating BatchNorm would only add noise to the ImageNet
    statistics; frozen, the layer is a fixed per-channel affine map in train and eval mode alike.
    The buffers carry BatchNorm2d's names, so a BatchNorm2d state dict loads into it (its
    ``num_batches_tracked`` counter, meaningless here, is dropped).
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @classmethod
    def from_batchnorm(cls, batchnorm: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        frozen = cls(batchnorm.num_features, batchnorm.eps)
        with torch.no_grad():
            if batchnorm.affine:
                frozen.weight.copy_(batchnorm.weight)
                frozen.bias.copy_(batchnorm.bias)
            if batchnorm.track_running_stats:
                frozen.running_mean.copy_(batchnorm.running_mean)
                frozen.running_var.copy_(batchnorm.running_var)
        return frozen

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d inside ``module`` (in place) by a FrozenBatchNorm2d with its values."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d.from_batchnorm(child))
        else:
            freeze_batchnorm(child)
    return module


def sine_position_embedding(height: int, width: int, dim: int, temperature: float = 10000.0,
                            device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """DETR-style 2-D sine embedding of an (h, w) grid, shape (h*w, dim), row-major like ``flatten``.

    The first half of the channels encodes the row, the second half the column. Positions are scaled
    to (0, 2*pi] (cell index + 1 over the side length), so the embedding does not depend on the input
    resolution; each axis uses dim/4 frequencies temperature^(-2i/(dim/2)), each as a (sin, cos) pair.
    """
    if dim % 4:
        raise ValueError(f"the sine position embedding needs a dimension divisible by 4, got {dim}")
    axis_dim = dim // 2
    exponents = torch.arange(0, axis_dim, 2, device=device, dtype=torch.float32) / axis_dim
    inverse_frequencies = temperature ** -exponents  # (axis_dim / 2,)

    def encode(length: int) -> Tensor:
        positions = torch.arange(1, length + 1, device=device, dtype=torch.float32) / length * (2 * math.pi)
        angles = positions[:, None] * inverse_frequencies[None, :]
        return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)  # (length, axis_dim), interleaved

    rows = encode(height)[:, None, :].expand(height, width, axis_dim)
    cols = encode(width)[None, :, :].expand(height, width, axis_dim)
    return torch.cat((rows, cols), dim=-1).reshape(height * width, dim).to(dtype)


class FeedForward(nn.Sequential):
    """Linear, ReLU, dropout, Linear: the transformer's position-wise block."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, dim))


class EncoderLayer(nn.Module):
    """Post-norm self-attention over the image positions; the position embedding enters queries and keys."""

    def __init__(self, dim: int, feedforward_dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.feedforward = FeedForward(dim, feedforward_dim, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, memory: Tensor, position: Tensor) -> Tensor:
        keyed = memory + position
        attended = self.self_attn(keyed, keyed, memory, need_weights=False)[0]
        memory = self.norm1(memory + self.dropout1(attended))
        return self.norm2(memory + self.dropout2(self.feedforward(memory)))


class DecoderLayer(nn.Module):
    """Post-norm cross-attention from the class queries to the image, then the feed-forward block.

    There is no self-attention among the queries (Q2L's default, which CALR keeps). ``forward``
    returns the head-averaged cross-attention weights, (B, C, h*w), when asked for them. They are the
    weights the values were mixed with: in train mode that includes attention dropout, as returned by
    nn.MultiheadAttention.
    """

    def __init__(self, dim: int, feedforward_dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.feedforward = FeedForward(dim, feedforward_dim, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, target: Tensor, queries: Tensor, memory: Tensor, position: Tensor,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.cross_attn(target + queries, memory + position, memory,
                                            need_weights=need_weights, average_attn_weights=True)
        target = self.norm1(target + self.dropout1(attended))
        target = self.norm2(target + self.dropout2(self.feedforward(target)))
        return target, weights


class ClassWiseLinear(nn.Module):
    """One linear read-out per class: logit_c = <W_c, h_c> + b_c, h_c being class c's query output."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(dim)  # nn.Linear's default range for a dim-input layer
        self.weight = nn.Parameter(torch.empty(num_classes, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))

    def forward(self, hidden: Tensor) -> Tensor:
        return (hidden * self.weight).sum(dim=-1) + self.bias


def _build_backbone(name: str, pretrained: bool) -> tuple[nn.Module, int]:
    if name == "compact":
        if pretrained:
            raise ValueError("the compact backbone has no pretrained weights; use --no-pretrained")
        return compact_backbone()
    if name not in BACKBONES:
        raise ValueError(f"unknown Q2L backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return resnet_backbone(name, pretrained)


class Query2Label(SPMLModel):
    """Query2Label behind the SPMLModel interface.

    ``forward`` returns the logits, the backbone features (B, D, h, w) and the last decoder layer's
    cross-attention (B, C, h*w); ``class_maps`` weights the features with a class's attention map.

    Options (all stored by ``arch_config``): ``backbone`` (compact or a ResNet), ``hidden_dim``
    (divisible by 4 and by ``num_heads``), ``feedforward_dim``, ``num_heads``, ``encoder_layers``
    (0 or more), ``decoder_layers`` (1 or more), ``dropout``, ``input_projection`` (a 1x1 convolution
    from the backbone channels to ``hidden_dim``; always used when the two differ, optional when they
    are equal, where Q2L as CALR runs it has none), ``freeze_stem`` (ResNet only: conv1 and layer1
    are not trained, as in Q2L/DETR). ``pretrained`` loads ImageNet weights into the backbone.
    """

    arch = "q2l"

    def __init__(self, num_classes: int, backbone: str = "resnet50", hidden_dim: int = 2048,
                 feedforward_dim: int = 8192, num_heads: int = 4, encoder_layers: int = 1, decoder_layers: int = 2,
                 dropout: float = 0.1, input_projection: bool = False, freeze_stem: bool = True,
                 pretrained: bool = False):
        super().__init__()
        if hidden_dim % 4 or hidden_dim % num_heads:
            raise ValueError(f"hidden_dim must be divisible by 4 and by num_heads ({num_heads}), got {hidden_dim}")
        if encoder_layers < 0 or decoder_layers < 1:
            raise ValueError(f"need encoder_layers >= 0 and decoder_layers >= 1, got {encoder_layers}, "
                             f"{decoder_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_classes = num_classes
        self._options: dict[str, Any] = {
            "backbone": backbone, "hidden_dim": hidden_dim, "feedforward_dim": feedforward_dim,
            "num_heads": num_heads, "encoder_layers": encoder_layers, "decoder_layers": decoder_layers,
            "dropout": dropout, "input_projection": input_projection, "freeze_stem": freeze_stem,
        }

        network, feature_dim = _build_backbone(backbone, pretrained)
        self.backbone = freeze_batchnorm(network)
        if freeze_stem and backbone != "compact":
            for parameter in self.backbone[:5].parameters():  # conv1, bn1, relu, maxpool, layer1
                parameter.requires_grad_(False)
        needs_projection = input_projection or feature_dim != hidden_dim
        self.input_proj = nn.Conv2d(feature_dim, hidden_dim, kernel_size=1) if needs_projection else nn.Identity()

        layer_args = (hidden_dim, feedforward_dim, num_heads, dropout)
        self.encoder = nn.ModuleList(EncoderLayer(*layer_args) for _ in range(encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(*layer_args) for _ in range(decoder_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        for parameter in [*self.encoder.parameters(), *self.decoder.parameters()]:
            if parameter.dim() > 1:  # Xavier for the transformer's matrices, as DETR and Q2L initialise them
                nn.init.xavier_uniform_(parameter)
        self.query_embed = nn.Embedding(num_classes, hidden_dim)
        self.classifier = ClassWiseLinear(num_classes, hidden_dim)

    def forward(self, images: Tensor) -> ModelOutput:
        features = self.backbone(images)
        with full_precision(features.device.type):  # under autocast only the backbone is bfloat16
            features = features.float()
            height, width = features.shape[-2:]
            memory = self.input_proj(features).flatten(2).transpose(1, 2)  # (B, h*w, hidden)
            position = sine_position_embedding(height, width, memory.shape[-1], device=memory.device,
                                               dtype=memory.dtype)[None]
            for layer in self.encoder:
                memory = layer(memory, position)
            queries = self.query_embed.weight[None].expand(memory.shape[0], -1, -1)
            target = torch.zeros_like(queries)
            attention = None
            last = len(self.decoder) - 1
            for index, layer in enumerate(self.decoder):
                # Only the last layer's weights are kept; the others may use the fused attention kernels.
                target, attention = layer(target, queries, memory, position, need_weights=index == last)
            logits = self.classifier(self.decoder_norm(target))
        return ModelOutput(logits=logits, features=features, attention=attention)

    def class_maps(self, output: ModelOutput, classes: Tensor | None = None, bias: bool = True) -> Tensor:
        """CAM_c = mean_d(F_d * A_c): the class query's attention over the positions weighting the
        backbone features (as CALR's cam_functions.make_cam; no bias, so ``bias`` changes nothing).
        A_c does not depend on the channel d, so this is A_c times the channel mean of F, computed
        once for every class."""
        if output.attention is None:
            raise ValueError("Query2Label class maps need the attention of the same forward pass")
        features = output.features
        batch, _, height, width = features.shape
        with full_precision(features.device.type):
            attention = output.attention.float().reshape(batch, -1, height, width)
            mean_features = features.float().mean(dim=1)  # (B, h, w)
            if classes is None:
                return attention * mean_features[:, None]
            return attention[torch.arange(batch, device=attention.device), classes] * mean_features

    def arch_config(self) -> dict[str, Any]:
        return {"arch": self.arch, "num_classes": self.num_classes, **self._options}

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(trainable backbone parameters, everything else trainable); frozen stem parameters are left out."""
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        return ([p for p in trainable if id(p) in backbone_ids], [p for p in trainable if id(p) not in backbone_ids])


@register_architecture("q2l")
def build_q2l(num_classes: int, pretrained: bool = False, **options: Any) -> SPMLModel:
    return Query2Label(num_classes, pretrained=pretrained, **options)
