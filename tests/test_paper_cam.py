"""The masks of each CAM mode against the public codes' formulas, re-derived here in plain torch.

CALR code: CAM = 1x1 convolution of the features with the head's weights (no bias); the positive's
maps are min-max normalised pixel by pixel across the batch, (cam - min_b) / (max_b - min_b);
bilinear upsampling (align_corners=False); mask = cam > tau; an image without a positive keeps
an all-ones mask and stays out of the batch statistics.
IGNORE code: CAM = 1x1 convolution with weights and bias; (cam - min_b) / max_b; the rest as above.
Ours (``image``): min-max over each image's own map.
"""

import pytest
import torch
import torch.nn.functional as F

from spml.cam import cam_keeps_bias, normalize_cams, positive_masks
from spml.model import ModelOutput, create_model

SIZE = (24, 24)
TAU = 0.5


@pytest.fixture(scope="module")
def case():
    """A compact model with biases in [-2, 3], fixed features, one image without a positive."""
    generator = torch.Generator().manual_seed(7)
    model = create_model("compact", 6, width=4).eval()
    with torch.no_grad():
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=generator))
        model.head.bias.copy_(torch.rand(6, generator=generator) * 5 - 2)
        features = torch.randn(5, 32, 6, 6, generator=generator)  # spatially varying, unlike an untrained net's
        output = ModelOutput(logits=model.head(features.mean(dim=(2, 3))), features=features)
    observed = torch.zeros(5, 6, dtype=torch.int8)
    observed[[0, 1, 2, 4], [0, 3, 5, 2]] = 1  # image 3 has no observed positive
    observed[0, 4] = -1  # a known negative changes nothing
    return model, output, observed


def rederived_masks(model, output, observed, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(masks (B, H, W), normalised maps of the images with a positive) by the public formula."""
    features = output.features.detach().double()
    weight = model.head.weight.detach().double()[:, :, None, None]
    bias = model.head.bias.detach().double() if mode != "calr" else None
    cam_w = F.conv2d(features, weight, bias)  # (B, C, h, w)
    has_positive = (observed == 1).sum(dim=1) == 1
    cam_sp = cam_w[observed == 1]  # (n, h, w), row-major: one map per image with a positive
    if mode == "calr":
        shifted = cam_sp - cam_sp.min(dim=0)[0]
        cam = shifted / shifted.max(dim=0)[0]
    elif mode == "ignore":
        cam = (cam_sp - cam_sp.min(dim=0)[0]) / cam_sp.max(dim=0)[0]
    else:
        flat = cam_sp.flatten(1)
        low, high = flat.min(1)[0][:, None, None], flat.max(1)[0][:, None, None]
        cam = (cam_sp - low) / (high - low)
    upsampled = F.interpolate(cam[:, None], size=SIZE, mode="bilinear", align_corners=False)[:, 0]
    masks = torch.ones(observed.shape[0], *SIZE, dtype=torch.bool)
    masks[has_positive] = upsampled > TAU
    return masks, cam


def upsampled_reference(cam: torch.Tensor) -> torch.Tensor:
    return F.interpolate(cam[:, None], size=SIZE, mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize("mode", ["calr", "ignore", "image"])
def test_masks_equal_the_public_formula(case, mode):
    model, output, observed = case
    expected, expected_maps = rederived_masks(model, output, observed, mode)
    with torch.no_grad():
        masks = positive_masks(model, output, observed, SIZE, TAU, mode)
        with_positive = (observed == 1).any(dim=1)
        classes = (observed == 1).to(torch.uint8).argmax(dim=1)[with_positive]
        maps = model.class_maps(ModelOutput(output.logits[with_positive], output.features[with_positive]),
                                classes, bias=cam_keeps_bias(mode))
        normalised = normalize_cams(maps.float(), mode)
    assert torch.allclose(normalised.double(), expected_maps, atol=1e-5)
    assert masks[3].all()  # no positive: all ones
    # Float32 against float64: a pixel may only differ where the reference value sits on the threshold.
    differing = masks != expected
    near = (upsampled_reference(expected_maps) - TAU).abs() < 1e-5
    assert not (differing[with_positive] & ~near).any()
    assert 0.05 < float(masks[with_positive].float().mean()) < 0.95  # a real mask, not all or nothing


def test_the_bias_and_the_divisor_matter_on_these_tensors(case):
    """The three modes give different masks here, so the test above can tell them apart."""
    model, output, observed = case
    with torch.no_grad():
        masks = {mode: positive_masks(model, output, observed, SIZE, TAU, mode) for mode in ("calr", "ignore", "image")}
    for first, second in (("calr", "ignore"), ("calr", "image"), ("ignore", "image")):
        assert float((masks[first] != masks[second]).float().mean()) > 0.02, (first, second)
