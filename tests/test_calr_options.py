"""CALR's options and the defaults a user gets without a recipe, pinned on fixed batches.

Expected values are worked out by hand from the definitions (method.md section 2.4 and 2.5), never by
calling the code under test.
"""

import copy
import logging
import math

import pytest
import torch

from spml.losses import CALR, create_objective
from spml.losses.calr import CALR_DEFAULTS, PRETRAINED_MIN_PRECISION, REFERENCE_OPTIONS, calr_defaults
from spml.model import create_model
from spml.rejection import RunningThresholds, rejection_mask

NUM_CLASSES = 3


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("compact", NUM_CLASSES, width=8).train()


def _batch(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(4, 3, 32, 32, generator=generator)
    observed = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1]])
    labels = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1]])
    return {"image": images, "strong": images.flip(-1), "observed": observed, "labels": labels,
            "index": torch.arange(4)}


def _bn_buffers(model):
    return {name: value.clone() for name, value in model.state_dict().items()
            if "running" in name or "num_batches_tracked" in name}


def test_defaults_without_a_recipe_and_reference_options():
    ours = create_objective("calr", NUM_CLASSES)
    assert ours.thresholds.bias_correction is CALR_DEFAULTS["bias_correction"] is True
    assert ours.masked_bn == CALR_DEFAULTS["masked_bn"] == "batch"
    assert ours.thresholds.per_class_gap is CALR_DEFAULTS["per_class_gap"] is False
    assert ours.ran_views == CALR_DEFAULTS["ran_views"] == "both"
    assert ours.warmup_epochs == 3 and ours.warmup_steps is None and ours.cam_threshold == 0.5
    reference = CALR(NUM_CLASSES, reference=True)
    assert REFERENCE_OPTIONS == {"bias_correction": False, "masked_bn": "update", "per_class_gap": False,
                                 "ran_views": "strong", "min_precision": 0.0}
    assert not reference.thresholds.bias_correction and reference.masked_bn == "update"
    assert reference.ran_views == "strong"
    assert not reference.thresholds.per_class_gap and reference.thresholds.momentum == 0.999
    # An explicit option always wins over the defaults.
    assert not CALR(NUM_CLASSES, bias_correction=False).thresholds.bias_correction
    with pytest.raises(ValueError, match="reference CALR updates BatchNorm"):
        CALR(NUM_CLASSES, reference=True, masked_bn="eval")
    with pytest.raises(ValueError, match="unknown masked_bn"):
        CALR(NUM_CLASSES, masked_bn="frozen")
    with pytest.raises(ValueError, match="reference CALR computes RAN on the strong view"):
        CALR(NUM_CLASSES, reference=True, ran_views="both")
    with pytest.raises(ValueError, match="unknown ran_views"):
        CALR(NUM_CLASSES, ran_views="all")


def test_default_thresholds_after_three_steps_are_bias_corrected():
    """Three fixed batches through the default objective's thresholds, m = 0.999, by hand."""
    thresholds = create_objective("calr", NUM_CLASSES).thresholds
    observed = torch.tensor([[1, 0, 0], [0, 1, 0]])
    batches = [  # (logits, masked logits)
        (torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0]]), torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0]])),
        (torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]), torch.tensor([[0.0, 1.0, 1.0], [1.0, 2.0, 1.0]])),
        (torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 2.0]]), torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 2.0]])),
    ]
    # Observed positives' gaps: (1 + 2) / 2 = 1.5, (1 + 1) / 2 = 1.0, (0 + 3) / 2 = 1.5.
    batch_gaps = [1.5, 1.0, 1.5]
    batch_means = [[1.0, 2.0, 0.0], [1.0, 1.0, 1.0], [2.0, 0.0, 1.0]]
    m, gap, average = 0.999, 0.0, [0.0, 0.0, 0.0]
    for step, ((logits, masked), batch_gap, means) in enumerate(zip(batches, batch_gaps, batch_means, strict=True), 1):
        thresholds.update(logits, masked, observed)
        gap = m * gap + (1 - m) * batch_gap
        average = [m * a + (1 - m) * v for a, v in zip(average, means, strict=True)]
        held = 1 - m**step
        assert thresholds.gap_threshold == pytest.approx(gap / held, rel=1e-4)
        assert thresholds.class_average.tolist() == pytest.approx([a / held for a in average], rel=1e-4)
        assert thresholds.settled_fraction == 1.0
    # After three steps the corrected T_gap is the weighted mean of the three batch gaps, near 4/3.
    expected = (m**2 * 1.5 + m * 1.0 + 1.5) / (1 + m + m**2)
    assert thresholds.gap_threshold == pytest.approx(expected, rel=1e-4)
    assert thresholds.settled_gap_threshold == pytest.approx(expected, rel=1e-4)


