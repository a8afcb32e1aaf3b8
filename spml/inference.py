"""Make a trained network cheaper to run for inference without changing what it computes.

``optimize_for_inference`` folds every BatchNorm that directly follows a convolution into that
convolution's weights and bias (exact up to float rounding, since an eval-mode BatchNorm is an affine
map per channel) and stores the convolution weights channels-last, the layout oneDNN's CPU kernels
run fastest on. The folded network can no longer be trained: use it for the app, prediction, audit.
"""

from __future__ import annotations

import logging
from collections import Counter

import torch
import torch.fx
from torch import nn

log = logging.getLogger(__name__)


class _Tracer(torch.fx.Tracer):
    """Keeps every BatchNorm-like module (also torchvision's FrozenBatchNorm2d and timm's BatchNormAct2d) a
    leaf of the graph, and timm's Conv2dSame, whose padding is computed from the input's size in Python."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        name = type(module).__name__
        return "BatchNorm" in name or name == "Conv2dSame" or super().is_leaf_module(module, qualified_name)


def _is_foldable_norm(module: nn.Module) -> bool:
    """An eval-time BatchNorm: running statistics present (without them it normalises by batch statistics)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.track_running_stats and module.running_mean is not None and not module.training
    # FrozenBatchNorm2d and its look-alikes: fixed buffers, no training mode.
    buffers = ("weight", "bias", "running_mean", "running_var")
    return "BatchNorm" in type(module).__name__ and all(
        isinstance(getattr(module, name, None), torch.Tensor) for name in buffers)


def _fold(conv: nn.Conv2d, norm: nn.Module) -> None:
    """conv <- norm(conv(.)): w' = w * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta, in float64."""
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    mean, var = norm.running_mean.double(), norm.running_var.double()
    gamma = norm.weight.detach().double() if norm.weight is not None else torch.ones_like(mean)
    beta = norm.bias.detach().double() if norm.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + float(getattr(norm, "eps", 1e-5)))
    dtype, device = conv.weight.dtype, conv.weight.device
    conv.weight = nn.Parameter((weight * scale.reshape(-1, 1, 1, 1)).to(dtype=dtype, device=device))
    conv.bias = nn.Parameter(((bias - mean) * scale + beta).to(dtype=dtype, device=device))


def _after_norm(norm: nn.Module) -> nn.Module:
    """What is left of a folded BatchNorm: nothing, or the dropout and activation that timm's BatchNormAct2d
    applies after normalising."""
    rest = [getattr(norm, name) for name in ("drop", "act") if isinstance(getattr(norm, name, None), nn.Module)]
    return nn.Sequential(*rest) if rest else nn.Identity()


def fold_batchnorm(module: nn.Module) -> int:
    """Fold, in place, each BatchNorm whose only input is a convolution used by nothing else; returns
    how many were folded. The pairs come from a symbolic trace, so the module's own forward (and its
    structure) stays as it is: a folded BatchNorm is replaced by ``nn.Identity`` (or by the activation a
    BatchNorm-with-activation applies after it). A module that the
    trace cannot follow (data-dependent control flow) is left as it is, with a warning."""
    try:
        graph = _Tracer().trace(module)
    except Exception as error:  # noqa: BLE001 - tracing fails in many ways; unfolded is still correct
        log.warning("BatchNorm not folded: %s cannot be traced (%s: %s)", type(module).__name__,
                    type(error).__name__, error)
        return 0
    modules = dict(module.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    folded = 0
    for node in graph.nodes:
        if node.op != "call_module" or not _is_foldable_norm(modules[node.target]):
            continue
        source = node.args[0] if node.args else None
        if not (isinstance(source, torch.fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        if calls[node.target] != 1 or calls[source.target] != 1:
            continue  # a module called twice serves another input too: folding would change that one
        conv = modules[source.target]
        if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros":
            continue
        norm = modules[node.target]
        _fold(conv, norm)
        parent_name, _, child_name = node.target.rpartition(".")
        setattr(modules[parent_name] if parent_name else module, child_name, _after_norm(norm))
        folded += 1
    return folded


@torch.no_grad()
def optimize_for_inference(network: nn.Module) -> nn.Module:
    """Fold BatchNorm into the convolutions of ``network`` (its ``backbone`` when it has one, the part
    that symbolic tracing handles) and switch to channels-last; in place, eval mode, returns it."""
    network.eval()
    target = getattr(network, "backbone", network)
    fold_batchnorm(target)
    return network.to(memory_format=torch.channels_last)
