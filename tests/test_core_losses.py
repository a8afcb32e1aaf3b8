"""The losses of spml.losses against values worked out by hand, and the CALR training step.

Expected numbers are written from the definitions with ``math`` on a 2 x 3 logit matrix, never by
calling the function under test. ``nls(z) = -log(sigmoid(z))`` and ``nls(-z) = -log(1 - sigmoid(z))``.
"""

import copy
import math

import pytest
import torch

from spml.cam import apply_masks, cam_keeps_bias, cam_masks
from spml.losses import CALR, LOSS_NAMES, create_objective
from spml.losses.base import assume_negative_matrix
from spml.losses.baselines import (
    an_loss,
    an_ls_loss,
    epr_loss,
    full_label_loss,
    large_loss_selection,
    role_loss,
    wan_loss,
)
from spml.losses.calr import calr_loss, frozen_batchnorm_statistics
from spml.model import create_model
from spml.rejection import rejection_mask


def sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def pos(z: float) -> float:
    """-log(sigmoid(z)): the loss of an entry trained as positive."""
    return -math.log(sig(z))


def neg(z: float) -> float:
    """-log(1 - sigmoid(z)): the loss of an entry trained as negative."""
    return -math.log(1.0 - sig(z))


Z = [[2.0, -1.0, 0.5], [0.0, 1.5, -2.0]]
# image 0: positive class 0, class 2 known absent; image 1: positive class 2; the rest unknown.
OBS = [[1, 0, -1], [0, 0, 1]]
LABELS = [[1, 1, 0], [0, 1, 1]]


