"""The trainer end to end on a tiny synthetic world: every loss, resume after a kill, DDP, evaluate,
push, bench, and the errors a user meets."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spml import load_model
from spml.data import make_synthetic_dataset
from spml.data.synthetic import World
from spml.losses import LOSS_NAMES
from train.__main__ import main as train_main
from train.config import TrainConfig, load_config
from train.engine import export_run, fit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("world") / "data", seed=3, train=24, val=12, test=12,
                                  image_size=32, progress=False)


def tiny_config(data: Path, out: Path, loss: str = "calr", **changes) -> TrainConfig:
    values = dict(data=str(data), out=str(out), loss=loss, arch="compact", arch_options={"width": 8},
                  pretrained=False, epochs=2, batch_size=8, image_size=32, lr=1e-3, head_lr_multiplier=1.0,
                  warmup_epochs=1, device="cpu", workers=0, seed=1, loss_options={"bias_correction": True}
                  if loss == "calr" else {})
    values.update(changes)
    return TrainConfig(**values).validate()


def read_events(run: Path):
    """The run's TensorBoard events, read by TensorBoard's own reader (it drops what a resume purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    events.Reload()
    return events


def read_metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_every_loss_trains_and_writes_a_run(tiny_world, tmp_path, loss):
    summary = fit(tiny_config(tiny_world, tmp_path / "run", loss))
    run = tmp_path / "run"
    for key in ("best_val_map", "test_map", "loss", "arch", "epochs", "seed"):
        assert key in summary
    assert summary["loss"] == loss and summary["epochs"] == 2
    assert 0.0 <= summary["test_map"] <= 100.0
    assert json.loads((run / "summary.json").read_text()) == summary
    rows = read_metrics(run)
    assert [row["epoch"] for row in rows] == ["1", "2"]
    model = load_model(run / "best")
    assert model.training["loss"] == loss and model.training["test_map"] == pytest.approx(summary["test_map"])
    assert (model.thresholds is not None) == (loss == "calr")
    if loss == "calr":
        # Warm-up epoch 1 rejects nothing; with full labels known the precision column is filled after.
        assert rows[0]["rejected"] == "0"
        assert int(rows[1]["rejected"]) > 0 and rows[1]["rejection_precision"] != ""
        assert 0.0 <= float(rows[1]["rejection_precision"]) <= 1.0


def test_resolved_config_is_written_and_a_finished_run_is_not_retrained(tiny_world, tmp_path):
    config = tiny_config(tiny_world, tmp_path / "run", "an", epochs=1)
    first = fit(config)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "loss: an" in saved and "arch: compact" in saved
    weights = (tmp_path / "run" / "best" / "model.safetensors").stat().st_mtime_ns
    assert fit(config) == first
    assert (tmp_path / "run" / "best" / "model.safetensors").stat().st_mtime_ns == weights


def test_resume_with_other_settings_is_refused(tiny_world, tmp_path):
    fit(tiny_config(tiny_world, tmp_path / "run", "an", epochs=1))
    (tmp_path / "run" / "summary.json").unlink()
    with pytest.raises(ValueError, match="lr"):
        fit(tiny_config(tiny_world, tmp_path / "run", "an", epochs=1, lr=5e-4))


def test_fp16_export_and_calibration_over_an_extra_data_set(tiny_world, tmp_path):
    extra = make_synthetic_dataset(tmp_path / "extra", seed=4, train=6, val=2, image_size=32, progress=False)
    config = tiny_config(tiny_world, tmp_path / "run", "an", epochs=1, calibration_data=[str(extra)],
                         resize="letterbox")
    fit(config)
    best = load_model(tmp_path / "run" / "best")
    assert best.resize == "letterbox"  # the run's resize travels with its checkpoint
    # The statistics name both sources and count both train splits: 24 + 6 images.
    assert best.familiarity["data"] == f"{tiny_world} + {extra}" and best.familiarity["images"] == 30
    export_run(tmp_path / "run", tmp_path / "export", half=True)
    exported = load_file(str(tmp_path / "export" / "model.safetensors"))
    assert {tensor.dtype for tensor in exported.values() if tensor.is_floating_point()} == {torch.float16}
    half = load_model(tmp_path / "export")
    assert half.familiarity == best.familiarity and half.resize == "letterbox"
    assert half.network.head.weight.dtype == torch.float32
    assert torch.equal(half.network.head.weight, best.network.head.weight.half().float())


def test_a_run_started_before_an_option_existed_resumes(tiny_world, tmp_path):
    fit(tiny_config(tiny_world, tmp_path / "run", "an", epochs=1))
    saved = tmp_path / "run" / "config.yaml"
    saved.write_text("\n".join(line for line in saved.read_text().splitlines()
                               if not line.startswith("calibration_data")) + "\n")
    (tmp_path / "run" / "summary.json").unlink()
    assert fit(tiny_config(tiny_world, tmp_path / "run", "an", epochs=1))["epochs"] == 1


def _fit_command(data: Path, out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "train", "fit", "--data", str(data), "--out", str(out), "--loss", "calr",
            "--arch", "compact", "--no-pretrained", "--epochs", str(epochs), "--batch-size", "8",
            "--image-size", "32", "--lr", "0.001", "--warmup-epochs", "1", "--device", "cpu", "--workers", "0",
            "--seed", "5"]


def test_a_killed_run_resumes_to_the_same_result(tiny_world, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(_fit_command(tiny_world, reference, 3), check=True, env=env, capture_output=True, cwd=ROOT)

    process = subprocess.Popen(_fit_command(tiny_world, killed, 3), env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (killed / "metrics.csv").exists():  # written right after state.pt
        assert process.poll() is None, "the run ended before it saved its first epoch"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "summary.json").exists()
    done_before = len(read_metrics(killed))
    assert 1 <= done_before < 3

    result = subprocess.run(_fit_command(tiny_world, killed, 3), env=env, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert f"resuming {killed} after epoch {done_before}" in result.stderr
    # Seeding per epoch makes the resumed run the same run: same metrics, same weights.
    strip = [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in read_metrics(killed)]
    expected = [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")}
                for row in read_metrics(reference)]
    assert strip == expected
    ours, theirs = load_file(killed / "best" / "model.safetensors"), load_file(reference / "best" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(ours[name].equal(theirs[name]) for name in ours)
    # TensorBoard: the resumed run's curves go on where the saved epoch ended, one event a step (24 images,
    # batch 8: 3 steps an epoch), and its epoch scalars are metrics.csv's. (The stock GPU machine of
    # scripts/gpu_check.sh has no tensorboard: its runs write no events, and the resume is checked above.)
    if importlib.util.find_spec("tensorboard") is None:
        return
    events = read_events(killed)
    assert [event.step for event in events.Scalars("step/loss")] == list(range(1, 10))
    assert [event.step for event in events.Scalars("epoch/val_map")] == [3, 6, 9]
    assert [event.value for event in events.Scalars("epoch/val_map")] == pytest.approx(
        [float(row["val_map"]) for row in read_metrics(killed)])
    assert [event.value for event in events.Scalars("step/loss")] == pytest.approx(
        [event.value for event in read_events(reference).Scalars("step/loss")], rel=1e-5)


@pytest.mark.parametrize("world", ["tiny_world", "tiny_partial_world"])
def test_ddp_with_two_processes_on_gloo(world, request, tmp_path):
    """Single positives, and several (every rank runs the probe pass each step, whether its own images
    have probes or not, so no rank waits in a collective the other skipped)."""
    data = request.getfixturevalue(world)
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "train", "fit", "--data", str(data), "--out", str(out), "--loss", "calr",
               "--arch", "compact", "--no-pretrained", "--epochs", "2", "--batch-size", "4", "--image-size", "32",
               "--warmup-epochs", "1", "--device", "cpu", "--workers", "0"]
    result = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world size 2" in result.stderr
    assert len(list(out.glob("events.out.tfevents.*"))) == 1  # rank 0 alone writes TensorBoard events
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and 0.0 <= summary["test_map"] <= 100.0
    rows = read_metrics(out)
    assert len(rows) == 2
    if world == "tiny_world":
        assert int(rows[1]["rejected"]) > 0 and rows[1]["probes"] == "0"
    else:  # the probes of both ranks are counted; the gate may hold the rule off
        assert all(int(row["probes"]) > 0 and 0.0 <= float(row["estimated_precision"]) <= 1.0 for row in rows)
    # Thresholds averaged over the global batch: the checkpoint holds one set of them.
    assert load_model(out / "best").thresholds is not None


def test_evaluate_matches_the_summary(tiny_world, tmp_path, capsys):
    summary = fit(tiny_config(tiny_world, tmp_path / "run", "an", epochs=1))
    code = train_main(["evaluate", "--checkpoint", str(tmp_path / "run" / "best"), "--data", str(tiny_world),
                       "--split", "test", "--json", "--device", "cpu", "--workers", "0"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["map"] == pytest.approx(summary["test_map"], abs=1e-6)
    assert result["images"] == 12


def test_push_writes_a_model_card_to_a_folder(tiny_world, tmp_path, capsys):
    summary = fit(tiny_config(tiny_world, tmp_path / "run", "calr", epochs=2))
    folder = tmp_path / "upload"
    code = train_main(["push", "--checkpoint", str(tmp_path / "run" / "best"), "--repo", "someone/spml-demo",
                       "--folder", str(folder)])
    assert code == 0
    card = (folder / "README.md").read_text()
    assert "someone/spml-demo" in card and f"{summary['test_map']:.2f}" in card and "calr" in card
    assert load_model(folder).classes == load_model(tmp_path / "run" / "best").classes


@pytest.mark.parametrize(("argv", "message"), [
    (["--loss", "nope"], "unknown loss 'nope'"),
    (["--arch", "vgg"], "unknown architecture 'vgg'"),
    (["--resize", "crop"], "unknown resize 'crop'"),
    (["--device", "cuda"], "no CUDA GPU"),
])
def test_clear_errors(tiny_world, tmp_path, capsys, argv, message, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    base = ["fit", "--data", str(tiny_world), "--out", str(tmp_path / "run"), "--arch", "compact",
            "--no-pretrained", "--epochs", "1", "--image-size", "32", "--workers", "0"]
    assert train_main(base + argv) == 2
    assert message in capsys.readouterr().err


def test_a_wrong_data_set_is_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert train_main(["fit", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run"),
                       "--arch", "compact", "--no-pretrained", "--workers", "0"]) == 2
    assert "classes.txt" in capsys.readouterr().err


def test_recipes_load_and_name_real_options():
    recipes = sorted((ROOT / "train" / "configs").glob("*.yaml"))
    assert len(recipes) >= 20
    for recipe in recipes:
        config = load_config(recipe, {})
        assert config.data and config.out
        assert f"train/configs/{recipe.name}" in recipe.read_text()


@pytest.mark.parametrize("arch", [["--arch", "compact"], ["--arch", "q2l", "--arch-options",
                                  '{"backbone": "compact", "hidden_dim": 32, "feedforward_dim": 64}']])
def test_bench_json_has_the_figures(capsys, arch):
    code = train_main(["bench", *arch, "--image-size", "32", "--batch-size", "2", "--steps", "1",
                       "--warmup", "0", "--device", "cpu", "--json"])
    assert code == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("an_step_s", "calr_step_s", "reference_step_s", "calr_over_an", "reference_over_calr", "device",
                "arch", "batch_size", "image_size"):
        assert key in figures
    assert figures["calr_over_an"] == pytest.approx(figures["calr_step_s"] / figures["an_step_s"])
    assert figures["probes_over_calr"] == pytest.approx(figures["calr_probes_step_s"] / figures["calr_several_step_s"])


@pytest.fixture(scope="module")
def tiny_partial_world(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("partial") / "data", seed=3, train=24, val=12, test=12,
                                  image_size=32, progress=False, partial=0.5)


def test_probes_estimate_the_rule_precision_in_metrics_and_the_log(tiny_partial_world, tiny_world, tmp_path, caplog):
    """Several annotated positives: every epoch reports the probes and the estimated precision (the
    warm-up reports what the rule would do); an expected count of one label an image leaves no label
    missing, so the estimate is 0 and the run warns while the rule rejects. Single positives: no probes."""
    with caplog.at_level("INFO", logger="train"):
        fit(tiny_config(tiny_partial_world, tmp_path / "partial"))
    rows = read_metrics(tmp_path / "partial")
    assert all(int(row["probes"]) > 0 for row in rows)
    assert all(0.0 <= float(row["probe_recall"]) <= 1.0 for row in rows)
    assert all(row["estimated_precision"] == "" or 0.0 <= float(row["estimated_precision"]) <= 1.0
               for row in rows)
    assert any("probes (hidden annotated positives)" in r.getMessage() for r in caplog.records)
    # One label an image: nothing is missing, the estimate is 0. With the gate off the rule rejects in
    # epoch 2 and the run warns; with the default gate (0.65) it stays off in epoch 2 and says so.
    caplog.clear()
    with caplog.at_level("INFO", logger="train"):
        fit(tiny_config(tiny_partial_world, tmp_path / "ungated", expected_positives=1.0,
                        loss_options={"bias_correction": True, "min_precision": 0.0}))
    rows = read_metrics(tmp_path / "ungated")
    assert int(rows[1]["rejected"]) > 0 and float(rows[1]["estimated_precision"]) == 0.0
    assert any(r.levelname == "WARNING" and "the rejection rule is guessing" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    with caplog.at_level("INFO", logger="train"):
        fit(tiny_config(tiny_partial_world, tmp_path / "gated", expected_positives=1.0))
    rows = read_metrics(tmp_path / "gated")
    assert float(rows[0]["estimated_precision"]) == 0.0 and rows[1]["rejected"] == "0"
    assert any("the rule stays off in the next epoch" in r.getMessage() for r in caplog.records)
    assert not any("the rejection rule is guessing" in r.getMessage() for r in caplog.records)
    fit(tiny_config(tiny_world, tmp_path / "single"))
    rows = read_metrics(tmp_path / "single")
    assert all(row["probes"] == "0" and row["estimated_precision"] == "" for row in rows)


def test_an_imagenet_backbone_trains_ungated_and_says_so_plainly(tiny_partial_world, tmp_path, caplog):
    """With ImageNet weights ours leaves the gate off (docs/method.md, "The gate and the backbone"): the
    estimate of 0 that holds the gated rule off above does not stop this one, and a low estimate is a
    note in the log, not a warning. The resolved config says which gate ran."""
    with caplog.at_level("INFO", logger="train"):
        fit(tiny_config(tiny_partial_world, tmp_path / "imagenet", arch="efficientnet_lite0", arch_options={},
                        pretrained=True, expected_positives=1.0))
    assert "min_precision: 0.0" in (tmp_path / "imagenet" / "config.yaml").read_text()
    rows = read_metrics(tmp_path / "imagenet")
    assert float(rows[0]["estimated_precision"]) == 0.0 and int(rows[1]["rejected"]) > 0
    assert any("with ImageNet features the benchmark's ungated rule gained" in r.getMessage() for r in caplog.records)
    assert not any(r.levelname == "WARNING" and "guessing" in r.getMessage() for r in caplog.records)


def test_expected_positives_reaches_the_run_from_the_command_line(tiny_partial_world, tmp_path):
    run = tmp_path / "run"
    assert train_main(["fit", "--data", str(tiny_partial_world), "--out", str(run), "--loss", "calr",
                       "--arch", "compact", "--no-pretrained", "--epochs", "1", "--image-size", "32",
                       "--batch-size", "8", "--workers", "0", "--expected-positives", "1"]) == 0
    assert "expected_positives: 1.0" in (run / "config.yaml").read_text()
    assert float(read_metrics(run)[0]["estimated_precision"]) == 0.0  # one label an image: none missing


def test_init_from_starts_at_a_checkpoint_weights_and_thresholds(tiny_world, tmp_path):
    fit(tiny_config(tiny_world, tmp_path / "first", "calr", epochs=1, warmup_epochs=0))
    first = load_model(tmp_path / "first" / "best")
    # lr 0: the fine-tune's parameters stay exactly those it started from; its thresholds keep counting.
    fit(tiny_config(tiny_world, tmp_path / "second", "calr", epochs=1, warmup_epochs=0, image_size=40, lr=0.0,
                    init_from=str(tmp_path / "first" / "best")))
    second = load_model(tmp_path / "second" / "best")
    for (name, before), (_, after) in zip(first.network.named_parameters(), second.network.named_parameters(),
                                          strict=True):
        assert torch.equal(before, after), name
    steps = 24 // 8  # 24 training images at batch 8: one epoch's updates
    assert second.thresholds.state_dict()["average_steps"] == first.thresholds.state_dict()["average_steps"] + steps
    assert second.image_size == 40
    with pytest.raises(ValueError, match="do not fit this architecture"):
        fit(tiny_config(tiny_world, tmp_path / "wider", "calr", epochs=1, arch_options={"width": 16},
                        init_from=str(tmp_path / "first" / "best")))
    other = make_synthetic_dataset(tmp_path / "other", seed=4, train=6, val=2, image_size=32,
                                   world=World(classes=4), progress=False)
    with pytest.raises(ValueError, match="classes differ"):
        fit(tiny_config(other, tmp_path / "other-run", "an", epochs=1, init_from=str(tmp_path / "first" / "best")))
