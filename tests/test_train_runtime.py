"""How the trainer runs: float32 heads under bfloat16 autocast, the global batch and the skip-bad
collective under torchrun (two gloo processes), and the early stop in a real run."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from spml.data import make_synthetic_dataset
from spml.losses import CALR
from spml.model import ModelOutput, create_model
from spml.runtime import DistInfo
from train import engine
from train.config import TrainConfig
from train.engine import fit, per_process_batch, prepare_network
from train.loop import predict

ROOT = Path(__file__).resolve().parents[1]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("world") / "data", seed=4, train=24, val=12, test=12,
                                  image_size=32, progress=False)


def _config(data: Path, out: Path, **changes) -> TrainConfig:
    values = dict(data=str(data), out=str(out), loss="an", arch="compact", arch_options={"width": 8},
                  pretrained=False, epochs=2, batch_size=8, image_size=32, lr=1e-3, head_lr_multiplier=1.0,
                  warmup_epochs=1, device="cpu", workers=0, seed=1)
    values.update(changes)
    return TrainConfig(**values).validate()


# ----------------------------------------------------------------------------- mixed precision


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_step_logits_are_the_fp32_head_on_the_bf16_features(device):
    torch.manual_seed(0)
    model = create_model("compact", 4, width=8).to(device).train()
    images = torch.randn(4, 3, 32, 32, device=device)
    observed = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.int8, device=device)
    batch = {"image": images, "strong": images.flip(-1), "observed": observed, "labels": observed.clamp_min(0),
             "index": torch.arange(4, device=device)}
    outputs: list[ModelOutput] = []
    model.register_forward_hook(lambda module, args, output: outputs.append(output))
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        result = CALR(4).step(model, batch, epoch=5)
    weak = outputs[0]
    assert weak.features.dtype == torch.float32 and weak.logits.dtype == torch.float32
    assert torch.equal(weak.features, weak.features.bfloat16().float())  # the backbone did run in bfloat16
    expected = model.head(weak.features.mean(dim=(2, 3)))  # fp32 head, outside autocast
    assert torch.equal(weak.logits, expected)
    assert result.logits.dtype == torch.float32 and torch.equal(result.logits, expected.detach())
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        maps = model.class_maps(weak, torch.tensor([0, 1, 2, 0], device=device))
    assert maps.dtype == torch.float32
    # the bf16 head would have rounded the logits: the check above would see it
    assert not torch.equal(expected, model.head(weak.features.mean(dim=(2, 3)).bfloat16().float()).bfloat16().float())


def test_q2l_logits_under_autocast_are_float32():
    torch.manual_seed(0)
    model = create_model("q2l", 3, backbone="compact", hidden_dim=32, feedforward_dim=64).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        output = model(images)
        maps = model.class_maps(output, torch.tensor([0, 2]))
    assert output.logits.dtype == output.features.dtype == output.attention.dtype == maps.dtype == torch.float32
    with torch.no_grad():
        assert not torch.equal(output.features, model.backbone(images))  # the backbone did run in bfloat16
        logits = model(images).logits  # the same network in float32 throughout
    assert torch.allclose(output.logits, logits, atol=0.05) and not torch.equal(output.logits, logits)


def test_evaluation_scores_are_float32_from_the_fp32_head(world):
    torch.manual_seed(0)
    model = create_model("compact", 10, width=8)
    from spml.data import ImageDataset, eval_transform, load_dataset
    from spml.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    split = load_dataset(world).split("val")
    loader = DataLoader(ImageDataset(split, eval_transform(32, IMAGENET_MEAN, IMAGENET_STD)), batch_size=5)
    scores, _ = predict(model, loader, torch.device("cpu"), amp=True)
    assert scores.dtype == np.float32 and scores.shape == (12, 10)
    images = torch.cat([batch["image"] for batch in loader])
    with torch.no_grad():
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            features = model.backbone(images).float()
        expected = torch.sigmoid(model.head(features.mean(dim=(2, 3)))).numpy()
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)  # batches of 5 vs 12: same values
    assert len(np.unique(scores)) > 100  # not collapsed onto a bfloat16 grid (120 scores here)


# ----------------------------------------------------------------------------- batch and SyncBatchNorm


def test_global_batch_divides_among_processes():
    assert per_process_batch(16, 1) == 16 and per_process_batch(16, 4) == 4
    with pytest.raises(ValueError, match="global batch.*3 processes"):
        per_process_batch(16, 3)


def test_sync_bn_on_the_cpu_is_refused_clearly():
    config = TrainConfig(data="d", out="o", sync_bn=True, channels_last=False)
    network = create_model("compact", 2, width=4)
    with pytest.raises(ValueError, match="sync_bn needs CUDA"):
        prepare_network(network, config, DistInfo(rank=0, world_size=2, local_rank=0),
                        torch.device("cpu"))
    assert prepare_network(network, config, DistInfo(), torch.device("cpu")) is network  # one process: nothing
    with pytest.raises(ValueError, match="batchnorm_passes"):
        TrainConfig(data="d", out="o", sync_bn=True, loss_options={"batchnorm_passes": 2}).validate()


def _torchrun(world: Path, out: Path, *extra: str, processes: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "train", "fit", "--data", str(world), "--out", str(out), "--loss", "an", "--arch", "compact",
               "--no-pretrained", "--epochs", "1", "--image-size", "32", "--device", "cpu", "--workers", "0",
               *extra]
    # A timeout turns a hang into a failure instead of a stuck CI job.
    return subprocess.run(command, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, cwd=ROOT, timeout=240)


def _steps(log: str) -> tuple[int, int]:
    found = re.search(r"batch \d+ \((\d+) per process\), (\d+) steps per epoch", log)
    assert found, log[-2000:]
    return int(found.group(1)), int(found.group(2))


def test_two_processes_take_the_steps_of_one_with_the_same_global_batch(world, tmp_path, caplog):
    caplog.set_level("INFO", logger="train")
    fit(_config(world, tmp_path / "one", epochs=1))
    single = _steps(caplog.text)
    result = _torchrun(world, tmp_path / "two", "--batch-size", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world size 2" in result.stderr
    assert single == (8, 3) and _steps(result.stderr) == (4, 3)  # 24 images: 3 steps of 8 either way


def test_a_broken_batch_on_one_rank_is_skipped_by_every_rank(world, tmp_path):
    data = tmp_path / "data"
    subprocess.run(["cp", "-r", str(world), str(data)], check=True)
    with (data / "train.csv").open() as handle:
        first_image = next(csv.DictReader(handle))["image"]
    (data / first_image).write_bytes(b"not an image")
    # one image per rank and step: the rank that draws the broken image has an empty batch
    result = _torchrun(data, tmp_path / "run", "--batch-size", "2", "--skip-bad")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped on every rank: a rank's whole batch was broken" in result.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"] == 1


# ----------------------------------------------------------------------------- early stop


def test_early_stop_ends_the_run_and_a_resume_does_not_train_on(world, tmp_path, monkeypatch):
    val_maps = iter([50.0, 60.0, 57.5, 99.0, 99.0])  # epoch 3 falls 2.5 below the best: stop there
    calls = {"val": 0}

    def fake_evaluate(network, split, config, device, info=DistInfo()):
        if split.name == "val":
            calls["val"] += 1
            return next(val_maps)
        return 42.0

    monkeypatch.setattr(engine, "evaluate", fake_evaluate)
    summary = fit(_config(world, tmp_path / "run", epochs=5, early_stop_drop=2.0))
    assert summary["stopped_early_after_epoch"] == 3 and summary["best_epoch"] == 2
    assert summary["best_val_map"] == 60.0 and calls["val"] == 3
    with (tmp_path / "run" / "metrics.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2", "3"]
    (tmp_path / "run" / "summary.json").unlink()  # as if killed after the last epoch's state was saved
    again = fit(_config(world, tmp_path / "run", epochs=5, early_stop_drop=2.0))
    assert calls["val"] == 3 and again["stopped_early_after_epoch"] == 3
