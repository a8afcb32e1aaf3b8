"""The benchmark protocol of Cole et al. (CVPR 2021): single-positive draws and the train/val split.

Both functions reproduce the reference code draw for draw, so that a data set prepared here has the
same single positives and the same split as every published SPML result.
"""

from __future__ import annotations

import numpy as np

PROTOCOL_SEED = 1200
VAL_FRACTION = 0.2


def sample_single_positive(labels: np.ndarray, seed: int = PROTOCOL_SEED) -> np.ndarray:
    """Keep one positive per row, drawn exactly as the protocol's reference does.

    One fresh ``RandomState(seed)`` serves all rows in order. For each row the indices of its
    positives are shuffled, then the indices of its negatives are shuffled too: the reference keeps
    no negative, but that shuffle consumes random numbers, so skipping it would change every later
    draw. The first shuffled positive is kept.

    A row without any positive (NUS-WIDE has about 22% of them) stays all zero. The reference treats
    it the same way: shuffling its empty positive array draws no number, and its negatives are still
    shuffled (consuming numbers) before the next row.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D (images, classes) array, got shape {labels.shape}")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must contain only 0 and 1")
    rng = np.random.RandomState(seed)
    observed = np.zeros_like(labels)
    for i, row in enumerate(labels):
        idx_pos = np.where(row == 1)[0]
        rng.shuffle(idx_pos)
        idx_neg = np.where(row == 0)[0]
        rng.shuffle(idx_neg)  # kept for its side effect on the random stream, see above
        if idx_pos.size:
            observed[i, idx_pos[0]] = 1
    return observed


def protocol_split(
    num_images: int, seed: int = PROTOCOL_SEED, val_fraction: float = VAL_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Split an official training set of ``num_images`` into sorted (train, val) index arrays.

    ``n_val = int(np.round(val_fraction * num_images))`` as in the reference (numpy rounds half to
    even; with the protocol's 0.2 a product never ends in .5, so this only matters for other
    fractions). ``perm = RandomState(seed).permutation(num_images)``; train is ``sorted(perm[:N -
    n_val])`` and val ``sorted(perm[-n_val:])``. The one departure: where ``n_val`` rounds to 0 (one
    or two images) the reference's ``perm[-0:]`` would put every image in val as well; here val is
    empty instead.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    n_val = int(np.round(val_fraction * num_images))
    perm = np.random.RandomState(seed).permutation(num_images)
    train = np.sort(perm[: num_images - n_val])
    val = np.sort(perm[num_images - n_val :])
    return train, val