def t(values, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def close(actual, expected: float, rel: float = 1e-6) -> None:
    actual = actual.detach() if isinstance(actual, torch.Tensor) else actual
    assert float(actual) == pytest.approx(expected, rel=rel, abs=1e-7)


# ----------------------------------------------------------------------------- plain losses


def test_full_label_loss_by_hand():
    expected = (pos(2.0) + pos(-1.0) + neg(0.5) + neg(0.0) + pos(1.5) + pos(-2.0)) / 6
    close(full_label_loss(t(Z), t(LABELS)), expected)


def test_an_loss_by_hand_known_negatives_are_negatives():
    expected = (pos(2.0) + neg(-1.0) + neg(0.5) + neg(0.0) + neg(1.5) + pos(-2.0)) / 6
    close(an_loss(t(Z), t(OBS, torch.long)), expected)
    close(neg(0.0), math.log(2.0))  # guards the helpers


@pytest.mark.parametrize("eps", [0.1, 0.2])
def test_an_ls_loss_by_hand(eps):
    def smoothed(z, positive):
        target = 1 - eps if positive else eps
        return target * pos(z) + (1 - target) * neg(z)

    entries = [(2.0, True), (-1.0, False), (0.5, False), (0.0, False), (1.5, False), (-2.0, True)]
    expected = sum(smoothed(z, p) for z, p in entries) / 6
    close(an_ls_loss(t(Z), t(OBS, torch.long), eps), expected)
    objective = create_objective("an-ls", 3, smoothing=eps)
    close(objective.loss(t(Z), {"observed": t(OBS, torch.long)}, 1)[0], expected)


def test_an_ls_default_smoothing_is_0_1():
    expected = (0.9 * pos(2.0) + 0.1 * neg(2.0) + 0.1 * pos(-1.0) + 0.9 * neg(-1.0)) / 2
    close(an_ls_loss(t([[2.0, -1.0]]), t([[1, 0]], torch.long)), expected)


def test_wan_loss_by_hand_unknown_weighted_one_over_c_minus_1():
    w = 1 / (3 - 1)
    expected = (pos(2.0) + w * neg(-1.0) + neg(0.5) + w * neg(0.0) + w * neg(1.5) + pos(-2.0)) / 6
    close(wan_loss(t(Z), t(OBS, torch.long)), expected)


def test_epr_loss_by_hand():
    k = 1.5
    terms = (pos(2.0) + neg(0.5) + pos(-2.0)) / 6  # positives and the known negative; unknown entries 0
    row_sums = [sig(2.0) + sig(-1.0) + sig(0.5), sig(0.0) + sig(1.5) + sig(-2.0)]
    penalty = ((row_sums[0] + row_sums[1]) / 2 - k) ** 2 / 3**2
    close(epr_loss(t(Z), t(OBS, torch.long), k), terms + penalty)
    objective = create_objective("epr", 3, expected_positives=k)
    close(objective.loss(t(Z), {"observed": t(OBS, torch.long)}, 1)[0], terms + penalty)


U = [[3.0, 0.2, -4.0], [-0.3, 0.4, 3.0]]  # ROLE's label-estimate logits for the same two images


@pytest.mark.parametrize("observed", ["one positive", "two positives"])
def test_role_loss_by_hand(observed):
    obs = OBS if observed == "one positive" else OBS2
    k = 1.5
    total = 0.0
    for i in range(2):
        for c in range(3):
            p, e = sig(Z[i][c]), sig(U[i][c])
            positive = 1.0 if obs[i][c] == 1 else 0.0
            f_half = positive * -math.log(p) + e * -math.log(p) + (1 - e) * -math.log(1 - p)
            g_half = positive * -math.log(e) + p * -math.log(e) + (1 - p) * -math.log(1 - e)
            total += 0.5 * (f_half + g_half)
    p_sums = [sum(sig(z) for z in row) for row in Z]
    e_sums = [sum(sig(u) for u in row) for row in U]
    penalty = 0.5 * ((sum(p_sums) / 2 - k) ** 2 / 9 + (sum(e_sums) / 2 - k) ** 2 / 9)
    close(role_loss(t(Z), t(U), t(obs, torch.long), k), total / 6 + penalty)


def test_role_cross_terms_use_the_other_side_detached():
    # d loss / d z = [0.5 * (pos * (p - 1) + p - e)] / 6 + 0.5 * 2 * (mean_sum_p - k) / C^2 * p (1 - p) / B:
    # no gradient reaches z through the label side's cross term (its target p is detached).
    k = 1.5
    logits = t(Z).requires_grad_()
    label_logits = t(U).requires_grad_()
    role_loss(logits, label_logits, t(OBS, torch.long), k).backward()
    mean_sum = sum(sum(sig(z) for z in row) for row in Z) / 2
    for i in range(2):
        for c in range(3):
            p, e = sig(Z[i][c]), sig(U[i][c])
            positive = 1.0 if OBS[i][c] == 1 else 0.0
            expected = 0.5 * (positive * (p - 1) + p - e) / 6 + 0.5 * 2 * (mean_sum - k) / 9 * p * (1 - p) / 2
            close(logits.grad[i, c], expected, rel=1e-5)


def test_role_objective_initialises_its_label_matrix_and_indexes_it_by_image():
    observed = t([[1, 0, -1], [0, 0, 1], [0, 1, 0]], torch.long)
    objective = create_objective("role", 3, train_observed=observed, expected_positives=1.5)
    init = objective.label_logits.detach()
    close(init[0, 0], math.log(0.995 / 0.005))
    close(init[0, 2], math.log(0.005 / 0.995))
    unknown = init[observed == 0]
    assert bool((unknown.abs() <= math.log(0.6 / 0.4) + 1e-6).all())
    # batch of images 2 and 0, in that order
    batch = {"observed": observed[[2, 0]], "index": torch.tensor([2, 0])}
    loss, rejected = objective.loss(t(Z), batch, 1)
    assert rejected is None
    close(loss, float(role_loss(t(Z), init[[2, 0]], observed[[2, 0]], 1.5)))


def test_create_objective_checks_its_inputs():
    with pytest.raises(ValueError, match="unknown loss"):
        create_objective("nope", 3)
    with pytest.raises(ValueError, match="expected_positives"):
        create_objective("epr", 3)
    with pytest.raises(ValueError, match="observed"):
        create_objective("ll-cp", 3)
    assert {create_objective(n, 3, train_observed=torch.zeros(2, 3), expected_positives=1.0).name
            for n in LOSS_NAMES} == set(LOSS_NAMES)


# ----------------------------------------------------------------------------- large loss

LL_OBS = [[1, 0, 0], [0, 0, 1]]
# Unknown entries, largest AN loss first (AN loss of an unknown entry grows with its logit):
# (1,1) z=1.5, (0,2) z=0.5, (1,0) z=0, (0,1) z=-1.
RANKED = [(1, 1), (0, 2), (1, 0), (0, 1)]
AN_TERMS = {(0, 0): pos(2.0), (0, 1): neg(-1.0), (0, 2): neg(0.5),
            (1, 0): neg(0.0), (1, 1): neg(1.5), (1, 2): pos(-2.0)}


def _selection(entries) -> torch.Tensor:
    mask = torch.zeros(2, 3, dtype=torch.bool)
    for i, c in entries:
        mask[i, c] = True
    return mask


def _ll_batch(index=(0, 1)):
    return {"observed": t(LL_OBS, torch.long), "index": torch.tensor(index)}


@pytest.mark.parametrize("scheme", ["ll-r", "ll-ct", "ll-cp"])
def test_large_loss_epoch_1_is_plain_an(scheme):
    objective = create_objective(scheme, 3, train_observed=torch.zeros(2, 3), delta=20.0)
    loss, selected = objective.loss(t(Z), _ll_batch(), 1)
    close(loss, sum(AN_TERMS.values()) / 6)
    assert selected is None
    if scheme == "ll-cp":
        assert not objective.corrected.any()


# delta = 20 % per epoch on B*C = 6 entries: k = ceil(6 * (t-1) * 0.2) = 2, 3, 4, then capped at
# the 4 unknown entries.
@pytest.mark.parametrize("epoch,k", [(2, 2), (3, 3), (4, 4), (6, 4)])
def test_ll_r_rejects_the_k_largest_unknown_losses(epoch, k):
    objective = create_objective("ll-r", 3, delta=20.0)
    loss, selected = objective.loss(t(Z), _ll_batch(), epoch)
    chosen = RANKED[:k]
    assert torch.equal(selected, _selection(chosen))
    close(loss, sum(v for key, v in AN_TERMS.items() if key not in chosen) / 6)  # zeroed, still / (B*C)


@pytest.mark.parametrize("epoch,k", [(2, 2), (3, 3)])
def test_ll_ct_flips_the_selected_entries_for_this_step_only(epoch, k):
    objective = create_objective("ll-ct", 3, delta=20.0)
    chosen = RANKED[:k]
    expected = sum(pos(Z[i][c]) if (i, c) in chosen else v for (i, c), v in AN_TERMS.items()) / 6
    for _ in range(2):  # the same batch twice: no memory
        loss, selected = objective.loss(t(Z), _ll_batch(), epoch)
        assert torch.equal(selected, _selection(chosen))
        close(loss, expected)
    assert not hasattr(objective, "corrected")


def test_ll_cp_writes_back_and_uses_the_corrected_labels_later():
    # LL-Cp takes k = ceil(B*C*delta) = ceil(6 * 0.2) = 2 per step, whatever the epoch.
    objective = create_objective("ll-cp", 3, train_observed=torch.zeros(4, 3), delta=20.0)
    batch = _ll_batch(index=(2, 0))  # rows of the batch are images 2 and 0 of the training set
    loss, selected = objective.loss(t(Z), batch, 2)
    first = RANKED[:2]  # (1,1) and (0,2)
    assert torch.equal(selected, _selection(first))
    close(loss, sum(pos(Z[i][c]) if (i, c) in first else v for (i, c), v in AN_TERMS.items()) / 6)
    expected_store = torch.zeros(4, 3, dtype=torch.bool)
    expected_store[0, 1] = True  # batch row 1 is image 0
    expected_store[2, 2] = True  # batch row 0 is image 2
    assert torch.equal(objective.corrected, expected_store)

    # Next step, later epoch, same images: the stored flips are positives now, so only (1,0) and
    # (0,1) are still unknown, and both are taken (k = 2).
    loss, selected = objective.loss(t(Z), batch, 5)
    assert torch.equal(selected, _selection([(1, 0), (0, 1)]))
    close(loss, sum(pos(z) for row in Z for z in row) / 6)
    assert torch.equal(objective.corrected, torch.tensor(
        [[True, True, False], [False, False, False], [False, True, True], [False, False, False]]))

    # Epoch 1 never happens after epoch 2, but the stored labels apply whatever the epoch.
    loss, selected = objective.loss(t(Z), batch, 1)
    assert selected is None
    close(loss, sum(pos(z) for row in Z for z in row) / 6)


def test_ll_default_deltas():
    observed = torch.zeros(2, 3)
    assert create_objective("ll-r", 3).delta == pytest.approx(0.005)
    assert create_objective("ll-ct", 3).delta == pytest.approx(0.002)
    assert create_objective("ll-cp", 3, train_observed=observed).delta == pytest.approx(0.001)


def test_ll_k_is_not_inflated_by_rounding():
    # B*C = 200, delta 0.5 %, epoch 8: k = 200 * 7 * 0.005 = 7 exactly (floating point gives 7.000000000000001).
    torch.manual_seed(0)
    logits = torch.randn(2, 100)
    observed = torch.zeros(2, 100, dtype=torch.long)
    observed[:, 0] = 1
    _, selected = create_objective("ll-r", 100).loss(logits, {"observed": observed}, 8)
    assert int(selected.sum()) == 7


# ----------------------------------------------------------------------------- several positives per image

# Image 0 now has two observed positives (classes 0 and 1); image 1 one (class 2).
OBS2 = [[1, 1, -1], [0, 0, 1]]


def test_an_and_epr_train_every_observed_positive():
    close(an_loss(t(Z), t(OBS2, torch.long)), (pos(2.0) + pos(-1.0) + neg(0.5) + neg(0.0) + neg(1.5) + pos(-2.0)) / 6)
    k = 1.5
    terms = (pos(2.0) + pos(-1.0) + neg(0.5) + pos(-2.0)) / 6  # Cole et al.: every observed positive
    row_sums = [sig(2.0) + sig(-1.0) + sig(0.5), sig(0.0) + sig(1.5) + sig(-2.0)]
    close(epr_loss(t(Z), t(OBS2, torch.long), k), terms + ((sum(row_sums) / 2 - k) ** 2 / 9))


def test_large_loss_never_selects_an_observed_positive():
    # Every unknown entry is a candidate; the two positives of image 0 never are (k larger than needed).
    selected = large_loss_selection(assume_negative_matrix(t(Z), t(OBS2, torch.long)), t(OBS2, torch.long), 1.0)
    assert selected.tolist() == [[False, False, False], [True, True, False]]


def test_calr_spbc_averages_over_every_observed_positive():
    _, parts = calr_loss(t(Z), t(ZS), t(OBS2, torch.long), torch.zeros(2, 3, dtype=torch.bool))
    close(parts["spbc"], (pos(2.0) + pos(-1.0) + pos(-2.0)) / 3)  # three positives, not two images
    close(parts["ran"], (pos(1.0) + pos(0.5) + neg(-0.5) + neg(0.2) + neg(2.0) + pos(-1.0)) / 6)


# ----------------------------------------------------------------------------- CALR loss

ZS = [[1.0, 0.5, -0.5], [0.2, 2.0, -1.0]]  # strong-view logits


def test_calr_loss_by_hand_rejected_entries_leave_rans_mean():
    rejected = _selection([(0, 1), (1, 1)])
    spbc = (pos(2.0) + pos(-2.0)) / 2
    ran = (pos(1.0) + neg(-0.5) + neg(0.2) + pos(-1.0)) / 4  # 4 kept entries, not 6
    l2 = sum((ZS[i][c] - Z[i][c]) ** 2 for i in range(2) for c in range(3)) / 6
    total, parts = calr_loss(t(Z), t(ZS), t(OBS, torch.long), rejected)
    close(parts["spbc"], spbc)
    close(parts["ran"], ran)
    close(parts["l2"], l2)
    close(total, 0.5 * spbc + 1.0 * ran + 0.5 * l2)
    total, _ = calr_loss(t(Z), t(ZS), t(OBS, torch.long), rejected, weights=(0.1, 1.0, 0.5))
    close(total, 0.1 * spbc + 1.0 * ran + 0.5 * l2)


def test_calr_loss_ran_views_by_hand():
    """RAN on the weak view, and on both views (their sum); SPBC and L2 do not change."""
    rejected = _selection([(0, 1), (1, 1)])
    strong = (pos(1.0) + neg(-0.5) + neg(0.2) + pos(-1.0)) / 4
    weak = (pos(2.0) + neg(0.5) + neg(0.0) + pos(-2.0)) / 4  # kept: (0,0), (0,2), (1,0), (1,2) of Z
    spbc = (pos(2.0) + pos(-2.0)) / 2
    l2 = sum((ZS[i][c] - Z[i][c]) ** 2 for i in range(2) for c in range(3)) / 6
    for views, ran in (("weak", weak), ("both", weak + strong), ("strong", strong)):
        total, parts = calr_loss(t(Z), t(ZS), t(OBS, torch.long), rejected, ran_views=views)
        close(parts["ran"], ran)
        close(parts["spbc"], spbc)
        close(parts["l2"], l2)
        close(total, 0.5 * spbc + 1.0 * ran + 0.5 * l2)
    with pytest.raises(ValueError, match="unknown ran_views"):
        calr_loss(t(Z), t(ZS), t(OBS, torch.long), rejected, ran_views="all")


def test_calr_loss_without_rejection_is_an_on_the_strong_view():
    _, parts = calr_loss(t(Z), t(ZS), t(OBS, torch.long), torch.zeros(2, 3, dtype=torch.bool))
    expected = (pos(1.0) + neg(0.5) + neg(-0.5) + neg(0.2) + neg(2.0) + pos(-1.0)) / 6
    close(parts["ran"], expected)


def test_calr_loss_never_drops_an_observed_entry():
    # A mask that also marks the observed positives and the known negative still keeps them.
    everything = torch.ones(2, 3, dtype=torch.bool)
    _, parts = calr_loss(t(Z), t(ZS), t(OBS, torch.long), everything)
    close(parts["ran"], (pos(1.0) + neg(-0.5) + pos(-1.0)) / 3)


def test_calr_loss_gradients_reach_both_views():
    logits, strong = t(Z).requires_grad_(), t(ZS).requires_grad_()
    total, _ = calr_loss(logits, strong, t(OBS, torch.long), torch.zeros(2, 3, dtype=torch.bool))
    total.backward()
    # d L2 / d z = 0.5 * 2 (z - zs) / 6 on an entry without SPBC, e.g. (0, 1): z=-1, zs=0.5
    close(logits.grad[0, 1], 0.5 * 2 * (-1.0 - 0.5) / 6)
    assert strong.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- CALR step

NUM_CLASSES = 3
STEP_OBS = [[1, 0, 0], [0, 1, -1], [0, 0, 0], [0, 0, 1]]  # image 2 has no observed positive


def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("compact", NUM_CLASSES, width=8).train()


def _batch(seed: int = 1, same_views: bool = False):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(4, 3, 32, 32, generator=generator)
    observed = torch.tensor(STEP_OBS)
    labels = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1]])
    return {"image": images, "strong": images.clone() if same_views else images.flip(-1),
            "observed": observed, "labels": labels, "index": torch.arange(4)}


