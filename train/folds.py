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

from spml.audit.folds import FOLDS_FILE, FOLDS_FORMAT, read_folds
from spml.data.generic import load_dataset
from spml.runtime import atomic_write_text
from train.config import TrainConfig
from train.engine import fit
from train.fold_split import assign_folds


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