def test_settled_fraction_without_bias_correction_is_the_accumulated_weight():
    thresholds = RunningThresholds(NUM_CLASSES, momentum=0.999)
    assert thresholds.settled_fraction == 0.0
    observed = torch.tensor([[1, 0, 0]])
    for _ in range(76):  # two warm-up epochs of the 38 steps
        thresholds.update(torch.ones(1, 3), torch.zeros(1, 3), observed)
    assert thresholds.settled_fraction == pytest.approx(1 - 0.999**76) and thresholds.settled_fraction < 0.08
    # The uncorrected T_gap holds that share of its settled value (every batch gap is 1).
    assert thresholds.gap_threshold == pytest.approx(1 - 0.999**76, rel=1e-4)
    assert thresholds.settled_gap_threshold == pytest.approx(1.0, rel=1e-4)


def test_per_class_gap_thresholds_by_hand_and_their_rejection_mask():
    thresholds = RunningThresholds(NUM_CLASSES, momentum=0.5, per_class_gap=True)
    logits = torch.tensor([[3.0, 2.0, 0.0], [1.0, 4.0, 0.0], [2.0, 0.0, 0.0]])
    masked = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    observed = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    thresholds.update(logits, masked, observed)
    # Class 0: positives in rows 0 and 2, gaps 2 and 0 -> 1.0, times (1 - m) = 0.5; class 1: row 1,
    # gap 3 -> 1.5; class 2: no positive, stays 0.
    assert thresholds.gap_threshold_tensor.tolist() == pytest.approx([0.5, 1.5, 0.0])
    assert thresholds.gap_threshold == pytest.approx(2.0 / 3)
    assert thresholds.class_average.tolist() == pytest.approx([1.0, 1.0, 0.0])
    # Unknown entries: (0,1) gap 1 <= 1.5 kept; (0,2) gap 0; (1,0) gap 1 > 0.5 and logit 1 > A_0 = 1? no;
    # (1,2) gap 0; (2,1) gap 0; (2,2) gap 0. Lower A_0 to 0.5 by hand and (1,0) goes.
    mask = rejection_mask(logits, masked, observed, thresholds.gap_threshold_tensor, thresholds.class_average)
    assert not mask.any()
    mask = rejection_mask(logits, masked, observed, thresholds.gap_threshold_tensor, torch.tensor([0.5, 1.0, 0.0]))
    assert mask.tolist() == [[False, False, False], [True, False, False], [False, False, False]]
    # The same case with one global threshold (mean of the gaps 2, 3, 0 = 5/3, times 0.5 = 5/6):
    # (0,1) gap 1 > 5/6 and logit 2 > A_1 = 1 -> rejected.
    glob = RunningThresholds(NUM_CLASSES, momentum=0.5).update(logits, masked, observed)
    assert glob.gap_threshold == pytest.approx(5 / 6)
    mask = rejection_mask(logits, masked, observed, glob.gap_threshold_tensor, glob.class_average)
    assert mask.tolist() == [[False, True, False], [False, False, False], [False, False, False]]