class _Recorder:
    """Records each forward call of a model: whether autograd was on, the input and the output."""

    def __init__(self, model):
        self.calls = []
        self._pre = model.register_forward_pre_hook(self._before)
        self._post = model.register_forward_hook(self._after)

    def _before(self, module, args):
        self.calls.append({"grad": torch.is_grad_enabled(), "input": args[0].detach().clone()})

    def _after(self, module, args, output):
        self.calls[-1]["output"] = output


def _bn_buffers(model):
    return {name: value.clone() for name, value in model.state_dict().items()
            if "running" in name or "num_batches_tracked" in name}


def test_calr_masked_pass_runs_without_autograd_and_leaves_batchnorm_statistics_alone():
    model, batch = _tiny_model(), _batch()
    twin = copy.deepcopy(model)
    recorder = _Recorder(model)
    result = CALR(NUM_CLASSES).step(model, batch, epoch=1)
    assert [call["grad"] for call in recorder.calls] == [True, True, False]
    assert not recorder.calls[2]["output"].logits.requires_grad
    assert result.loss.requires_grad
    # The twin sees only the weak and the strong pass: its BatchNorm buffers must be what the step left.
    twin(batch["image"])
    twin(batch["strong"])
    expected, actual = _bn_buffers(twin), _bn_buffers(model)
    assert expected.keys() == actual.keys() and expected
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


