"""The paper recipes' training behaviour: BatchNorm folded twice per call as the CALR code does,
the early stop of the public codes, and the recipes themselves."""

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from spml.losses import CALR
from spml.losses.calr import repeated_batchnorm_updates
from spml.model import create_model
from train.config import load_config
from train.engine import early_stop_reached

NUM_CLASSES = 3
CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()
            if "running" in name or "num_batches_tracked" in name}


def _batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(4, 3, 32, 32, generator=generator)
    observed = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1]], dtype=torch.int8)
    return {"image": images, "strong": images.flip(-1), "observed": observed,
            "labels": observed.clamp_min(0), "index": torch.arange(4)}


@pytest.mark.parametrize("momentum", [0.1, None])
def test_repeated_updates_equal_a_real_second_pass(momentum):
    torch.manual_seed(0)
    model = create_model("compact", NUM_CLASSES, width=4).train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = momentum
    twin = copy.deepcopy(model)
    images = torch.randn(4, 3, 32, 32)
    with repeated_batchnorm_updates(model, 2):
        model(images)
    twin(images)
    twin(images)  # what the CALR code does: the backbone runs again on the same batch
    expected, actual = _bn_buffers(twin), _bn_buffers(model)
    assert expected and expected.keys() == actual.keys()
    for name in expected:
        assert torch.allclose(actual[name], expected[name], rtol=1e-6, atol=1e-7), name
    assert int(actual["backbone.0.1.num_batches_tracked"]) == 2
    model(images)  # outside the context: hooks are gone, one fold per call again
    assert int(_bn_buffers(model)["backbone.0.1.num_batches_tracked"]) == 3


def test_paper_calr_step_folds_every_call_twice_like_two_backbone_passes(any_device):
    """CALR(reference, batchnorm_passes=2) leaves the BatchNorm statistics that six backbone passes
    (weak, strong and masked, each twice) leave, with autograd on the masked pass."""
    torch.manual_seed(0)
    model = create_model("compact", NUM_CLASSES, width=4).train().to(any_device)
    twin = copy.deepcopy(model)
    batch = {key: value.to(any_device) for key, value in _batch().items()}
    inputs = []
    hook = model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    grads = []
    model.register_forward_pre_hook(lambda module, args: grads.append(torch.is_grad_enabled()))
    result = CALR(NUM_CLASSES, cam_norm="calr", reference=True, batchnorm_passes=2).to(any_device).step(
        model, batch, epoch=1)
    result.loss.backward()
    assert torch.isfinite(result.loss) and model.head.weight.grad is not None
    hook.remove()
    assert len(inputs) == 3 and grads == [True, True, True]
    for images in inputs:
        twin(images)
        twin(images)
    expected, actual = _bn_buffers(twin), _bn_buffers(model)
    for name in expected:
        assert torch.allclose(actual[name], expected[name], rtol=1e-6, atol=1e-7), name
    assert int(actual["backbone.0.1.num_batches_tracked"]) == 6


def test_ignore_step_folds_once_per_call():
    torch.manual_seed(0)
    model = create_model("compact", NUM_CLASSES, width=4).train()
    CALR(NUM_CLASSES, cam_norm="ignore", reference=True).step(model, _batch(), epoch=1)
    assert int(_bn_buffers(model)["backbone.0.1.num_batches_tracked"]) == 3


@pytest.mark.parametrize("history,drop,stops", [
    ([50.0, 60.0, 58.0], 2.0, False),  # exactly 2 below the best: the public codes go on (> 2)
    ([50.0, 60.0, 57.9], 2.0, True),
    ([50.0, 60.0, 57.1], 3.0, False),
    ([50.0, 60.0, 56.9], 3.0, True),
    ([60.0, 57.0, 61.0], 2.0, False),  # a new best is never a stop
    ([50.0, 60.0, 10.0], None, False),  # no early stop configured
])
def test_early_stop_rule(history, drop, stops):
    best = max(history[:-1])
    assert early_stop_reached(best, history[-1], drop) is stops


def _recipe(name: str) -> dict:
    return load_config(CONFIGS / name, {}).to_dict()


@pytest.mark.parametrize("data_set", ["voc", "coco", "nuswide", "cub"])
def test_paper_recipes_run_the_public_codes_settings(data_set):
    q2l = _recipe(f"paper_q2l_calr_{data_set}.yaml")
    assert (q2l["cam_norm"], q2l["early_stop_drop"], q2l["amp"]) == ("calr", 2.0, False)
    assert q2l["loss_options"]["reference"] is True
    resnet = _recipe(f"paper_resnet50_calr_{data_set}.yaml")
    assert (resnet["cam_norm"], resnet["early_stop_drop"], resnet["amp"]) == ("calr", 2.0, False)
    assert resnet["loss_options"]["reference"] is True and resnet["loss_options"]["batchnorm_passes"] == 2
    for loss in ("an", "llr", "llct", "llcp"):
        recipe = _recipe(f"paper_resnet50_{loss}_{data_set}.yaml")
        settings = (recipe["epochs"], recipe["early_stop_drop"], recipe["amp"], recipe["batch_size"])
        assert settings == (10, 3.0, False, 16)
    ignore = _recipe("paper_resnet50_ignore_voc.yaml")
    assert (ignore["cam_norm"], ignore["cam_threshold"], ignore["early_stop_drop"]) == ("ignore", 0.8, None)
    assert ignore["loss_options"]["reference"] is True and ignore["loss_options"].get("batchnorm_passes", 1) == 1


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> Path:
    from spml.data import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("world") / "data", seed=5, train=24, val=8, test=8,
                                  image_size=32, progress=False)


@pytest.mark.parametrize("recipe,overrides", [
    ("paper_resnet50_calr_voc.yaml", {"arch": "compact", "arch_options": {"width": 8}}),
    ("paper_resnet50_ignore_voc.yaml", {"arch": "compact", "arch_options": {"width": 8}}),
    ("paper_q2l_calr_voc.yaml", {"arch_options": {"backbone": "compact", "hidden_dim": 32, "feedforward_dim": 64}}),
    ("paper_resnet50_llr_voc.yaml", {"arch": "compact", "arch_options": {"width": 8}}),
])
def test_paper_recipes_train_end_to_end_on_a_tiny_world(tiny_world, tmp_path, recipe, overrides):
    from spml import load_model
    from train.engine import fit

    config = load_config(CONFIGS / recipe, {"data": str(tiny_world), "out": str(tmp_path / "run"),
                                             "pretrained": False, "epochs": 2, "batch_size": 8, "image_size": 32,
                                             "warmup_epochs": 1, "device": "cpu", "workers": 0, **overrides})
    summary = fit(config)
    assert summary["epochs"] == 2 and 0.0 <= summary["test_map"] <= 100.0
    assert load_model(tmp_path / "run" / "best").cam_norm == config.cam_norm
