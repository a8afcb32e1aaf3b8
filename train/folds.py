"""Cross-fitting for an out-of-sample audit: ``python -m train fit ... --folds K``.

The training split's images are dealt into K folds by a permutation drawn from the run's seed
(``numpy.random.RandomState(seed)``: fold f holds the images at positions f, f + K, ... of it, listed
in split order) and written to ``RUN/folds.json``; ``RUN/fold-<f>/`` is then a normal run (resumable,
``best/``, ``summary.json``) trained on every training image except those of fold f, validated and
tested on the usual splits. ``python -m spml audit --checkpoint RUN`` scores each image with the
model that never trained on it (:mod:`spml.audit.folds`).

Under torchrun the folds are spread over the ranks (rank r trains folds r, r + world, ...), each
trained by its rank alone on its own device: K independent models need no gradient exchange.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from spml.audit.folds import FOLDS_FILE, FOLDS_FORMAT, read_folds
from spml.data.generic import Split, load_dataset
from spml.runtime import atomic_write_text
from train.config import TrainConfig


def assign_folds(images: list[str], k: int, seed: int) -> list[list[str]]:
    """``images`` dealt into ``k`` folds by a seeded permutation; each fold in the images' order."""
    if not 2 <= k <= len(images):
        raise ValueError(f"--folds must be between 2 and the number of training images ({len(images)}), got {k}")
    permutation = np.random.RandomState(seed).permutation(len(images))
    return [[images[i] for i in sorted(permutation[f::k])] for f in range(k)]


def without_fold(split: Split, root: Path, folds_file: str | Path, fold: int) -> Split:
    """``split`` less the images of ``fold`` in ``folds_file`` (paths relative to the data set ``root``)."""
    folds = read_folds(Path(folds_file).parent)["folds"]
    if not 0 <= fold < len(folds):
        raise ValueError(f"{folds_file}: no fold {fold} (it has {len(folds)})")
    left_out = set(folds[fold])
    keep = np.array([path.relative_to(root).as_posix() not in left_out for path in split.images], dtype=bool)
    if keep.all():
        raise ValueError(f"{folds_file}: none of fold {fold}'s images is in the training split of {root}")
    chosen = np.flatnonzero(keep)
    return dataclasses.replace(split, images=[split.images[i] for i in chosen], rows=[split.rows[i] for i in chosen],
                               labels=split.labels[chosen], observed=split.observed[chosen])


@contextmanager
def _alone() -> Iterator[None]:
    """This process as a world of one (the trainer then starts no process group); LOCAL_RANK, which
    picks the device, stays."""
    saved = {name: os.environ.get(name) for name in ("WORLD_SIZE", "RANK")}
    os.environ.update({"WORLD_SIZE": "1", "RANK": "0"})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def fit_folds(config: TrainConfig, k: int) -> dict[str, Any]:
    """Write ``RUN/folds.json`` and train this rank's folds as ``RUN/fold-<f>/``; returns their summaries."""
    from train.engine import fit  # the engine imports without_fold from here

    if config.export:
        raise ValueError("--folds trains K models: export one of RUN/fold-<f>/best by hand instead")
    run = Path(config.out)
    dataset = load_dataset(config.data, skip_bad=config.skip_bad, single_positive=config.single_positive)
    images = [path.relative_to(dataset.root).as_posix() for path in dataset.split("train").images]
    payload = {"format": FOLDS_FORMAT, "version": 1, "k": k, "seed": config.seed, "data": str(config.data),
               "split": "train", "folds": assign_folds(images, k, config.seed)}
    path = run / FOLDS_FILE
    if path.is_file() and read_folds(run) != payload:
        raise ValueError(f"{path} holds other folds (another data set, seed or K): use a new --out")
    # Every rank writes the same file (atomically): ranks on machines without a shared disk need it too.
    atomic_write_text(path, json.dumps(payload, indent=1) + "\n")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    summaries = {}
    for fold in range(rank, k, world):
        fold_config = dataclasses.replace(config, out=str(run / f"fold-{fold}"), folds_file=str(path), fold=fold)
        with _alone():
            summaries[f"fold-{fold}"] = fit(fold_config)
    return {"run": str(run), "folds": k, "rank": rank, "trained": summaries}