def test_calr_reference_masked_pass_uses_autograd_and_updates_batchnorm_statistics():
    model, batch = _tiny_model(), _batch()
    twin = copy.deepcopy(model)
    recorder = _Recorder(model)
    CALR(NUM_CLASSES, reference=True).step(model, batch, epoch=1)
    assert [call["grad"] for call in recorder.calls] == [True, True, True]
    twin(batch["image"])
    twin(batch["strong"])
    expected, actual = _bn_buffers(twin), _bn_buffers(model)
    running = [name for name in expected if name.endswith("running_mean")]
    assert running and all(not torch.allclose(actual[name], expected[name]) for name in running)
    masked = recorder.calls[2]["input"]
    twin(masked)  # folding the masked batch in as a third pass gives the reference's statistics
    for name, value in _bn_buffers(twin).items():
        assert torch.allclose(actual[name], value), name


def test_calr_masked_images_follow_the_positive_cam_and_images_without_positive_stay_whole():
    model, batch = _tiny_model(), _batch()
    recorder = _Recorder(model)
    CALR(NUM_CLASSES, cam_threshold=0.5).step(model, batch, epoch=1)
    weak, masked = recorder.calls[0]["input"], recorder.calls[2]["input"]
    output = recorder.calls[0]["output"]
    has_positive = torch.tensor([True, True, False, True])
    assert torch.equal(masked[2], weak[2])  # no observed positive: all-ones mask
    with torch.no_grad():
        cams = model.class_maps(output, torch.tensor([0, 1, 0, 2]))
        masks = cam_masks(cams, (32, 32), 0.5, "image", has_positive)
    assert bool(masks[2].all())
    assert not bool(masks[[0, 1, 3]].all())  # the others really are masked
    assert torch.equal(masked, apply_masks(weak, masks))


