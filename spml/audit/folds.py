"""Cross-fitted checkpoints: a run of ``python -m train fit --folds K`` audited out of sample.

Such a run directory holds ``folds.json`` (written by :mod:`train.folds`) and ``fold-<k>/best/``, K
normal checkpoints, model k trained without fold k of the training split. The audit scores an image
listed in fold k with model k, the one that never trained on it; an image listed in no fold (the
validation and test splits, images added since) was trained on by none of them and gets model 0: one
model's numbers, not an average, so that a report row's numbers are those of one forward pass that the
review can recompute exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision import transforms as T

from spml.checkpoint import LoadedModel, load_model

FOLDS_FILE = "folds.json"
FOLDS_FORMAT = "spml-folds"


@dataclass
class FoldModels:
    """The K models of a cross-fitted run and which images each one never trained on."""

    models: list[LoadedModel]
    folds: dict[str, int]  # image path as the data set CSV writes it -> its fold
    source: str

    def fold_of(self, image: str) -> int:
        """The fold of ``image`` (the model that never saw it); 0 for an image in no fold."""
        return self.folds.get(image, 0)

    # What the audit reads of a model; the K models agree on all of it (checked on loading).
    @property
    def classes(self) -> list[str]:
        return self.models[0].classes

    @property
    def image_size(self) -> int:
        return self.models[0].image_size

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.models[0].mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.models[0].std

    @property
    def resize(self) -> str:
        return self.models[0].resize

    def input_transform(self) -> T.Compose:
        return self.models[0].input_transform()

    @property
    def device(self) -> torch.device:
        return self.models[0].device


def is_fold_run(path: str | Path) -> bool:
    """Whether ``path`` is a local cross-fitted run directory (it holds folds.json)."""
    return not str(path).startswith("hf://") and (Path(path) / FOLDS_FILE).is_file()


def read_folds(run: str | Path) -> dict[str, Any]:
    """The content of ``run/folds.json``, checked: {"format", "k", "seed", "split", "folds": [[image, ...], ...]}."""
    path = Path(run) / FOLDS_FILE
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a folds file ({error})") from None
    if not isinstance(payload, dict) or payload.get("format") != FOLDS_FORMAT:
        raise ValueError(f"{path}: not a folds file (format != {FOLDS_FORMAT!r})")
    folds = payload.get("folds")
    if not isinstance(folds, list) or len(folds) != payload.get("k") or len(folds) < 2:
        raise ValueError(f"{path}: 'folds' must be a list of k >= 2 lists of images")
    return payload


def load_fold_models(run: str | Path, device: torch.device | str = "cpu") -> FoldModels:
    """The K checkpoints ``run/fold-<k>/best`` of a cross-fitted run, and its fold assignment."""
    payload = read_folds(run)
    folds: dict[str, int] = {}
    for index, images in enumerate(payload["folds"]):
        for image in images:
            if image in folds:
                raise ValueError(f"{Path(run) / FOLDS_FILE}: image {image!r} is in folds {folds[image]} and {index}")
            folds[image] = index
    models = []
    for index in range(payload["k"]):
        best = Path(run) / f"fold-{index}" / "best"
        if not best.is_dir():
            raise ValueError(f"{run}: fold {index} has no checkpoint {best} (has its training finished?)")
        models.append(load_model(best, device=device))
    first = models[0]
    for index, model in enumerate(models[1:], start=1):
        if (model.classes, model.image_size, model.mean, model.std, model.resize) != (
                first.classes, first.image_size, first.mean, first.std, first.resize):
            raise ValueError(f"{run}: fold {index}'s checkpoint differs from fold 0's in classes, input size, "
                             "normalisation or resize")
    return FoldModels(models=models, folds=folds, source=str(run))


def load_audit_model(checkpoint: str | Path, device: torch.device | str = "cpu") -> LoadedModel | FoldModels:
    """A checkpoint, or the K models of a cross-fitted run directory."""
    if is_fold_run(checkpoint):
        return load_fold_models(checkpoint, device)
    return load_model(checkpoint, device=device)
