"""How well the quantities a rejection rule can read separate the unannotated real labels from the
absent classes, on a training split whose hidden labels the bench knows.

Any rule that rejects the entries where one of these scores is high has at best the precision and
recall of that score's ranking: the AUROC and the precision at recall 0.3 and 0.5 measured here are
the ceiling of such rules, epoch by epoch, whatever their thresholds. The model is read in evaluation
mode (running BatchNorm statistics, no gradient), so measuring changes nothing in the training.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from spml.cam import CamNorm, apply_masks, positive_masks
from spml.metrics import precision_at_recall, roc_auc

RECALLS = (0.3, 0.5)
SCORES = ("logit", "gap", "drop", "logit_x_drop", "outside")
SCORE_MEANINGS = {
    "logit": "z - A_c, the logit against the class's mean over the split (the rule's second test)",
    "gap": "|z - z^M|, the rule's gap",
    "drop": "z - z^M, how much masking to the positives lowers the logit",
    "logit_x_drop": "max(z - A_c, 0) x max(z - z^M, 0)",
    "outside": "z^out - A_c, the logit of the image with the positives' region blanked out",
}


def rule_scores(logits: np.ndarray, masked: np.ndarray, outside: np.ndarray) -> dict[str, np.ndarray]:
    """Each score of ``SCORES`` per (image, class) from the whole image's logits, the logits of the
    image masked to its annotated positives' region, and of the image with that region blanked out."""
    centred = logits - logits.mean(axis=0, keepdims=True)
    drop = logits - masked
    return {"logit": centred, "gap": np.abs(drop), "drop": drop,
            "logit_x_drop": np.maximum(centred, 0.0) * np.maximum(drop, 0.0),
            "outside": outside - logits.mean(axis=0, keepdims=True)}


def separation(scores: dict[str, np.ndarray], labels: np.ndarray, observed: np.ndarray) -> dict[str, float]:
    """``{score}_auroc`` and ``{score}_p{recall}`` over the unknown entries (``observed == 0``), a real
    label among them counting as the positive class; NaN where there is none (or no absent class)."""
    unknown = np.asarray(observed) == 0
    truth = np.asarray(labels)[unknown] > 0
    result: dict[str, float] = {}
    for name, values in scores.items():
        ranked = values[unknown]
        result[f"{name}_auroc"] = roc_auc(ranked, truth) if truth.any() and not truth.all() else float("nan")
        for recall in RECALLS:
            result[f"{name}_p{recall:g}"] = precision_at_recall(ranked, truth, recall)
    return result


@torch.no_grad()
def split_logits(network: nn.Module, images: Tensor, observed: Tensor, batch_size: int, cam_threshold: float,
                 cam_norm: CamNorm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, C) logits of ``images`` whole, masked to their annotated positives' CAM region (as the
    rule masks them), and with that region blanked out; the network in evaluation mode meanwhile."""
    was_training = network.training
    network.eval()
    whole, masked, outside = [], [], []
    try:
        for start in range(0, len(images), batch_size):
            batch, batch_observed = images[start:start + batch_size], observed[start:start + batch_size]
            output = network(batch)
            masks = positive_masks(network, output, batch_observed, tuple(batch.shape[-2:]), cam_threshold,
                                   cam_norm)
            whole.append(output.logits.float())
            masked.append(network(apply_masks(batch, masks)).logits.float())
            outside.append(network(apply_masks(batch, ~masks)).logits.float())
    finally:
        network.train(was_training)
    return tuple(torch.cat(part).cpu().numpy() for part in (whole, masked, outside))