def _state(gap: float, average: float, steps: int = 1) -> dict:
    return {"num_classes": NUM_CLASSES, "momentum": 0.999, "bias_correction": False, "raw_gap": gap,
            "raw_class_average": [average] * NUM_CLASSES, "gap_steps": steps, "average_steps": steps}


def test_calr_thresholds_update_every_step_including_warm_up():
    model, batch = _tiny_model(), _batch()
    objective = CALR(NUM_CLASSES, warmup_epochs=3, bias_correction=False)
    recorder = _Recorder(model)
    gap, average = 0.0, [0.0] * NUM_CLASSES
    positives = [(0, 0), (1, 1), (3, 2)]
    for epoch in (1, 2):
        recorder.calls.clear()
        result = objective.step(model, batch, epoch)
        assert not result.rejected.any()
        z = recorder.calls[0]["output"].logits.detach()
        zm = recorder.calls[2]["output"].logits
        batch_gap = sum(abs(float(z[i, c] - zm[i, c])) for i, c in positives) / 3
        gap = 0.999 * gap + 0.001 * batch_gap
        average = [0.999 * a + 0.001 * float(z[:, c].sum()) / 4 for c, a in enumerate(average)]
        assert objective.thresholds.gap_threshold == pytest.approx(gap, rel=1e-5)
        assert objective.thresholds.class_average.tolist() == pytest.approx(average, rel=1e-5, abs=1e-9)
    assert objective.get_extra_state()["average_steps"] == 2