def test_per_class_state_round_trip_and_mismatch_error():
    thresholds = RunningThresholds(NUM_CLASSES, momentum=0.5, per_class_gap=True)
    thresholds.update(torch.tensor([[3.0, 2.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[1, 0, 0]]))
    state = thresholds.state_dict()
    assert state["per_class_gap"] and state["gap_thresholds"] == pytest.approx([1.0, 0.0, 0.0])
    again = RunningThresholds.from_state_dict(state)
    assert torch.equal(again.gap_threshold_tensor, thresholds.gap_threshold_tensor)
    with pytest.raises(ValueError, match="per-class gap thresholds"):
        RunningThresholds(NUM_CLASSES).load_state_dict(state)


@pytest.mark.parametrize("mode", ["batch", "eval", "update"])
def test_masked_pass_batchnorm_modes(mode):
    model, batch = _model(), _batch()
    twin = copy.deepcopy(model)
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append((args[0].detach().clone(), output)))
    CALR(NUM_CLASSES, masked_bn=mode).step(model, batch, epoch=1)
    masked_images, masked_output = calls[2]
    assert not masked_output.logits.requires_grad  # no autograd in any of our modes
    twin(batch["image"])
    twin(batch["strong"])
    after_two = copy.deepcopy(twin)
    if mode == "update":  # the reference's statistics: the masked batch folded in as a third pass
        twin(masked_images)
    expected, actual = _bn_buffers(twin), _bn_buffers(model)
    for name in expected:
        assert torch.allclose(actual[name], expected[name]), name
    # What the masked pass normalised with: running statistics in eval mode, batch statistics otherwise.
    after_two.eval() if mode == "eval" else after_two.train()
    with torch.no_grad():
        reproduced = after_two(masked_images).logits
    assert torch.allclose(masked_output.logits, reproduced, atol=1e-5)


def test_warmup_steps_replace_warmup_epochs():
    model, batch = _model(), _batch()
    objective = CALR(NUM_CLASSES, warmup_steps=2, warmup_epochs=100)
    active = []
    for _ in range(4):
        objective.step(model, batch, epoch=1)
        active.append(objective.rejection_active(epoch=1))
    assert active == [False, False, True, True]  # checked after the update: steps 1, 2 wait, 3 on
    assert [objective.rejection_active(e) for e in (3, 4)] == [True, True]
    by_epochs = CALR(NUM_CLASSES, warmup_epochs=3)
    assert [by_epochs.rejection_active(e) for e in (1, 3, 4)] == [False, False, True]


def test_warning_when_rejection_starts_on_unsettled_averages(caplog):
    model, batch = _model(), _batch()
    unsettled = CALR(NUM_CLASSES, warmup_epochs=1, bias_correction=False)
    with caplog.at_level(logging.WARNING, logger="spml.losses.calr"):
        unsettled.step(model, batch, epoch=1)  # warm-up: no rejection, no warning
        assert not caplog.records
        unsettled.step(model, batch, epoch=2)
        unsettled.step(model, batch, epoch=2)  # warned once, when rejection starts
    assert len(caplog.records) == 2 - 1
    message = caplog.records[0].getMessage()
    assert "after 2 steps" in message and "hold only 0% of their value" in message
    assert "bias_correction" in message
    caplog.clear()
    settled = CALR(NUM_CLASSES, warmup_epochs=1)  # the default: bias-corrected, no warning
    with caplog.at_level(logging.WARNING, logger="spml.losses.calr"):
        settled.step(model, batch, epoch=1)
        settled.step(model, batch, epoch=2)
    assert not caplog.records
    assert math.isclose(settled.thresholds.settled_fraction, 1.0)


def test_metrics_diagnostics_of_an_epoch():
    from pathlib import Path

    import numpy as np

    from spml.data import Split
    from spml.losses import AssumeNegative
    from train.loop import EpochStats, rejection_diagnostics

    labels = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 0]], dtype=np.uint8)
    observed = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=np.int8)  # hidden positives: 2
    split = Split("train", Path("-"), ["a", "b", "c"], [], [], labels, observed, True)
    stats = EpochStats(loss=1.0, parts={}, images=3, seconds=1.0, rejected=3, rejected_true=1, unknown_entries=6)
    objective = CALR(NUM_CLASSES, bias_correction=False, momentum=0.5)
    for _ in range(2):  # every batch gap 2, logits 1: uncorrected values hold 1 - 0.5**2 = 3/4
        objective.thresholds.update(torch.ones(3, 3), -torch.ones(3, 3), torch.tensor(observed))
    row = rejection_diagnostics(objective, stats, split)
    assert row == {"rejection_recall": 0.5, "probes": 0, "probe_recall": None, "estimated_precision": None,
                   "averages_held": 0.75, "gap_threshold_settled": 2.0,
                   "class_average_mean": 0.75, "class_average_settled_mean": 1.0}
    assert rejection_diagnostics(objective, stats, None)["rejection_recall"] is None
    # With probes: 4 of 8 flagged; 2 labels an image over 3 images, 3 annotated: 3 lack a label; 4 flagged.
    probed = EpochStats(loss=1.0, parts={}, images=3, seconds=1.0, rejected=3, rejected_true=1, unknown_entries=6,
                        annotated=3, probes=8, probes_flagged=4, flagged=4)
    row = rejection_diagnostics(objective, probed, split, expected_positives=2.0)
    assert (row["probes"], row["probe_recall"], row["estimated_precision"]) == (8, 0.5, 0.375)
    assert rejection_diagnostics(objective, probed, split)["estimated_precision"] is None
    assert rejection_diagnostics(AssumeNegative(), stats, split) == {}


