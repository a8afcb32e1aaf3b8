"""Analyse one image: predictions, the positive's CAM, the highlighted region and the rule's verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from spml.cam import (
    CAM_NORMS,
    apply_masks,
    crop_to_box,
    heatmap_overlay,
    mask_box,
    masked_display,
    normalize_cams,
    positive_masks,
    upsample_maps,
)
from spml.checkpoint import LoadedModel
from spml.data.generic import SEPARATOR, split_names
from spml.data.images import ImageSource, load_image
from spml.data.transforms import input_window
from spml.familiarity import statistics_of
from spml.rejection import logit_gap, rejection_mask


@dataclass
class AnalysisResult:
    """Everything the Inspect view shows; maps and images are at the image's own size."""

    image: np.ndarray  # (H, W, 3) uint8 RGB, as analysed (after EXIF rotation, colour conversion)
    classes: list[str]
    probabilities: dict[str, float]
    logits: dict[str, float]
    masked_logits: dict[str, float]
    gaps: dict[str, float]
    positive: str  # the first of ``positives``
    positive_given: bool  # False: the top prediction was used
    positives: list[str]  # the annotated positives whose CAM regions make the mask (one: the top prediction)
    cam: np.ndarray  # (H, W) float32 in [0, 1]; with several positives the maximum of their maps
    mask: np.ndarray  # (H, W) bool, cam > cam_threshold: the union of the positives' regions
    box: tuple[int, int, int, int] | None  # (left, top, right, bottom) of the mask
    crop: np.ndarray  # the image inside the box
    masked_image: np.ndarray  # the image with everything outside the mask in the mean colour
    overlay: np.ndarray  # the CAM as a heat map over the image
    rejected: list[str]  # negatives the rule would drop, most confident first
    cam_threshold: float
    cam_norm: str
    gap_threshold: float | None  # None: the checkpoint holds no running thresholds
    class_average: dict[str, float] | None
    # False: the image does not look like the checkpoint's training world; None: the checkpoint holds no
    # statistics to tell (``python -m spml calibrate``). See spml.familiarity.
    in_distribution: bool | None = None
    familiarity_distance: float | None = None  # the image's distance to the training images' statistics
    familiarity_threshold: float | None = None
    familiarity_reason: str | None = None  # why the image looks like another world ("" when it does not)
    # Every class's normalised CAM at the network's map resolution (C, h, w), from the same forward pass.
    class_maps: np.ndarray | None = None
    # The part of the network's input (and of class_maps) the image fills, as fractions (left, top, right,
    # bottom): all of it when the image is stretched to the input, less when it is letterboxed.
    input_window: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)

    def table(self) -> list[dict[str, object]]:
        """One row per class other than the positives: rejected ones first, then by probability."""
        rows = []
        for name in self.classes:
            if name in self.positives:
                continue
            rows.append({
                "class": name,
                "probability": self.probabilities[name],
                "logit": self.logits[name],
                "masked_logit": self.masked_logits[name],
                "gap": self.gaps[name],
                "gap_threshold": self.gap_threshold,
                "class_average": None if self.class_average is None else self.class_average[name],
                "rejected": name in self.rejected,
            })
        return sorted(rows, key=lambda row: (not row["rejected"], -row["probability"]))


def _resolve_positives(model: LoadedModel, positive: str | Sequence[str] | None,
                       logits: torch.Tensor) -> tuple[list[int], bool]:
    """The class indices of the given positives (a name, names joined by ';', or a list), or of the top
    prediction when none is given; and whether they were given."""
    if positive is None:
        positive = ""
    names = split_names(positive if isinstance(positive, str) else SEPARATOR.join(str(name) for name in positive))
    if not names:
        return [int(logits.argmax())], False
    return [model.class_index(name) for name in names], True


