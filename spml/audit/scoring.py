"""The audit's score and the evidence of a batch: one forward pass, one masked pass, every class's map.

For every image and every class not annotated on it (``observed == 0``: neither an annotated positive
nor a known negative), the audit runs the checkpoint the way CALR's training does: one forward pass
gives the logits z and every class's map; the image masked to the annotated positive's CAM region
gives the masked logits z^M; the rule of :mod:`spml.rejection` gives its decision.

The score of a candidate (image i, class c) is

    score = sigmoid(z_ic) * sigmoid((z_ic - z^M_ic) / T_gap)

- ``sigmoid(z)`` is how sure the model is that c is in the image: the probability alone is the
  baseline (cleanlab's self-confidence of the assumed-negative label ranks by it, and the large-loss
  ranking ranks by the assume-negative loss -log(1 - p), a monotone function of it).
- ``sigmoid((z - z^M) / T_gap)`` is how much of that evidence lies OUTSIDE the annotated positive's
  region. A missing label is a second object elsewhere in the image: masking the image down to the
  positive's region removes it and its logit drops (factor towards 1). A class the model predicts
  because of the positive's own region (a confusable class, a part of the positive) keeps its logit
  in the masked image (factor 0.5), and one that masking makes more likely is pushed below 0.5.
  The drop is signed, unlike the rule's |z - z^M|, because only a drop is evidence of an object
  elsewhere; it is measured in units of T_gap, the checkpoint's running average of the gap of
  annotated positives (1 logit unit where the checkpoint holds no thresholds).
- An image without an annotated positive gets an all-ones mask (as in the method): z^M = z and the
  factor is 0.5 for every class, so such an image is ranked by its probabilities, at half weight.

Where is the missing object: the same forward pass gives the suspected class's own CAM. Its box
(``suspect_box``) is that map normalised per image (min-max), upsampled to the model's input size
and thresholded at the checkpoint's CAM threshold, as the positive's mask is; ``positive_box`` is the
box of the mask the masked pass used. Both are given in the image file's own pixels (the box at the
input size scaled outwards to whole pixels), right/bottom exclusive, "x0 y0 x1 y1" in the report, and
empty where the region is empty (a flat map) or, for ``positive_box``, where no positive is annotated.

CAM normalisation is per image whatever the checkpoint says: in the batch-wise modes (``calr``,
``ignore``) an image's mask depends on the other images of its batch, and an audit must give an
image the same verdict whatever batch or shard it lands in (and the review, which recomputes one
image, the same numbers).

:func:`candidate_values` is THE function that turns a batch's evidence into one report row's numbers:
the report writes its result and :func:`suspect_evidence` (the review and the gallery) returns it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from spml.audit.review import ReviewError
from spml.cam import (
    Window,
    apply_masks,
    cam_boxes,
    crop_to_box,
    heatmap_overlay,
    mask_box,
    mask_boxes,
    masked_display,
    normalize_cams,
    positive_masks,
    upsample_maps,
)
from spml.checkpoint import LoadedModel
from spml.data.generic import SEPARATOR, split_names
from spml.data.images import load_image, original_size
from spml.data.transforms import input_region, input_window
from spml.metrics import sigmoid
from spml.rejection import logit_gap, rejection_mask

if TYPE_CHECKING:
    from spml.audit.folds import FoldModels

SCORE_VERSION = 2  # 2: suspect_box and positive_box columns
SCORE_FORMULA = "sigmoid(logit) * sigmoid((logit - masked_logit) / T_gap)"
Box = tuple[int, int, int, int]


def missing_label_score(logits: torch.Tensor, masked_logits: torch.Tensor, gap_scale: float) -> torch.Tensor:
    """The audit score (see the module documentation): probability times evidence outside the
    positive's region, ``sigmoid(z) * sigmoid((z - z^M) / gap_scale)``."""
    return torch.sigmoid(logits) * torch.sigmoid((logits - masked_logits) / gap_scale)


def gap_scale(model: LoadedModel) -> float:
    """T_gap of the checkpoint, or 1 logit unit where it holds none (or a T_gap of 0, before training)."""
    if model.thresholds is None or not model.thresholds.gap_threshold > 0:
        return 1.0
    return model.thresholds.gap_threshold


@dataclass
class BatchEvidence:
    """The numbers of a batch of B images and C classes (model order), as CPU numpy arrays."""

    logits: np.ndarray  # (B, C) float32
    masked_logits: np.ndarray  # (B, C)
    gap: np.ndarray  # (B, C): |z - z^M|, the rule's
    rejected: np.ndarray  # (B, C) bool: the rule's decision (all False without thresholds)
    score: np.ndarray  # (B, C)
    suspect_boxes: np.ndarray  # (B, C, 4) int64, own pixels; -1 where the class's region is empty
    positive_boxes: np.ndarray  # (B, 4) int64, own pixels; -1 without a positive or an empty region
    maps: torch.Tensor | None = None  # (B, C, h, w) raw class maps, kept only for display