def test_default_step_rejects_against_the_batch_own_statistics_after_one_step():
    """Bias-corrected averages after one update are exactly that batch's statistics, so the default
    rule's first decision can be written from the step's own logits."""
    model, batch = _model(), _batch()
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(output.logits.detach()))
    result = CALR(NUM_CLASSES, warmup_epochs=0).step(model, batch, epoch=1)
    logits, masked = calls[0], calls[2]
    gap = (logits - masked).abs()
    positive = batch["observed"] == 1
    t_gap = float(gap[positive].mean())
    class_average = logits.mean(dim=0)
    expected = (batch["observed"] == 0) & (gap > t_gap) & (logits > class_average)
    assert torch.equal(result.rejected, expected)
    uncorrected = CALR(NUM_CLASSES, warmup_epochs=0, bias_correction=False)
    model2, calls[:] = _model(), []
    model2.register_forward_hook(lambda module, args, output: calls.append(output.logits.detach()))
    result = uncorrected.step(model2, batch, epoch=1)
    # Uncorrected: the thresholds hold 0.001 of those statistics (here it rejects 4 entries, not 2).
    shrunk = (batch["observed"] == 0) & (gap > 0.001 * t_gap) & (logits > 0.001 * class_average)
    assert torch.equal(result.rejected, shrunk)


def test_the_resolved_config_writes_out_which_calr_runs():
    from train.config import load_config

    ours = load_config(None, {"data": "d", "out": "o", "loss": "calr", "pretrained": False})
    assert ours.loss_options == CALR_DEFAULTS
    # ImageNet weights (the trainer's default backbone): the same options with the gate off; a given one wins.
    pretrained = load_config(None, {"data": "d", "out": "o", "loss": "calr"})
    assert pretrained.pretrained and pretrained.loss_options == {**CALR_DEFAULTS, "min_precision": 0.0}
    assert calr_defaults(reference=False, pretrained=True)["min_precision"] == PRETRAINED_MIN_PRECISION == 0.0
    gated = load_config(None, {"data": "d", "out": "o", "loss": "calr", "loss_options": {"min_precision": 0.65}})
    assert gated.loss_options["min_precision"] == 0.65
    for pretrained_backbone in (False, True):  # the reference has no gate, whatever the backbone
        reference = load_config(None, {"data": "d", "out": "o", "loss": "calr", "pretrained": pretrained_backbone,
                                       "loss_options": {"reference": True}})
        assert reference.loss_options == {**REFERENCE_OPTIONS, "reference": True}
    chosen = load_config(None, {"data": "d", "out": "o", "loss": "calr", "pretrained": False,
                                "loss_options": {"ran_views": "weak"}})
    assert chosen.loss_options == {**CALR_DEFAULTS, "ran_views": "weak"}  # an explicit option wins
    assert load_config(None, {"data": "d", "out": "o", "loss": "an"}).loss_options == {}
    # The objective built from the written-out options is the one the defaults give.
    built = create_objective("calr", NUM_CLASSES, **ours.loss_options)
    assert (built.ran_views, built.masked_bn, built.thresholds.bias_correction) == ("both", "batch", True)


