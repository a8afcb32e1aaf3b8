"""TensorBoard event files of a training run, written into its run folder (rank 0 only).

Everything sits on one axis, the global step (batches trained since the run began): per step the loss
and the learning rates; at the end of each epoch every number of its ``metrics.csv`` row (val mAP, and
for CALR the rejections, the running thresholds, the probes' estimate, the rule's true precision and
recall where the hidden labels are known) and a grid of the CAMs of fixed validation images with the
labels the rule would reject; at the end the best model's test mAP. A resumed run opens the folder with
``purge_step`` at its first new step, so TensorBoard drops what the killed run wrote past its last saved
epoch and the curves go on without a duplicate step.

``tensorboard`` is imported only here, and only when a run writes events: a missing package is named in
the log and the run goes on without them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from spml.cam import heatmap_overlay
from spml.checkpoint import LoadedModel
from spml.data import Split
from spml.data.images import load_image
from spml.inspect import analyze

log = logging.getLogger("train")
TILE = 192  # a CAM's side in the grid, in pixels
GRID_IMAGES = 8
GRID_COLUMNS = 4
CAPTION_HEIGHT = 30


class RunBoard:
    """The event writer of one run; ``open`` returns None where no events are to be written."""

    def __init__(self, writer: Any):
        self.writer = writer

    @classmethod
    def open(cls, run: Path, first_step: int) -> RunBoard | None:
        """A writer on ``run`` whose steps from ``first_step`` on replace any written before (a resume)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("TensorBoard is not installed (pip install tensorboard==2.21.0): this run writes no event "
                        "files; --no-tensorboard turns them off without this warning")
            return None
        return cls(SummaryWriter(log_dir=str(run), purge_step=first_step))

    def step(self, step: int, loss: float, learning_rates: list[float]) -> None:
        self.writer.add_scalar("step/loss", loss, step)
        for name, rate in zip(("backbone", "head"), learning_rates, strict=False):
            self.writer.add_scalar(f"step/lr_{name}", rate, step)

    def epoch(self, step: int, row: dict[str, Any], class_average: torch.Tensor | None) -> None:
        """Every number of the epoch's metrics row as ``epoch/<column>``; CALR's class averages A_c as a
        histogram."""
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                self.writer.add_scalar(f"epoch/{key}", value, step)
        if class_average is not None:
            self.writer.add_histogram("calr/class_average", class_average.detach().float().cpu(), step)
        self.writer.flush()

    def cams(self, step: int, grid: np.ndarray) -> None:
        self.writer.add_image("cams/val", grid, step, dataformats="HWC")
        self.writer.flush()

    def test(self, step: int, test_map: float) -> None:
        self.writer.add_scalar("test/map_of_best", test_map, step)

    def close(self) -> None:
        self.writer.close()


def grid_images(split: Split, count: int = GRID_IMAGES) -> list[tuple[Path, list[str]]]:
    """``count`` fixed images of ``split``, spread over it, with their annotated positives (empty: the top
    prediction stands in)."""
    if not split.images:
        return []
    picks = np.unique(np.linspace(0, len(split.images) - 1, num=min(count, len(split.images))).round().astype(int))
    return [(split.images[i], [split.classes[j] for j in np.flatnonzero(split.observed[i] == 1)]) for i in picks]


def _tile(image: Image.Image, model: LoadedModel, positives: list[str]) -> np.ndarray:
    result = analyze(model, image, positive=positives or None)
    heat = heatmap_overlay(np.asarray(image), result.cam)
    tile = Image.fromarray(heat).resize((TILE, TILE), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (TILE, TILE + CAPTION_HEIGHT), (255, 255, 255))
    canvas.paste(tile, (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((3, TILE + 2), f"+ {', '.join(result.positives)}"[:34], fill=(0, 0, 0))
    rejected = ", ".join(result.rejected) if result.rejected else "-"
    draw.text((3, TILE + 15), f"rejects: {rejected}"[:34], fill=(170, 0, 0))
    return np.asarray(canvas)


@torch.inference_mode()
def cam_grid(model: LoadedModel, picks: list[tuple[Path, list[str]]]) -> np.ndarray:
    """The CAM of each pick's positive over the image, captioned with the positive and the labels the rule
    would reject, as one (H, W, 3) uint8 grid of :data:`GRID_COLUMNS` columns."""
    was_training = model.network.training
    model.network.eval()
    try:
        tiles = [_tile(load_image(path), model, positives) for path, positives in picks]
    finally:
        model.network.train(was_training)
    rows = -(-len(tiles) // GRID_COLUMNS)
    blank = np.full_like(tiles[0], 255)
    tiles += [blank] * (rows * GRID_COLUMNS - len(tiles))
    return np.concatenate([np.concatenate(tiles[r * GRID_COLUMNS:(r + 1) * GRID_COLUMNS], axis=1)
                           for r in range(rows)], axis=0)
