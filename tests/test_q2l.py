"""Query2Label behind the SPMLModel interface: shapes, attention, its class maps, frozen BatchNorm,
a CALR training step, checkpoints and ``analyze``. Tiny sizes only (ResNet-18 or the compact
backbone, hidden size 32), so the whole file runs in seconds on a CPU."""

import numpy as np
import pytest
import torch
from torch import nn

from spml import analyze, load_model, save_checkpoint
from spml.architectures.q2l import FrozenBatchNorm2d, Query2Label, sine_position_embedding
from spml.checkpoint import LoadedModel
from spml.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from spml.losses import create_objective
from spml.model import ARCHITECTURES, ModelOutput, create_model

TINY = {"hidden_dim": 32, "feedforward_dim": 64, "num_heads": 4, "encoder_layers": 1, "decoder_layers": 2}


def tiny_q2l(num_classes: int = 5, backbone: str = "resnet18", dropout: float = 0.1, **options) -> Query2Label:
    torch.manual_seed(0)
    return create_model("q2l", num_classes, backbone=backbone, dropout=dropout, **{**TINY, **options})


@pytest.fixture(scope="module")
def resnet_q2l() -> Query2Label:
    return tiny_q2l().eval()


def test_registered_and_configurable():
    assert "q2l" in ARCHITECTURES
    model = tiny_q2l(backbone="compact", encoder_layers=0, decoder_layers=1, dropout=0.0)
    config = model.arch_config()
    assert config == {"arch": "q2l", "num_classes": 5, "backbone": "compact", **TINY, "encoder_layers": 0,
                      "decoder_layers": 1, "dropout": 0.0, "input_projection": False, "freeze_stem": True}
    assert len(model.encoder) == 0 and len(model.decoder) == 1
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_model("q2l", 5, pretrained=True, backbone="compact", **TINY)
    with pytest.raises(ValueError, match="divisible"):
        create_model("q2l", 5, backbone="compact", hidden_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="unknown Q2L backbone"):
        create_model("q2l", 5, backbone="vgg16", **TINY)


def test_pretrained_failure_gives_the_backbone_advice(monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(RuntimeError, match="--no-pretrained"):
        create_model("q2l", 5, pretrained=True, backbone="resnet18", **TINY)


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 64, 64), (2, 96, 64), (3, 64, 128)])
def test_output_shapes_and_attention_rows(resnet_q2l, batch, height, width):
    with torch.no_grad():
        output = resnet_q2l(torch.randn(batch, 3, height, width))
    h, w = height // 32, width // 32  # ResNet output stride
    assert output.logits.shape == (batch, 5)
    assert output.features.shape == (batch, 512, h, w)  # the backbone's features, not the projected ones
    assert output.attention.shape == (batch, 5, h * w)
    torch.testing.assert_close(output.attention.sum(dim=-1), torch.ones(batch, 5))
    assert resnet_q2l.class_maps(output).shape == (batch, 5, h, w)
    assert resnet_q2l.class_maps(output, torch.zeros(batch, dtype=torch.long)).shape == (batch, h, w)


def test_class_maps_weight_the_features_with_the_attention(resnet_q2l):
    batch, classes, channels, h, w = 2, 5, 3, 2, 3
    features = torch.arange(batch * channels * h * w, dtype=torch.float32).reshape(batch, channels, h, w) / 10
    attention = torch.rand(batch, classes, h * w, generator=torch.Generator().manual_seed(1))
    output = ModelOutput(logits=torch.zeros(batch, classes), features=features, attention=attention)
    expected = torch.zeros(batch, classes, h, w)
    for b in range(batch):
        for c in range(classes):
            for y in range(h):
                for x in range(w):
                    weight = attention[b, c, y * w + x]  # row-major positions, as flatten(2) lays them out
                    expected[b, c, y, x] = sum(features[b, d, y, x] * weight for d in range(channels)) / channels
    torch.testing.assert_close(resnet_q2l.class_maps(output), expected)
    chosen = torch.tensor([3, 1])
    torch.testing.assert_close(resnet_q2l.class_maps(output, chosen), expected[torch.arange(batch), chosen])
    with pytest.raises(ValueError, match="attention"):
        resnet_q2l.class_maps(ModelOutput(logits=output.logits, features=features))


def test_sine_position_embedding():
    embedding = sine_position_embedding(3, 4, 16)
    assert embedding.shape == (12, 16)
    rows, cols = embedding.reshape(3, 4, 16).split(8, dim=-1)
    assert torch.equal(rows[:, :1].expand(3, 4, 8), rows) and torch.equal(cols[:1].expand(3, 4, 8), cols)
    # Lowest frequency of the last row and column: angle 2*pi.
    torch.testing.assert_close(rows[-1, 0, :2], torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)
    assert len({tuple(row.tolist()) for row in embedding}) == 12  # every position distinct
    with pytest.raises(ValueError):
        sine_position_embedding(2, 2, 18)