def test_rejection_hints_where_the_sweeps_saw_the_rule_cost_accuracy():
    from pathlib import Path

    import numpy as np

    from spml.data import Split
    from train.config import TrainConfig
    from train.engine import rejection_hints

    labels = np.ones((4, 3), dtype=np.uint8)
    several = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=np.int8)  # 2.0 per image
    single = np.array([[1, 0, 0], [0, 1, 0], [1, -1, 0], [0, 0, 1]], dtype=np.int8)  # 1.0: -1 is a known negative

    def split(observed: np.ndarray, hidden: bool = False) -> Split:
        return Split("train", Path("-"), ["a", "b", "c"], [], [], labels, observed, hidden)

    def config(**values) -> TrainConfig:  # resolved as train fit resolves it; from scratch unless said
        return TrainConfig(**{"data": "d", "out": "o", "arch": "compact", "pretrained": False, "epochs": 8,
                              **values}).validate()

    hints = rejection_hints(config(loss="calr", batch_size=16), split(several))
    assert len(hints) == 1 and hints[0].startswith("2.0 annotated positives per training image and no label count")
    assert "--expected-positives" in hints[0]
    # A label count, given or from full labels, lets the probes estimate the precision: no hint.
    assert rejection_hints(config(loss="calr", batch_size=16, expected_positives=3.0), split(several)) == []
    assert rejection_hints(config(loss="calr", batch_size=16), split(several, hidden=True)) == []
    assert rejection_hints(config(loss="calr", batch_size=16), split(single)) == []
    # No gate, nothing it could miss: ImageNet weights (ours leaves the gate off there), or the gate set to 0.
    assert rejection_hints(config(loss="calr", arch="resnet18", pretrained=True, batch_size=16), split(several)) == []
    assert rejection_hints(config(loss="calr", batch_size=16, loss_options={"min_precision": 0.0}),
                           split(several)) == []
    small = rejection_hints(config(loss="calr", batch_size=4), split(single))
    assert len(small) == 1 and small[0].startswith("batch 4:")
    # No advice where the rule never runs: another loss, or warm-up through the last epoch.
    assert rejection_hints(config(loss="an", batch_size=4), split(several)) == []
    assert rejection_hints(config(loss="calr", warmup_epochs=8, batch_size=4), split(several)) == []
    assert rejection_hints(config(loss="calr", batch_size=4, loss_options={"warmup_epochs": 9}), split(several)) == []


def _several_positives_batch():
    batch = _batch()
    batch["observed"] = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1]])
    batch["labels"] = torch.tensor([[1, 1, 1], [0, 1, 0], [1, 0, 1], [0, 1, 1]])
    return batch


def test_probes_change_nothing_in_the_training_step(any_device):
    """The probe pass leaves the loss, the rejections, the gradients, the BatchNorm buffers and the
    random streams (the CPU's and the device's) exactly as a step without it."""
    batch = {key: value.to(any_device) for key, value in _several_positives_batch().items()}
    results = []
    for probes in (False, True):
        model = _model().to(any_device)
        objective = CALR(NUM_CLASSES, warmup_epochs=0, masked_bn="update", probes=probes)
        torch.manual_seed(7)
        result = objective.step(model, batch, epoch=1)
        result.loss.backward()
        draws = torch.cat([torch.rand(3), torch.rand(3, device=any_device).cpu()])
        results.append((result, {n: p.grad.clone() for n, p in model.named_parameters()}, _bn_buffers(model),
                        draws))
    (plain, plain_grads, plain_bn, plain_draw), (probed, probed_grads, probed_bn, probed_draw) = results
    assert plain.probe_counts is None and probed.probe_counts is not None
    assert torch.equal(plain.loss, probed.loss) and torch.equal(plain.rejected, probed.rejected)
    assert all(torch.equal(plain_grads[n], probed_grads[n]) for n in plain_grads)
    assert all(torch.equal(plain_bn[n], probed_bn[n]) for n in plain_bn)
    assert torch.equal(plain_draw, probed_draw)


def test_probe_counts_of_a_fixed_batch_by_hand():
    """Rows 0 and 2 have two annotated positives; after the step's update (turn 1) each hides its
    second one, and the rule's decision on it uses the probe pass (the fourth forward pass)."""
    model, batch = _model(), _several_positives_batch()
    calls, inputs = [], []
    model.register_forward_hook(lambda module, args, output: calls.append(output.logits.detach()))
    model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach()))
    result = CALR(NUM_CLASSES, warmup_epochs=0, probes=True).step(model, batch, epoch=1)
    assert len(calls) == 4
    logits, masked, probe = calls[0], calls[2], calls[3]
    observed = batch["observed"]
    positive = observed == 1
    t_gap = float((logits - masked).abs()[positive].mean())  # bias-corrected after one step
    class_average = logits.mean(dim=0)
    flags = [bool((logits[i, c] - probe[i, c]).abs() > t_gap and logits[i, c] > class_average[c])
             for i, c in ((0, 1), (2, 2))]
    flagged = (observed == 0) & ((logits - masked).abs() > t_gap) & (logits > class_average)
    assert result.probe_counts.tolist() == [2.0, float(sum(flags)), float(flagged.sum())]
    # Rows without a probe are masked as in the rule's pass; rows 0 and 2, masked to one positive, are not.
    assert torch.equal(inputs[3][[1, 3]], inputs[2][[1, 3]])
    assert not torch.equal(inputs[3][0], inputs[2][0]) and not torch.equal(inputs[3][2], inputs[2][2])