def test_calr_rejects_nothing_during_warm_up_and_only_unknown_entries_after():
    model, batch = _tiny_model(), _batch()
    objective = CALR(NUM_CLASSES, warmup_epochs=3, bias_correction=False)
    objective.set_extra_state(_state(-1e6, -1e6))  # thresholds that every unknown entry passes
    result = objective.step(model, batch, epoch=3)
    assert not result.rejected.any()
    objective.set_extra_state(_state(-1e6, -1e6))
    recorder = _Recorder(model)
    result = objective.step(model, batch, epoch=4)
    observed = batch["observed"]
    assert torch.equal(result.rejected, observed == 0)  # never a positive, never a known negative
    kept = [(i, c) for i in range(4) for c in range(3) if observed[i, c] != 0]
    # RAN of ours is the sum over the weak (call 0) and the strong view (call 1) of the kept entries' AN.
    expected_ran = 0.0
    for call in (0, 1):
        view = recorder.calls[call]["output"].logits.detach()
        expected_ran += sum(pos(float(view[i, c])) if observed[i, c] == 1 else neg(float(view[i, c]))
                            for i, c in kept) / len(kept)
    close(result.parts["ran"], expected_ran, rel=1e-5)


def test_calr_warmup_option_and_thresholds_that_reject_nothing():
    model, batch = _tiny_model(), _batch()
    objective = CALR(NUM_CLASSES, warmup_epochs=0)
    objective.set_extra_state(_state(-1e6, -1e6))
    assert torch.equal(objective.step(model, batch, epoch=1).rejected, batch["observed"] == 0)
    objective.set_extra_state(_state(1e6, 1e6))
    assert not objective.step(model, batch, epoch=1).rejected.any()


