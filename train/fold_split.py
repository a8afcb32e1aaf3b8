"""Which training images make up each fold of a cross-fitted run, and a split without one fold.

Below both the trainer (:mod:`train.engine`, which trains a fold's model without that fold) and the
driver of the K runs (:mod:`train.folds`); the folds file itself is :mod:`spml.audit.folds`'s format.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from spml.audit.folds import read_folds
from spml.data.generic import Split


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