@torch.inference_mode()
def analyze(
    model: LoadedModel,
    image: ImageSource | Image.Image | np.ndarray,
    positive: str | Sequence[str] | None = None,
    cam_threshold: float | None = None,
    cam_norm: str | None = None,
) -> AnalysisResult:
    """Run the checkpoint on one image the way training would treat it with ``positive`` annotated:
    one class name, several (a list, or names joined by ';'), or None / "" for the top prediction.
    With several positives the mask is the union of their CAM regions, as in training.

    One forward pass gives the logits and the CAM; a second one, on the masked image, gives the
    masked logits. A batch of one has no batch statistics, so the batch-wise normalisations (``calr``,
    ``ignore``) fall back to per-image min-max here (see ``spml.cam.normalize_cams``).
    """
    threshold = model.cam_threshold if cam_threshold is None else float(cam_threshold)
    norm = model.cam_norm if cam_norm is None else cam_norm
    if norm not in CAM_NORMS:
        raise ValueError(f"Unknown CAM normalisation {norm!r}; choose one of {', '.join(CAM_NORMS)}.")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"The CAM threshold must be in [0, 1), got {threshold}.")
    picture = load_image(image)
    rgb = np.asarray(picture, dtype=np.uint8)
    network, device = model.network, model.device
    inputs = model.input_transform()(picture)[None].to(device)

    output = network(inputs)
    logits = output.logits[0].float()
    positive_indices, given = _resolve_positives(model, positive, logits)
    observed = torch.zeros_like(logits, dtype=torch.int8)
    observed[positive_indices] = 1
    # The mask through the function training and the audit use; the maps again below, for display.
    network_mask = positive_masks(network, output, observed[None], tuple(inputs.shape[-2:]), threshold, norm)
    masked_logits = network(apply_masks(inputs, network_mask)).logits[0].float()
    # Every class's map (C, h, w), each normalised on its own: for a batch of one every mode is per-image
    # min-max, which a per-image constant (the head's bias) does not change. The positives' maps for
    # display, all of them for the app's gallery.
    maps = normalize_cams(network.class_maps(output)[0].float(), "image")
    cams = maps[positive_indices]
    statistics = statistics_of(model)
    familiar, distance, reason = (None, None, None) if statistics is None else statistics.in_distribution(picture)
    gaps = logit_gap(logits, masked_logits)
    if model.thresholds is not None:
        gap_tensor, average = model.thresholds.gap_threshold_tensor, model.thresholds.class_average
        rejected_flags = rejection_mask(logits[None], masked_logits[None], observed[None], gap_tensor, average)[0]
        rejected_indices = [int(i) for i in torch.nonzero(rejected_flags).flatten()]
        gap_threshold = float(gap_tensor.mean())  # as RunningThresholds.gap_threshold, without recomputing it
        class_average = dict(zip(model.classes, average.cpu().tolist(), strict=True))
    else:
        rejected_indices, gap_threshold, class_average = [], None, None

    height, width = rgb.shape[:2]
    window = input_window(width, height, model.image_size, model.resize)
    # Each map thresholded on its own, then OR-ed, is the maximum of the maps thresholded once.
    cam = upsample_maps(cams, (height, width), window).amax(dim=0).clamp(0, 1).cpu().numpy().astype(np.float32)
    mask = cam > threshold
    box = mask_box(mask)
    probabilities = torch.sigmoid(logits)
    names = model.classes
    return AnalysisResult(
        image=rgb,
        classes=list(names),
        probabilities=dict(zip(names, probabilities.cpu().tolist(), strict=True)),
        logits=dict(zip(names, logits.cpu().tolist(), strict=True)),
        masked_logits=dict(zip(names, masked_logits.cpu().tolist(), strict=True)),
        gaps=dict(zip(names, gaps.cpu().tolist(), strict=True)),
        positive=names[positive_indices[0]],
        positive_given=given,
        positives=[names[i] for i in positive_indices],
        cam=cam,
        mask=mask,
        box=box,
        crop=crop_to_box(rgb, box),
        masked_image=masked_display(rgb, mask, model.mean),
        overlay=heatmap_overlay(rgb, cam),
        rejected=[names[i] for i in sorted(rejected_indices, key=lambda i: -float(probabilities[i]))],
        cam_threshold=threshold,
        cam_norm=norm,
        gap_threshold=gap_threshold,
        class_average=class_average,
        in_distribution=familiar,
        familiarity_distance=distance,
        familiarity_threshold=None if statistics is None else statistics.threshold,
        familiarity_reason=reason,
        class_maps=maps.cpu().numpy(),
        input_window=window,
    )