def _single_positive_step(model, batch, objective):
    """The CALR step as it was written for one positive per image, spelled out: the positive's CAM,
    one mask, the masked pass, the thresholds, the rule, the loss. The step must match it bit for bit."""
    images, observed = batch["image"], batch["observed"]
    output = model(images)
    strong_logits = model(batch["strong"]).logits
    logits = output.logits
    with torch.no_grad():
        is_positive = observed == 1
        cams = model.class_maps(output, is_positive.to(torch.uint8).argmax(dim=1),
                                bias=cam_keeps_bias(objective.cam_norm))
        masks = cam_masks(cams.float(), tuple(images.shape[-2:]), objective.cam_threshold, objective.cam_norm,
                          is_positive.any(dim=1))
        with frozen_batchnorm_statistics(model):
            masked = model(apply_masks(images, masks)).logits
    detached = logits.detach()
    objective.thresholds.update(detached, masked, observed)
    rejected = rejection_mask(detached, masked, observed, objective.thresholds.gap_threshold_tensor,
                              objective.thresholds.class_average)
    return calr_loss(logits, strong_logits, observed, rejected, objective.weights, objective.ran_views), rejected


@pytest.mark.parametrize("norm", ["image", "calr", "ignore"])
def test_calr_step_with_one_positive_per_image_is_bit_identical_to_the_single_positive_computation(norm):
    model, batch = _tiny_model(seed=7), _batch(seed=8)
    twin = copy.deepcopy(model)
    objective = CALR(NUM_CLASSES, warmup_epochs=0, cam_norm=norm)
    direct = CALR(NUM_CLASSES, warmup_epochs=0, cam_norm=norm)
    # Thresholds inside the batch's range, so that some unknown entries are rejected and some kept.
    for calr in (objective, direct):
        calr.set_extra_state(_state(0.05, 0.0))
    result = objective.step(model, batch, epoch=1)
    (loss, parts), rejected = _single_positive_step(twin, batch, direct)
    assert torch.equal(result.loss, loss)
    assert all(torch.equal(result.parts[name], parts[name]) for name in parts)
    assert torch.equal(result.rejected, rejected)
    assert result.rejected.any() and (~result.rejected & (batch["observed"] == 0)).any()
    assert objective.get_extra_state() == direct.get_extra_state()