def test_frozen_batchnorm(resnet_q2l):
    model = resnet_q2l
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and all(len(list(m.parameters())) == 0 for m in frozen)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    images = torch.randn(2, 3, 32, 32)
    model.train()
    try:
        with torch.no_grad():
            first, second = model.backbone(images), model.backbone(images[:1])
    finally:
        model.eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if "running" in k)
    # No batch statistics in train mode: an image's features do not depend on its batch.
    torch.testing.assert_close(first[:1], second)
    # The stem and the first stage are not trained, and the optimiser never sees them.
    backbone, head = model.parameter_groups()
    assert all(p.requires_grad for p in backbone + head)
    assert not any(p.requires_grad for p in model.backbone[:5].parameters())
    assert len(backbone) + len(head) == sum(p.requires_grad for p in model.parameters())
    assert {id(p) for p in head} >= {id(p) for p in model.classifier.parameters()}


def test_frozen_batchnorm_reads_a_batchnorm_state_dict():
    batchnorm = nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        for tensor in (batchnorm.weight, batchnorm.bias, batchnorm.running_mean):
            tensor.uniform_(-1, 1)
        batchnorm.running_var.uniform_(0.5, 2)
    frozen = FrozenBatchNorm2d(4)
    frozen.load_state_dict(batchnorm.state_dict(), strict=True)
    assert set(frozen.state_dict()) == set(batchnorm.state_dict()) - {"num_batches_tracked"}
    images = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(frozen(images), batchnorm(images))
    torch.testing.assert_close(FrozenBatchNorm2d.from_batchnorm(batchnorm)(images), batchnorm(images))


def test_calr_steps_lower_the_loss():
    torch.manual_seed(0)
    model = tiny_q2l(num_classes=4, backbone="compact", dropout=0.0).train()
    objective = create_objective("calr", 4, warmup_epochs=3)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    images = torch.randn(4, 3, 32, 32)
    observed = torch.zeros(4, 4, dtype=torch.int8)
    observed[torch.arange(4), torch.tensor([0, 1, 2, 1])] = 1
    batch = {"image": images, "strong": images.flip(-1), "observed": observed, "labels": observed.clone(),
             "index": torch.arange(4)}
    losses = []
    for _ in range(5):
        result = objective.step(model, batch, epoch=4)  # past warm-up: rejection is live
        optimizer.zero_grad()
        result.loss.backward()
        optimizer.step()
        losses.append(result.loss.item())
        assert result.rejected is not None and result.rejected.shape == (4, 4)
        assert not bool(result.rejected[observed == 1].any())
    assert losses[-1] < losses[0]


@pytest.fixture(scope="module")
def compact_q2l() -> Query2Label:
    return tiny_q2l(backbone="compact").eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, compact_q2l):
    classes = [f"class {i}" for i in range(5)]
    loaded = LoadedModel(network=compact_q2l, classes=classes, image_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return save_checkpoint(loaded, tmp_path_factory.mktemp("q2l") / "checkpoint")


def test_checkpoint_round_trip(checkpoint, compact_q2l):
    loaded = load_model(checkpoint)
    assert isinstance(loaded.network, Query2Label) and not loaded.network.training
    assert loaded.network.arch_config() == compact_q2l.arch_config()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        original, restored = compact_q2l(images), loaded.network(images)
    assert torch.equal(original.logits, restored.logits)
    assert torch.equal(original.attention, restored.attention)


def test_analyze_gives_maps_at_the_image_size(checkpoint):
    loaded = load_model(checkpoint)
    image = np.random.default_rng(0).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    result = analyze(loaded, image, positive="class 2")
    assert result.positive == "class 2" and result.positive_given
    assert result.cam.shape == (50, 70) and result.mask.shape == (50, 70)
    assert 0.0 <= result.cam.min() and result.cam.max() <= 1.0
    if result.box is not None:
        left, top, right, bottom = result.box
        assert 0 <= left < right <= 70 and 0 <= top < bottom <= 50
        assert result.crop.shape == (bottom - top, right - left, 3)
    assert set(result.probabilities) == set(loaded.classes)


def test_recipes_load_and_name_real_options():
    import inspect
    from pathlib import Path

    from train.config import load_config

    recipes = sorted(Path(__file__).resolve().parents[1].glob("train/configs/q2l_*.yaml"))
    assert {path.stem for path in recipes} == {f"q2l_{loss}_{data}" for loss in ("calr", "an")
                                               for data in ("voc", "coco", "nuswide", "cub")}
    accepted = set(inspect.signature(Query2Label).parameters) - {"num_classes", "pretrained"}
    for path in recipes:
        config = load_config(path, {})
        assert config.arch == "q2l" and set(config.arch_options) <= accepted, path.name
        assert f"python -m train fit --config train/configs/{path.name}" in path.read_text()