def _to_own_pixels(boxes: torch.Tensor, regions: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Boxes (B, ..., 4) in input pixels to the images' own pixels: ``regions`` (B, 4) are the input pixels
    each image fills (``spml.data.transforms.input_region``), ``sizes`` (B, 2) their own (width, height).
    Scaled outwards to whole pixels (floor for left/top, ceil for right/bottom) and clipped to the image;
    empty boxes, and boxes wholly outside the image (on a letterbox's grey), are -1."""
    shape = (sizes.shape[0], *([1] * (boxes.dim() - 2)), 4)
    origin = regions.to(boxes.device)[:, [0, 1, 0, 1]].reshape(shape)
    extent = (regions[:, 2:] - regions[:, :2]).to(boxes.device)[:, [0, 1, 0, 1]].reshape(shape)
    own = sizes.to(boxes.device)[:, [0, 1, 0, 1]].reshape(shape)
    shifted = (boxes - origin) * own
    low = torch.div(shifted, extent, rounding_mode="floor")
    high = -torch.div(-shifted, extent, rounding_mode="floor")
    mapped = torch.minimum(torch.cat([low[..., :2], high[..., 2:]], dim=-1).clamp_min(0), own)
    empty = (boxes < 0).any(dim=-1, keepdim=True) | (mapped[..., 2:] <= mapped[..., :2]).any(dim=-1, keepdim=True)
    return torch.where(empty, torch.full_like(mapped, -1), mapped)


@torch.inference_mode()
def batch_evidence(model: LoadedModel, images: torch.Tensor, observed: torch.Tensor,
                   sizes: torch.Tensor | None = None, keep_maps: bool = False) -> BatchEvidence:
    """Logits, masked logits, gaps, rule decisions, scores and boxes of a batch.

    ``images`` (B, 3, S, S) at the model's input size, ``observed`` (B, C) in the model's class order,
    ``sizes`` (B, 2) the images' own (width, height) for the boxes (None: boxes in input pixels).
    One forward pass gives the logits and every class's map; the masked pass runs only on the images
    that have an annotated positive (the others have an all-ones mask, so z^M = z).
    """
    network = model.network
    output = network(images)
    logits = output.logits.float()
    size = tuple(images.shape[-2:])
    has_positive = (observed == 1).any(dim=1)
    masked_logits = logits.clone()
    positive_boxes = torch.full((images.shape[0], 4), -1, dtype=torch.long, device=logits.device)
    if bool(has_positive.any()):
        masks = positive_masks(network, output, observed, size, model.cam_threshold, "image")
        chosen = has_positive.nonzero().flatten()
        masked_logits[chosen] = network(apply_masks(images[chosen], masks[chosen])).logits.float()
        positive_boxes[chosen] = mask_boxes(masks[chosen])
    maps = network.class_maps(output).float()  # every class, from the same forward pass
    batch, classes = maps.shape[:2]
    suspect_boxes = cam_boxes(maps.flatten(0, 1), size, model.cam_threshold).reshape(batch, classes, 4)
    if sizes is not None:
        regions = torch.tensor([input_region(int(w), int(h), size[1], model.resize) for w, h in sizes.tolist()])
        suspect_boxes = _to_own_pixels(suspect_boxes, regions, sizes)
        positive_boxes = _to_own_pixels(positive_boxes, regions, sizes)
    if model.thresholds is not None:
        rejected = rejection_mask(logits, masked_logits, observed, model.thresholds.gap_threshold_tensor,
                                  model.thresholds.class_average)
    else:
        rejected = torch.zeros_like(logits, dtype=torch.bool)
    return BatchEvidence(
        logits=logits.cpu().numpy(),
        masked_logits=masked_logits.cpu().numpy(),
        gap=logit_gap(logits, masked_logits).cpu().numpy(),
        rejected=rejected.cpu().numpy(),
        score=missing_label_score(logits, masked_logits, gap_scale(model)).cpu().numpy(),
        suspect_boxes=suspect_boxes.cpu().numpy(),
        positive_boxes=positive_boxes.cpu().numpy(),
        maps=maps.cpu() if keep_maps else None,
    )


def _box(values: np.ndarray) -> Box | None:
    return None if values[0] < 0 else (int(values[0]), int(values[1]), int(values[2]), int(values[3]))


def format_box(box: Box | None) -> str:
    """The report's form of a box: "x0 y0 x1 y1", or empty for none."""
    return "" if box is None else " ".join(str(value) for value in box)


def parse_box(text: str) -> Box | None:
    """The inverse of :func:`format_box`."""
    if not text.strip():
        return None
    values = [int(value) for value in text.split()]
    if len(values) != 4:
        raise ValueError(f"a box is four integers 'x0 y0 x1 y1', got {text!r}")
    return values[0], values[1], values[2], values[3]


def candidate_values(evidence: BatchEvidence, row: int, c: int) -> dict[str, Any]:
    """The numbers of the report row of candidate (image ``row`` of the batch, class index ``c``):
    score, rejected (0/1), probability, logit, masked_logit, gap, suspect_box, positive_box (boxes as
    tuples or None). The report and the review both take a row's numbers from here."""
    logit = float(evidence.logits[row, c])
    return {
        "score": float(evidence.score[row, c]),
        "rejected": int(evidence.rejected[row, c]),
        "probability": sigmoid(logit),
        "logit": logit,
        "masked_logit": float(evidence.masked_logits[row, c]),
        "gap": float(evidence.gap[row, c]),
        "suspect_box": _box(evidence.suspect_boxes[row, c]),
        "positive_box": _box(evidence.positive_boxes[row]),
    }


def _display_map(raw: torch.Tensor, size: tuple[int, int], window: Window) -> np.ndarray:
    """A raw (h, w) map normalised per image, its ``window`` (the part of the input the image fills)
    upsampled to ``size`` (H, W), for display."""
    return upsample_maps(normalize_cams(raw[None].float(), "image"), size, window)[0].numpy()


def suspect_evidence(model: LoadedModel | FoldModels, dataset_root: str | Path, row: dict[str, Any]) -> dict[str, Any]:
    """The evidence of one report row (``image``, ``class``, ``positive``: the report's columns) for
    the review and the gallery, its numbers computed by :func:`candidate_values` exactly as the report's.

    Keys (pictures are (H, W, 3) uint8 or (H, W) float arrays at the image's displayed size, the file's
    own size unless a huge image was downscaled on loading; boxes are in the file's own pixels):
    ``suspect_cam`` (the suspected class's own CAM in [0, 1]: the first picture to show),
    ``suspect_overlay`` (it over the image), ``suspect_box``; ``positive_cam``, ``positive_overlay``,
    ``positive_box`` (None where no positive is annotated: the audit used the whole image there; with
    several positives the map is their pixel-wise maximum, whose region is the union of theirs);
    ``masked_image`` (what the masked pass saw) and ``crop`` (the positive's region; None without one);
    ``image``, ``image_size`` (the file's own (width, height)), ``class``, ``positive`` (names joined by
    ";", as the report writes them), ``positive_given``, ``fold`` (the cross-fitted model used, None
    for a single checkpoint); the numbers ``score``, ``rejected`` (bool), ``probability``, ``logit``,
    ``masked_logit``, ``gap``, ``gap_threshold``. ``overlay`` and ``box`` are kept for the app as it
    is: the suspect's overlay and the positive region's box in displayed pixels.
    """
    from spml.audit.folds import FoldModels

    root = Path(dataset_root).resolve()
    path = (root / str(row["image"])).resolve()
    if not path.is_relative_to(root):
        raise ReviewError(f"image {row['image']!r} is outside the data set folder")
    fold = model.fold_of(str(row["image"])) if isinstance(model, FoldModels) else None
    loaded = model.models[fold] if isinstance(model, FoldModels) else model
    name = str(row["class"])
    positives = split_names(str(row.get("positive") or ""))
    unknown = [n for n in [name, *positives] if n not in loaded.classes]
    if unknown:
        raise ReviewError(f"class {unknown[0]!r} of the report row is not one of the model's classes")
    observed = torch.zeros((1, len(loaded.classes)), dtype=torch.int8)
    for positive in positives:
        observed[0, loaded.classes.index(positive)] = 1
    image = load_image(path)
    own = original_size(image)
    tensor = loaded.input_transform()(image)[None].to(loaded.device)
    evidence = batch_evidence(loaded, tensor, observed.to(loaded.device), torch.tensor([own]), keep_maps=True)
    values = candidate_values(evidence, 0, loaded.classes.index(name))
    picture = np.asarray(image)
    shown = picture.shape[:2]
    maps = evidence.maps[0]
    window = input_window(picture.shape[1], picture.shape[0], loaded.image_size, loaded.resize)
    suspect_cam = _display_map(maps[loaded.classes.index(name)], shown, window)
    positive_cam = None
    region = np.ones(shown, dtype=bool)
    if positives:
        # Several positives: the union of their regions, each map normalised and thresholded on its
        # own (as spml.cam.positive_masks), is the region of their pixel-wise maximum.
        positive_cam = np.max([_display_map(maps[loaded.classes.index(n)], shown, window) for n in positives], axis=0)
        region = positive_cam > loaded.cam_threshold
    shown_box = mask_box(region) if positives else None
    return {
        "image": picture,
        "image_size": (int(own[0]), int(own[1])),
        "class": name,
        "positive": SEPARATOR.join(positives),
        "positive_given": bool(positives),
        "fold": fold,
        "suspect_cam": suspect_cam,
        "suspect_overlay": heatmap_overlay(picture, suspect_cam),
        "positive_cam": positive_cam,
        "positive_overlay": None if positive_cam is None else heatmap_overlay(picture, positive_cam),
        "masked_image": masked_display(picture, region, loaded.mean),
        "crop": None if shown_box is None else crop_to_box(picture, shown_box),
        **values,
        "rejected": bool(values["rejected"]),
        "gap_threshold": None if loaded.thresholds is None else loaded.thresholds.gap_threshold,
    }
