"""Analyse one image: predictions, the positive's CAM, the highlighted region and the rule's verdict."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    upsample_maps,
)
from spml.checkpoint import LoadedModel
from spml.data.images import ImageSource, load_image
from spml.data.transforms import eval_transform
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
    positive: str  # the (first) class whose CAM is used
    positive_given: bool  # False: the top prediction was used
    cam: np.ndarray  # (H, W) float32 in [0, 1]; with several positives, the pixelwise maximum of their CAMs
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
    # feature statistics to tell (``python -m spml calibrate``). See spml.familiarity.
    in_distribution: bool | None = None
    familiarity_distance: float | None = None  # the image's distance to the training features
    familiarity_threshold: float | None = None
    positives: list[str] = field(default_factory=list)  # every annotated positive (the top prediction if none)
    # Every class's normalised CAM at the network's map resolution (C, h, w), from the same forward pass.
    class_maps: np.ndarray | None = None

    def table(self) -> list[dict[str, object]]:
        """One row per class other than the positive: rejected ones first, then by probability."""
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


def _resolve_positives(model: LoadedModel, positive: str | list[str] | tuple[str, ...] | None,
                       logits: torch.Tensor) -> tuple[list[int], bool]:
    """The annotated positives' indices (a list, or names joined by ``;``), each once, in the order given;
    the top prediction when none is given."""
    names = positive.split(";") if isinstance(positive, str) else list(positive or [])
    indices: list[int] = []
    for name in (str(name).strip() for name in names):
        if name and model.class_index(name) not in indices:
            indices.append(model.class_index(name))
    if not indices:
        return [int(logits.argmax())], False
    return indices, True


@torch.inference_mode()
def analyze(
    model: LoadedModel,
    image: ImageSource | Image.Image | np.ndarray,
    positive: str | list[str] | tuple[str, ...] | None = None,
    cam_threshold: float | None = None,
    cam_norm: str | None = None,
) -> AnalysisResult:
    """Run the checkpoint on one image the way training would treat it with ``positive`` annotated.

    One forward pass gives the logits and every class's CAM; a second one, on the masked image, gives
    the masked logits. Several annotated positives (a list, or names joined by ``;``) mask to the union
    of their regions. Each map is normalised on its own: a batch of one image has no batch statistics,
    so the ``reference`` normalisation falls back to per-image min-max here (see ``spml.cam.normalize_cams``).
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
    inputs = eval_transform(model.image_size, model.mean, model.std)(picture)[None].to(device)

    output = network(inputs)
    logits = output.logits[0].float()
    statistics = statistics_of(model)
    familiar, distance = (None, None) if statistics is None else statistics.in_distribution(picture)
    positive_indices, given = _resolve_positives(model, positive, logits)
    # Every class's map from the one forward pass (C, h, w), each normalised on its own: the positives'
    # give the mask, all of them the app's gallery.
    maps = normalize_cams(network.class_maps(output)[0].float(), "image" if norm == "reference" else norm)
    cams = maps[positive_indices]  # (k, h, w): each positive's map, upsampled on its own before the union
    network_mask = (upsample_maps(cams, tuple(inputs.shape[-2:])) > threshold).any(dim=0, keepdim=True)
    masked_logits = network(apply_masks(inputs, network_mask)).logits[0].float()

    observed = torch.zeros_like(logits, dtype=torch.int8)
    observed[positive_indices] = 1
    gaps = logit_gap(logits, masked_logits)
    if model.thresholds is not None:
        rejected_flags = rejection_mask(logits[None], masked_logits[None], observed[None],
                                        model.thresholds.gap_threshold_tensor, model.thresholds.class_average)[0]
        rejected_indices = [int(i) for i in torch.nonzero(rejected_flags).flatten()]
        gap_threshold = model.thresholds.gap_threshold
        class_average = dict(zip(model.classes, model.thresholds.class_average.cpu().tolist(), strict=True))
    else:
        rejected_indices, gap_threshold, class_average = [], None, None

    height, width = rgb.shape[:2]
    cam = upsample_maps(cams, (height, width)).amax(dim=0).clamp(0, 1).cpu().numpy().astype(np.float32)
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
        positives=[names[i] for i in positive_indices],
        class_maps=maps.cpu().numpy(),
    )
