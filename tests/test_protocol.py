"""The protocol's single-positive draws and split, checked against an independent re-derivation.

The expected values are computed without ``RandomState.shuffle`` or ``permutation``: numpy's legacy
shuffle is a Fisher-Yates pass whose index for position i is a 32-bit MT19937 output masked to the
bit length of i, redrawn while it exceeds i. ``_legacy_shuffle`` re-implements that on the raw
MT19937 stream seeded as ``RandomState(seed)`` seeds it.
"""

import numpy as np
import pytest

from spml.data import protocol_split, sample_single_positive


def _stream(seed: int):
    return np.random.RandomState(seed)._bit_generator  # the seeded MT19937, used only for raw draws


def _legacy_shuffle(values: list[int], bits) -> list[int]:
    out = list(values)
    for i in range(len(out) - 1, 0, -1):
        mask = (1 << i.bit_length()) - 1
        while True:
            j = int(bits.random_raw()) & mask
            if j <= i:
                break
        out[i], out[j] = out[j], out[i]
    return out


def _expected_positives(labels: np.ndarray, seed: int = 1200, shuffle_negatives: bool = True) -> np.ndarray:
    bits = _stream(seed)
    expected = np.zeros_like(labels)
    for i, row in enumerate(labels):
        pos = _legacy_shuffle([j for j, v in enumerate(row) if v == 1], bits)
        if shuffle_negatives:
            _legacy_shuffle([j for j, v in enumerate(row) if v == 0], bits)
        if pos:
            expected[i, pos[0]] = 1
    return expected


def test_legacy_shuffle_reimplementation_is_faithful():
    # Guards the guard: the helper must reproduce numpy's legacy algorithm, or the tests below prove nothing.
    for n in (0, 1, 2, 3, 17, 100):
        rng = np.random.RandomState(7)
        values = np.arange(n)
        rng.shuffle(values)
        assert list(values) == _legacy_shuffle(list(range(n)), _stream(7))


def test_single_positive_matches_independent_derivation():
    rng = np.random.default_rng(3)
    labels = (rng.random((60, 9)) < 0.35).astype(np.uint8)
    labels[[4, 20, 33]] = 0  # rows without any positive
    labels[[7, 41]] = 1  # rows without any negative
    observed = sample_single_positive(labels)
    np.testing.assert_array_equal(observed, _expected_positives(labels))
    # The negative shuffle matters: skipping it would give other positives here.
    assert not np.array_equal(observed, _expected_positives(labels, shuffle_negatives=False))


def test_single_positive_other_seed_and_shape_rules():
    labels = (np.random.default_rng(0).random((25, 5)) < 0.5).astype(np.float32)
    observed = sample_single_positive(labels, seed=42)
    np.testing.assert_array_equal(observed, _expected_positives(labels, seed=42))
    assert observed.shape == labels.shape and observed.dtype == labels.dtype
    has = labels.sum(1) > 0
    assert (observed.sum(1)[has] == 1).all() and (observed.sum(1)[~has] == 0).all()
    assert (observed <= labels).all()


def test_single_positive_hand_checked():
    labels = np.array([[0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(sample_single_positive(labels), labels)
    assert sample_single_positive(np.zeros((0, 3), np.uint8)).shape == (0, 3)


def test_single_positive_rejects_bad_input():
    with pytest.raises(ValueError):
        sample_single_positive(np.array([0, 1, 1]))
    with pytest.raises(ValueError):
        sample_single_positive(np.array([[0, 2], [1, -1]]))


def test_protocol_split_matches_independent_derivation():
    n = 1000
    perm = _legacy_shuffle(list(range(n)), _stream(1200))
    train, val = protocol_split(n)
    assert list(train) == sorted(perm[:800]) and list(val) == sorted(perm[800:])
    train, val = protocol_split(37, seed=5, val_fraction=0.3)  # round(11.1) = 11
    perm = _legacy_shuffle(list(range(37)), _stream(5))
    assert list(train) == sorted(perm[:26]) and list(val) == sorted(perm[26:])


@pytest.mark.parametrize(
    ("n", "n_train", "n_val"),
    [(5717, 4574, 1143), (82081, 65665, 16416), (150000, 120000, 30000), (5994, 4795, 1199)],
)
def test_protocol_split_sizes_of_the_published_benchmarks(n, n_train, n_val):
    # VOC, COCO, NUS-WIDE, CUB official training sets give the published train/val sizes.
    train, val = protocol_split(n)
    assert (len(train), len(val)) == (n_train, n_val)
    assert np.intersect1d(train, val).size == 0
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()


def test_protocol_split_tiny_sets():
    # round(0.2 N) is 0 for N < 3: val is empty (the reference's perm[-0:] would give everything).
    for n in (0, 1, 2):
        train, val = protocol_split(n)
        assert list(train) == list(range(n)) and len(val) == 0
    train, val = protocol_split(3)
    assert len(train) == 2 and len(val) == 1
    with pytest.raises(ValueError):
        protocol_split(-1)
