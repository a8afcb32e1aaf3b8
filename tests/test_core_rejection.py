"""The rejection rule and its running thresholds, on hand-built logits and a hand-rolled EMA."""

import json

import pytest
import torch

from spml.rejection import (
    RunningThresholds,
    estimated_precision,
    logit_gap,
    placebo_mask,
    probe_columns,
    probe_decisions,
    rejection_mask,
)


def t(values, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


# gaps |z - zM|: [[7.0, 2.0, 1.0, 2.0], [2.0, 3.0, 0.0, 3.0]]
LOGITS = [[2.0, 1.0, 0.5, -1.0], [0.3, 3.0, 2.0, 1.0]]
MASKED = [[-5.0, -1.0, -0.5, -3.0], [2.3, 0.0, 2.0, 4.0]]
OBSERVED = [[1, 0, 0, 0], [0, -1, 0, 0]]
GAP_THRESHOLD = 1.0
CLASS_AVERAGE = [0.3, 0.5, 0.0, 0.0]
# Entry by entry:
# (0,0) observed positive: never, whatever its gap (7) and logit.
# (0,1) gap 2 > 1 and z 1.0 > 0.5                 -> rejected
# (0,2) gap 1 == T_gap (strict >)                   -> kept
# (0,3) gap 2 > 1 but z -1 <= 0                     -> kept
# (1,0) gap 2 > 1 but z 0.3 == A_0 (strict >)      -> kept
# (1,1) known negative (-1): never, gap 3 and z 3 > 0.5
# (1,2) gap 0                                       -> kept
# (1,3) gap 3 > 1 and z 1 > 0                       -> rejected
EXPECTED = [[False, True, False, False], [False, False, False, True]]


def test_logit_gap_is_absolute_difference():
    assert torch.allclose(logit_gap(t(LOGITS), t(MASKED)), t([[7.0, 2.0, 1.0, 2.0], [2.0, 3.0, 0.0, 3.0]]))


@pytest.mark.parametrize("as_tensor", [False, True])
def test_rejection_mask_by_hand(as_tensor, any_device):
    threshold = torch.tensor(GAP_THRESHOLD, device=any_device) if as_tensor else GAP_THRESHOLD
    mask = rejection_mask(t(LOGITS).to(any_device), t(MASKED).to(any_device),
                          t(OBSERVED, torch.long).to(any_device), threshold, t(CLASS_AVERAGE).to(any_device))
    assert mask.dtype == torch.bool and mask.device.type == any_device.type
    assert mask.tolist() == EXPECTED


def test_rejection_mask_never_touches_observed_entries():
    # Thresholds every entry passes: exactly the unknown entries are rejected.
    observed = t(OBSERVED, torch.long)
    mask = rejection_mask(t(LOGITS), t(MASKED) + 10.0, observed, -1e9, torch.full((4,), -1e9))
    assert torch.equal(mask, observed == 0)


def test_rejection_mask_accepts_a_positive_only_matrix():
    observed = t([[1, 0, 0, 0], [0, 0, 0, 0]], torch.long)  # {0, 1}: the known negative is now unknown
    mask = rejection_mask(t(LOGITS), t(MASKED), observed, GAP_THRESHOLD, t(CLASS_AVERAGE))
    assert mask.tolist() == [[False, True, False, False], [False, True, False, True]]


def test_rejection_mask_gap_and_average_both_required():
    logits = t([[2.0, 2.0, -2.0]])
    masked = t([[2.0, 0.0, 0.0]])  # gaps 0, 2, 2
    observed = t([[0, 0, 0]], torch.long)
    average = t([0.0, 0.0, 0.0])
    assert rejection_mask(logits, masked, observed, 1.0, average).tolist() == [[False, True, False]]


# ----------------------------------------------------------------------------- running thresholds

# Three batches, worked with momentum 0.5 from 0:
# batch 1: positive gaps 1 and 2 -> mean 1.5;       T = 0.5*0 + 0.5*1.5        = 0.75
#          batch mean logits [1.5, 1.5, -0.5];        A = [0.75, 0.75, -0.25]
# batch 2: positive gap 3;                           T = 0.5*0.75 + 0.5*3       = 1.875
#          logits [0, 4, 2];                          A = [0.375, 2.375, 0.875]
# batch 3: no positive -> T unchanged                T = 1.875
#          logits [2, 2, 2];                          A = [1.1875, 2.1875, 1.4375]
BATCHES = [
    ([[2.0, 0.0, -1.0], [1.0, 3.0, 0.0]], [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], [[1, 0, 0], [0, 1, -1]]),
    ([[0.0, 4.0, 2.0]], [[3.0, 4.0, 2.0]], [[1, 0, 0]]),
    ([[2.0, 2.0, 2.0]], [[0.0, 0.0, 0.0]], [[0, -1, 0]]),
]
EXPECTED_GAP = [0.75, 1.875, 1.875]
EXPECTED_AVERAGE = [[0.75, 0.75, -0.25], [0.375, 2.375, 0.875], [1.1875, 2.1875, 1.4375]]


def _feed(thresholds: RunningThresholds, batch) -> RunningThresholds:
    logits, masked, observed = batch
    return thresholds.update(t(logits), t(masked), t(observed, torch.long))


def test_running_thresholds_start_at_zero():
    thresholds = RunningThresholds(3)
    assert thresholds.momentum == 0.999 and not thresholds.bias_correction
    assert thresholds.gap_threshold == 0.0
    assert thresholds.class_average.tolist() == [0.0, 0.0, 0.0]


def test_running_thresholds_momentum_half_by_hand():
    thresholds = RunningThresholds(3, momentum=0.5)
    for batch, gap, average in zip(BATCHES, EXPECTED_GAP, EXPECTED_AVERAGE, strict=True):
        assert _feed(thresholds, batch) is thresholds
        assert thresholds.gap_threshold == pytest.approx(gap)
        assert isinstance(thresholds.gap_threshold, float)
        assert thresholds.class_average.tolist() == pytest.approx(average)


def test_running_thresholds_bias_correction_by_hand():
    thresholds = RunningThresholds(3, momentum=0.5, bias_correction=True)
    assert thresholds.gap_threshold == 0.0  # no step yet: nothing to divide
    _feed(thresholds, BATCHES[0])
    assert thresholds.gap_threshold == pytest.approx(0.75 / (1 - 0.5))
    assert thresholds.class_average.tolist() == pytest.approx([v / 0.5 for v in EXPECTED_AVERAGE[0]])
    _feed(thresholds, BATCHES[1])
    _feed(thresholds, BATCHES[2])
    # T_gap saw 2 batches with positives, A_c all 3.
    assert thresholds.gap_threshold == pytest.approx(1.875 / (1 - 0.5**2))
    assert thresholds.class_average.tolist() == pytest.approx([v / (1 - 0.5**3) for v in EXPECTED_AVERAGE[2]])


def test_running_thresholds_bias_correction_without_any_positive_stays_zero():
    thresholds = RunningThresholds(3, momentum=0.5, bias_correction=True)
    _feed(thresholds, BATCHES[2])
    assert thresholds.gap_threshold == 0.0
    assert thresholds.class_average.tolist() == pytest.approx([2.0, 2.0, 2.0])


def test_running_thresholds_default_momentum_against_hand_rolled_ema():
    generator = torch.Generator().manual_seed(0)
    thresholds = RunningThresholds(4)
    gap, average = 0.0, [0.0] * 4
    for step in range(30):
        logits = torch.randn(5, 4, generator=generator)
        masked = torch.randn(5, 4, generator=generator)
        observed = torch.zeros(5, 4, dtype=torch.long)
        if step % 7 != 3:  # every 7th batch (from the 4th) has no positive at all
            for i in range(5):
                observed[i, (i + step) % 4] = 1
            observed[0, (step + 1) % 4] = -1
        thresholds.update(logits, masked, observed)
        positives = [(i, c) for i in range(5) for c in range(4) if observed[i, c] == 1]
        if positives:
            batch_gap = sum(abs(float(logits[i, c]) - float(masked[i, c])) for i, c in positives) / len(positives)
            gap = 0.999 * gap + 0.001 * batch_gap
        average = [0.999 * a + 0.001 * sum(float(logits[i, c]) for i in range(5)) / 5 for c, a in enumerate(average)]
        assert thresholds.gap_threshold == pytest.approx(gap, rel=1e-5)
        assert thresholds.class_average.tolist() == pytest.approx(average, rel=1e-5, abs=1e-9)
    assert gap > 0  # the test did move T_gap


def test_running_thresholds_state_dict_round_trip_through_json():
    original = RunningThresholds(3, momentum=0.5, bias_correction=True)
    for batch in BATCHES[:2]:
        _feed(original, batch)
    state = json.loads(json.dumps(original.state_dict()))
    assert state["gap_threshold"] == pytest.approx(1.875 / 0.75)
    assert state["raw_gap"] == pytest.approx(1.875)
    assert state["gap_steps"] == 2 and state["average_steps"] == 2
    restored = RunningThresholds.from_state_dict(state)
    assert restored.momentum == 0.5 and restored.bias_correction
    assert restored.gap_threshold == pytest.approx(original.gap_threshold)
    assert torch.allclose(restored.class_average, original.class_average)
    # Both carry on identically, step counts (used by the bias correction) included.
    _feed(original, BATCHES[2])
    _feed(restored, BATCHES[2])
    assert restored.gap_threshold == pytest.approx(original.gap_threshold)
    assert torch.allclose(restored.class_average, original.class_average)
    assert restored.state_dict()["gap_steps"] == original.state_dict()["gap_steps"] == 2
    assert restored.state_dict()["average_steps"] == original.state_dict()["average_steps"] == 3
    # load_state_dict into an existing object of another momentum takes the stored one
    other = RunningThresholds(3).load_state_dict(state)
    assert other.momentum == 0.5 and other.gap_threshold == pytest.approx(2.5)


def test_running_thresholds_refuse_bad_input():
    with pytest.raises(ValueError, match="momentum"):
        RunningThresholds(3, momentum=1.0)
    state = RunningThresholds(3).state_dict()
    with pytest.raises(ValueError, match="3 classes"):
        RunningThresholds(4).load_state_dict(state)


def test_running_thresholds_average_the_gap_over_every_observed_positive():
    # Image 0 has two observed positives (gaps 7 and 2), image 1 one (gap 3): T_gap's batch value is
    # (7 + 2 + 3) / 3 = 4, the mean over the three positives, not over images ((4.5 + 3) / 2 = 3.75).
    observed = t([[1, 1, 0, 0], [0, 1, 0, 0]], torch.long)
    thresholds = RunningThresholds(4, momentum=0.5).update(t(LOGITS), t(MASKED), observed)
    assert thresholds.gap_threshold == pytest.approx(0.5 * 4.0)
    assert thresholds.class_average.tolist() == pytest.approx([0.5 * 1.15, 0.5 * 2.0, 0.5 * 1.25, 0.0])


# Probes: with several annotated positives, one of them is hidden from the mask in turn.
PROBE_OBSERVED = [[1, 0, 1, 1], [1, 0, 0, 0], [0, 1, 1, -1], [0, 0, 0, 0]]


@pytest.mark.parametrize("turn, expected", [
    (0, [0, -1, 1, -1]),  # each image's first positive; rows with fewer than two have none
    (1, [2, -1, 2, -1]),
    (2, [3, -1, 1, -1]),  # row 2 has two positives: turn 2 is its first again
    (4, [2, -1, 1, -1]),  # 4 mod 3 = 1 in row 0, 4 mod 2 = 0 in row 2
])
def test_probe_columns_take_turns_by_hand(turn, expected):
    assert probe_columns(t(PROBE_OBSERVED, torch.long), turn).tolist() == expected


def test_probe_columns_cover_every_positive_over_the_turns():
    observed = t(PROBE_OBSERVED, torch.long)
    seen = {(row, int(column)) for turn in range(6) for row, column in enumerate(probe_columns(observed, turn))
            if column >= 0}
    assert seen == {(0, 0), (0, 2), (0, 3), (2, 1), (2, 2)}


def test_probe_decisions_by_hand():
    columns = t([0, -1, 2, 1], torch.long)
    logits = t([[2.0, 0.0, 0.0], [9.0, 9.0, 9.0], [0.0, 0.0, 1.0], [0.0, 0.5, 0.0]])
    probe_logits = t([[0.5, 0.0, 0.0], [-9.0, -9.0, -9.0], [0.0, 0.0, 0.8], [0.0, -2.0, 0.0]])
    class_average = t([1.0, 0.6, 0.0])
    # row 0, class 0: gap 1.5 > 1, z 2 > 1 -> flagged; row 1: no probe (its 9s never count)
    # row 2, class 2: gap 0.2 <= 1 -> not; row 3, class 1: gap 2.5 > 1 but z 0.5 <= 0.6 -> not
    assert probe_decisions(logits, probe_logits, columns, 1.0, class_average).tolist() == [True, False, False]
    # One gap threshold per class: class 0 needs more than 2, class 2 more than 0.1.
    per_class = t([2.0, 1.0, 0.1])
    assert probe_decisions(logits, probe_logits, columns, per_class, class_average).tolist() == [False, True, False]


def test_estimated_precision_by_hand():
    # recall on the probes 6/10; 50 positives lack a label; 40 entries flagged: 0.6 * 50 / 40
    assert estimated_precision(10, 6, 40, 50.0) == pytest.approx(0.75)
    assert estimated_precision(10, 9, 40, 100.0) == 1.0  # capped
    assert estimated_precision(10, 6, 40, -3.0) == 0.0  # more annotated than expected: nothing missing
    assert estimated_precision(0, 0, 40, 50.0) is None
    assert estimated_precision(10, 6, 0, 50.0) is None
    assert estimated_precision(10, 6, 40, None) is None


def test_placebo_rejects_as_many_unknown_entries_per_image_as_the_rule_at_random():
    observed = t([[1, 0, 0, 0, 0], [0, 1, 0, -1, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 1]], torch.long)
    flagged = t([[0, 1, 1, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 0]], torch.bool)
    draws = [placebo_mask(flagged, observed, torch.Generator().manual_seed(seed)) for seed in range(40)]
    for mask in draws:
        assert mask.sum(dim=1).tolist() == [2, 1, 0, 4]  # the rule's count, image by image
        assert not (mask & (observed != 0)).any()  # never an annotated or known entry
    # Row 3 has exactly 4 unknown entries, so all of them; elsewhere the choice varies with the stream.
    assert all(mask[3].tolist() == [True, True, True, True, False] for mask in draws)
    assert len({tuple(mask[0].tolist()) for mask in draws}) > 1
    assert torch.equal(draws[7], placebo_mask(flagged, observed, torch.Generator().manual_seed(7)))