def test_min_precision_gate_by_hand():
    """Past the warm-up the rule acts unless the previous epoch's estimate is below min_precision."""
    objective = CALR(NUM_CLASSES, warmup_epochs=0)
    assert objective.min_precision == CALR_DEFAULTS["min_precision"] == 0.65
    for estimate, active in ((None, True), (0.64, False), (0.65, True), (0.9, True)):
        objective.estimated_precision = estimate
        assert objective.rejection_active(epoch=1) is active and objective.gated is (not active)
    objective.estimated_precision = 0.9
    assert objective.rejection_active(epoch=0) is (0 > objective.warmup_epochs)  # the warm-up still comes first
    ungated = CALR(NUM_CLASSES, warmup_epochs=0, min_precision=0.0)
    ungated.estimated_precision = 0.0
    assert ungated.rejection_active(epoch=1)
    reference = CALR(NUM_CLASSES, reference=True)
    assert reference.min_precision == REFERENCE_OPTIONS["min_precision"] == 0.0
    with pytest.raises(ValueError, match="min_precision"):
        CALR(NUM_CLASSES, reference=True, min_precision=0.5)
    with pytest.raises(ValueError, match="min_precision"):
        CALR(NUM_CLASSES, min_precision=1.5)


def test_a_gated_step_rejects_nothing_and_the_estimate_survives_a_state_round_trip():
    batch = _batch()
    open_rule = CALR(NUM_CLASSES, warmup_epochs=0, probes=True).step(_model(), batch, epoch=1)
    objective = CALR(NUM_CLASSES, warmup_epochs=0, probes=True)
    objective.estimated_precision = 0.25
    result = objective.step(_model(), batch, epoch=1)
    # The same decisions are flagged (2 entries, as the test above works out) and none is acted on.
    assert int(open_rule.rejected.sum()) == 2 and torch.equal(result.probe_counts, open_rule.probe_counts)
    assert not result.rejected.any() and int(result.probe_counts[2]) == 2
    restored = CALR(NUM_CLASSES, warmup_epochs=0)
    restored.load_state_dict(copy.deepcopy(objective.state_dict()))
    assert restored.estimated_precision == 0.25 and restored.gated


def test_placebo_rejects_the_rule_count_per_image_at_random_without_touching_the_random_stream():
    batch = _batch()
    rule = CALR(NUM_CLASSES, warmup_epochs=0).step(_model(), batch, epoch=1)
    assert rule.rejected.any()
    counts = rule.rejected.sum(dim=1)
    chosen = set()
    for seed in range(12):
        torch.manual_seed(seed)  # the placebo's own stream starts from the run's seed
        placebo = CALR(NUM_CLASSES, warmup_epochs=0, placebo=True)
        model = _model()
        state = torch.get_rng_state()
        result = placebo.step(model, batch, epoch=1)
        assert torch.equal(torch.get_rng_state(), state)  # the training's random numbers are untouched
        assert torch.equal(result.rejected.sum(dim=1), counts)
        assert not (result.rejected & (batch["observed"] != 0)).any()
        chosen.add(tuple(result.rejected.flatten().tolist()))
        # Its stream is saved with the objective: a resumed run draws what the killed one would have.
        restored = CALR(NUM_CLASSES, warmup_epochs=0, placebo=True)
        restored.load_state_dict(copy.deepcopy(placebo.state_dict()))
        assert torch.equal(restored.step(_model(), batch, epoch=1).rejected, placebo.step(_model(), batch, 1).rejected)
    assert len(chosen) > 1  # the entries vary with the seed; the rule's would not
    assert not CALR(NUM_CLASSES, warmup_epochs=0, placebo=True).step(_model(), batch, epoch=0).rejected.any()
