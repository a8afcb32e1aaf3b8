"""Class activation maps turned into what the method and the app use: normalised maps, masks,
masked images, boxes, crops and overlays.

The trainer, the app and the audit all go through these functions, so the mask the app shows is the
mask training used.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from spml.model import ModelOutput, SPMLModel

CamNorm = Literal["image", "calr", "ignore"]
CAM_NORMS: tuple[str, ...] = ("image", "calr", "ignore")
_EPS = 1e-12


def cam_keeps_bias(mode: CamNorm) -> bool:
    """Whether the maps of ``mode`` include the head's bias b_c. The CALR code builds its CAM as a
    1x1 convolution with the head's weights only; IGNORE's CAM is a 1x1 convolution with its bias
    (GAP of it is the logit). Per-image min-max is blind to a per-image constant, so either serves."""
    return mode != "calr"


def normalize_cams(cams: Tensor, mode: CamNorm = "image") -> Tensor:
    """Scale (B, h, w) maps to [0, 1].

    ``image`` (default, the paper's intent): min-max over each image's own spatial map.
    ``calr``: what the public CALR code does, pixel by pixel across the batch:
    ``(cam - min_b cam) / (max_b cam - min_b cam)`` (its code subtracts the minimum, then divides by
    the maximum of what is left, which is max - min). Use it on maps without the head's bias
    (:func:`cam_keeps_bias`).
    ``ignore``: what the public IGNORE code does, pixel by pixel across the batch:
    ``(cam - min_b cam) / max_b cam``, dividing by the maximum of the maps themselves (bias included);
    where that maximum is negative every value is <= 0, as there.
    Both batch modes make an image's map depend on the other images of its batch. For a batch of one
    the public codes give 0/0 or 0 everywhere (an empty mask); here a batch of one falls back to the
    per-image mode, and in ``calr`` mode a pixel equal in every image of the batch maps to 0.
    """
    if cams.dim() != 3:
        raise ValueError(f"expected maps of shape (B, h, w), got {tuple(cams.shape)}")
    if mode not in CAM_NORMS:
        raise ValueError(f"unknown CAM normalisation {mode!r}; choose one of {CAM_NORMS}")
    if mode == "image" or cams.shape[0] == 1:
        flat = cams.flatten(1)
        low = flat.min(dim=1).values[:, None, None]
        high = flat.max(dim=1).values[:, None, None]
        return (cams - low) / (high - low).clamp_min(_EPS)
    shifted = cams - cams.min(dim=0).values
    if mode == "calr":
        return shifted / shifted.max(dim=0).values.clamp_min(_EPS)
    return shifted / cams.max(dim=0).values


Window = tuple[float, float, float, float]  # (left, top, right, bottom) as fractions of a map's extent
WHOLE: Window = (0.0, 0.0, 1.0, 1.0)


def upsample_maps(maps: Tensor, size: tuple[int, int], window: Window | None = None) -> Tensor:
    """Bilinear (align_corners=False) resize of (B, h, w) maps to ``size`` = (H, W). With ``window``, only
    that part of the maps is resized to ``size``: the part of the network's input that a letterboxed image
    fills (``spml.data.transforms.input_window``), so the maps land on the image's own pixels."""
    if window is None or tuple(window) == WHOLE:
        return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    left, top, right, bottom = window
    down, _ = _resampling(maps.shape[1], size[0], maps.device, (top, bottom))  # (H, h)
    across, _ = _resampling(maps.shape[2], size[1], maps.device, (left, right))  # (W, w)
    return down @ maps.float() @ across.T


def cam_masks(
    cams: Tensor,
    size: tuple[int, int],
    threshold: float,
    mode: CamNorm = "image",
    has_positive: Tensor | None = None,
) -> Tensor:
    """Boolean (B, H, W) masks of the highlighted regions: normalise, upsample, ``> threshold``.

    Images without an observed positive (``has_positive`` False) get an all-ones mask, as in the
    method; they are left out of the batch modes' statistics, as the public codes do.
    """
    if has_positive is None or bool(has_positive.all()):
        return upsample_maps(normalize_cams(cams, mode), size) > threshold
    masks = torch.ones((cams.shape[0], *size), dtype=torch.bool, device=cams.device)
    if bool(has_positive.any()):
        masks[has_positive] = upsample_maps(normalize_cams(cams[has_positive], mode), size) > threshold
    return masks


def positive_masks(network: SPMLModel, output: ModelOutput, observed: Tensor, size: tuple[int, int], threshold: float,
                   mode: CamNorm = "image") -> Tensor:
    """Boolean (B, H, W) masks of each image's observed positives (``observed == 1``) from the maps of
    ``output``, the network's forward pass on those images (no second backbone pass); all ones for an
    image without an observed positive. The trainer and the audit both mask through here.

    With several positives the mask is the union of their regions: each positive's map is normalised
    and thresholded on its own, then the masks are OR-ed. Pass j handles every image's j-th positive
    (in class order); the first pass is the single-positive computation unchanged, and the batch
    modes' statistics of pass j come from the images that have a j-th positive only.
    """
    is_positive = observed == 1
    has_positive = is_positive.any(dim=1)
    positive_class = is_positive.to(torch.uint8).argmax(dim=1)  # any index where there is none: unused
    bias = cam_keeps_bias(mode)
    cams = network.class_maps(output, positive_class, bias=bias)
    masks = cam_masks(cams.float(), size, threshold, mode, has_positive)
    counts = is_positive.sum(dim=1)
    passes = int(counts.max()) if counts.numel() else 0
    if passes > 1:
        # A stable descending sort puts each row's positives first, in class order (argmax's first one first).
        order = is_positive.to(torch.uint8).sort(dim=1, descending=True, stable=True).indices
        for j in range(1, passes):
            rows = counts > j
            extra = cam_masks(network.class_maps(output, order[:, j], bias=bias).float(), size, threshold, mode, rows)
            masks[rows] |= extra[rows]
    return masks


def _extent_boxes(rows: Tensor, cols: Tensor) -> Tensor:
    """Boxes (N, 4) from which rows (N, H) and columns (N, W) of a region hold a pixel; -1 for none."""
    height, width = rows.shape[1], cols.shape[1]
    # argmax of a 0/1 vector is its first 1: the first from each end gives the extent.
    top = rows.to(torch.uint8).argmax(dim=1)
    bottom = height - rows.flip(1).to(torch.uint8).argmax(dim=1)
    left = cols.to(torch.uint8).argmax(dim=1)
    right = width - cols.flip(1).to(torch.uint8).argmax(dim=1)
    boxes = torch.stack([left, top, right, bottom], dim=1).long()
    boxes[~rows.any(dim=1)] = -1
    return boxes


def mask_boxes(masks: Tensor) -> Tensor:
    """Bounding boxes (left, top, right, bottom), right/bottom exclusive, of (N, H, W) boolean masks,
    as a long (N, 4) tensor; a row of -1 for an empty mask. The batched form of :func:`mask_box`."""
    return _extent_boxes(masks.any(dim=2), masks.any(dim=1))


def _resampling(size_in: int, size_out: int, device: torch.device,
                span: tuple[float, float] = (0.0, 1.0)) -> tuple[Tensor, Tensor]:
    """Bilinear resampling (align_corners=False) along one axis, as torch computes it: the (out, in)
    matrix of weights, and the output indices at the ends of each source interval. ``span``: the part of
    the input axis (fractions) the output covers; the whole axis gives exactly torch's weights.

    An output value is v[j0] + f (v[j1] - v[j0]) with f non-decreasing inside an interval (constant j0),
    so it is monotone there and its extremes over the interval lie at the interval's two ends."""
    scale = size_in * (span[1] - span[0]) / size_out
    steps = torch.arange(size_out, device=device, dtype=torch.float32) + 0.5
    source = (span[0] * size_in + steps * scale - 0.5).clamp_min(0)
    j0 = source.long().clamp_max(size_in - 1)
    j1 = (j0 + 1).clamp_max(size_in - 1)
    weight = source - j0
    matrix = torch.zeros(size_out, size_in, device=device)
    outputs = torch.arange(size_out, device=device)
    matrix.index_put_((outputs, j0), 1 - weight, accumulate=True)
    matrix.index_put_((outputs, j1), weight, accumulate=True)
    change = torch.ones(size_out, dtype=torch.bool, device=device)
    change[1:] = j0[1:] != j0[:-1]
    ends = change.clone()
    ends[:-1] |= change[1:]
    ends[-1] = True
    return matrix, ends.nonzero().flatten()


def cam_boxes(cams: Tensor, size: tuple[int, int], threshold: float) -> Tensor:
    """Boxes (as :func:`mask_boxes`, in pixels of ``size``) of the regions of (N, h, w) raw maps, each
    normalised per map (min-max), upsampled bilinearly and thresholded as :func:`cam_masks` does.

    Exact without upsampling whole maps: a row holds a pixel of the region when its maximum is above
    the threshold, and along a row the upsampled values are monotone between source columns, so the
    maximum is among the columns at the ends of those intervals (at most 2w of them); likewise for the
    columns. For every class of a batch this costs O(S * w) per map instead of O(S * S)."""
    maps = normalize_cams(cams.float(), "image")
    (height, width), device = size, maps.device
    down, y_ends = _resampling(maps.shape[1], height, device)  # (H, h)
    across, x_ends = _resampling(maps.shape[2], width, device)  # (W, w)
    rows = down @ maps  # (N, H, w): resampled along y
    row_maxima = (rows @ across[x_ends].T).amax(dim=2)  # (N, H): each row at its candidate columns
    column_maxima = (rows[:, y_ends] @ across.T).amax(dim=1)  # (N, W): each column at its candidate rows
    return _extent_boxes(row_maxima > threshold, column_maxima > threshold)


def apply_masks(images: Tensor, masks: Tensor) -> Tensor:
    """x^M = x * mask in normalised space: masked-out pixels become 0, the data set's mean colour."""
    return images * masks[:, None].to(images.dtype)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box (left, top, right, bottom), right/bottom exclusive, of a 2-D boolean mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def crop_to_box(image: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """The part of an (H, W, ...) array inside ``box``; an empty (0, 0, ...) array for no box."""
    if box is None:
        return image[:0, :0]
    left, top, right, bottom = box
    return image[top:bottom, left:right]


def masked_display(image: np.ndarray, mask: np.ndarray, mean: tuple[float, float, float]) -> np.ndarray:
    """An (H, W, 3) uint8 image with the pixels outside ``mask`` set to the normalisation ``mean``
    colour (values in [0, 1]): what x^M, zero in normalised space, shows the network."""
    import cv2

    shown = np.empty_like(image)
    shown[:] = [round(255 * m) for m in mean]
    cv2.copyTo(image, mask.astype(np.uint8), shown)  # 3x faster than np.where on a 12 MP upload
    return shown


@functools.cache
def _jet_rgb() -> np.ndarray:
    """OpenCV's JET colour map as a (256, 1, 3) RGB lookup table, built once: applyColorMap with a
    built-in map rebuilds its table on every call (8x the cost of the lookup on a 128 px map)."""
    import cv2

    levels = np.arange(256, dtype=np.uint8)[:, None]
    return cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def heatmap_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The (H, W) map in [0, 1] drawn as a JET heat map over an (H, W, 3) uint8 RGB image."""
    import cv2

    # uint8 all the way (cv2 rounds and saturates): 2 to 3x faster than blending in float32.
    levels = cv2.convertScaleAbs(np.ascontiguousarray(cam, dtype=np.float32), alpha=255.0)
    heat = cv2.applyColorMap(levels, _jet_rgb())
    return cv2.addWeighted(np.ascontiguousarray(image, dtype=np.uint8), 1.0 - alpha, heat, alpha, 0.0)