def test_calr_step_masks_to_the_union_of_the_observed_positives():
    model, batch = _tiny_model(), _batch()
    batch["observed"] = torch.tensor([[1, 0, 1], [0, 1, -1], [0, 0, 0], [1, 1, 1]])
    recorder = _Recorder(model)
    objective = CALR(NUM_CLASSES, cam_threshold=0.5, bias_correction=False)
    objective.step(model, batch, epoch=1)
    weak, masked = recorder.calls[0]["input"], recorder.calls[2]["input"]
    output = recorder.calls[0]["output"]
    with torch.no_grad():
        one = [cam_masks(model.class_maps(output, torch.full((4,), c)), (32, 32), 0.5) for c in range(3)]
    union = torch.stack([one[0][0] | one[2][0], one[1][1], torch.ones(32, 32, dtype=torch.bool),
                         one[0][3] | one[1][3] | one[2][3]])
    assert not torch.equal(union[0], one[0][0])  # the second positive really adds a region
    assert torch.equal(masked, apply_masks(weak, union))
    z, zm = output.logits.detach(), recorder.calls[2]["output"].logits
    positives = [(0, 0), (0, 2), (1, 1), (3, 0), (3, 1), (3, 2)]
    batch_gap = sum(abs(float(z[i, c] - zm[i, c])) for i, c in positives) / len(positives)
    assert objective.thresholds.gap_threshold == pytest.approx(0.001 * batch_gap, rel=1e-5)


# ----------------------------------------------------------------------------- optimisation


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_a_few_steps_lower_each_loss(name):
    model = _tiny_model(seed=3)
    batch = _batch(seed=4, same_views=True)
    torch.manual_seed(5)
    objective = create_objective(name, NUM_CLASSES, train_observed=batch["observed"], expected_positives=1.5)
    initial = copy.deepcopy(model)
    parameters = list(model.parameters()) + list(objective.parameters())
    optimizer = torch.optim.Adam(parameters, lr=3e-3)
    rejected_any = False
    for _ in range(6):
        optimizer.zero_grad()
        result = objective.step(model, batch, epoch=5)
        assert torch.isfinite(result.loss)
        result.loss.backward()
        optimizer.step()
        rejected_any |= result.rejected is not None and bool(result.rejected.any())
    if name in ("calr", "ll-r", "ll-ct", "ll-cp"):
        assert rejected_any, f"{name} rejected or corrected nothing at epoch 5"

    def evaluate(network):  # the loss under the objective's final state, on copies
        with torch.no_grad():
            return float(copy.deepcopy(objective).step(copy.deepcopy(network), batch, epoch=5).loss)

    before, after = evaluate(initial), evaluate(model)
    assert after < before, f"{name}: {before:.4f} -> {after:.4f}"
