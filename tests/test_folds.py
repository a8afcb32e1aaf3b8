"""Cross-fitting: `train fit --folds K` and the out-of-sample audit of its run, alone and under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from report_checks import assert_same_report, read_rows

from spml.audit import FoldModels, audit_dataset, load_audit_model
from spml.checkpoint import load_model
from spml.data import load_dataset, make_synthetic_dataset
from train.__main__ import main as train_main
from train.fold_split import assign_folds, without_fold

ROOT = Path(__file__).resolve().parents[1]
FIT = ["--loss", "an", "--arch", "compact", "--no-pretrained", "--epochs", "1", "--batch-size", "8",
       "--image-size", "32", "--device", "cpu", "--workers", "0", "--seed", "4"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("folds") / "data", seed=3, train=16, val=6, test=0,
                                  image_size=32, progress=False)


@pytest.fixture(scope="module")
def run(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    assert train_main(["fit", "--data", str(world), "--out", str(out), "--folds", "2", *FIT]) == 0
    return out


def test_folds_partition_the_training_split_by_the_seed():
    images = [f"img/{i}.png" for i in range(7)]
    folds = assign_folds(images, 3, seed=1)
    assert sorted(sum(folds, [])) == sorted(images) and [len(f) for f in folds] == [3, 2, 2]
    assert all(fold == sorted(fold, key=images.index) for fold in folds)  # split order inside a fold
    assert assign_folds(images, 3, seed=1) == folds and assign_folds(images, 3, seed=2) != folds
    with pytest.raises(ValueError, match="between 2 and"):
        assign_folds(images, 1, seed=1)


def test_fit_with_folds_writes_k_runs_each_without_its_fold(world, run):
    payload = json.loads((run / "folds.json").read_text())
    dataset = load_dataset(world)
    train = [path.relative_to(dataset.root).as_posix() for path in dataset.split("train").images]
    assert payload["k"] == 2 and sorted(sum(payload["folds"], [])) == sorted(train)
    assert payload["folds"] == assign_folds(train, 2, seed=4)
    for fold in range(2):
        assert (run / f"fold-{fold}" / "best" / "model.safetensors").is_file()
        assert json.loads((run / f"fold-{fold}" / "summary.json").read_text())["epochs"] == 1
        kept = without_fold(dataset.split("train"), dataset.root, run / "folds.json", fold)
        assert {p.relative_to(dataset.root).as_posix() for p in kept.images} == set(train) - set(payload["folds"][fold])
    # Fitting again with the same command finds the finished runs; other folds are refused.
    assert train_main(["fit", "--data", str(world), "--out", str(run), "--folds", "2", *FIT]) == 0
    assert train_main(["fit", "--data", str(world), "--out", str(run), "--folds", "3", *FIT]) == 2


def test_each_image_is_audited_by_the_model_that_never_saw_it(world, run, tmp_path):
    model = load_audit_model(run)
    assert isinstance(model, FoldModels) and len(model.models) == 2
    report = audit_dataset(model, world, "train", tmp_path / "oos.csv", batch_size=5, show_progress_bar=False)
    rows = read_rows(report.csv_path)
    folds = json.loads((run / "folds.json").read_text())["folds"]
    fold_of = {image: f for f, images in enumerate(folds) for image in images}
    assert {row["fold"] for row in rows} == {"0", "1"}
    assert all(int(row["fold"]) == fold_of[row["image"]] for row in rows)
    assert report.summary["folds"] == 2 and len(report.summary["fold_gap_thresholds"]) == 2
    for fold in range(2):  # the same numbers as an audit with that fold's model alone
        alone = audit_dataset(load_model(run / f"fold-{fold}" / "best"), world, "train", tmp_path / f"f{fold}.csv",
                              batch_size=5, show_progress_bar=False)
        expected = {(r["image"], r["class"]): r for r in read_rows(alone.csv_path)}
        for row in rows:
            if row["fold"] == str(fold):
                want = expected[(row["image"], row["class"])]
                assert float(row["score"]) == pytest.approx(float(want["score"]), rel=1e-5, abs=1e-6)
                assert row["suspect_box"] == want["suspect_box"]
    other = audit_dataset(model, world, "val", tmp_path / "val.csv", batch_size=5, show_progress_bar=False)
    assert {row["fold"] for row in read_rows(other.csv_path)} == {"0"}  # no fold saw them: model 0


def test_torchrun_spreads_the_folds_and_the_audit_equals_the_single_process_one(world, run, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    spread = tmp_path / "spread"
    result = subprocess.run([*torchrun, "-m", "train", "fit", "--data", str(world), "--out", str(spread),
                             "--folds", "2", *FIT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = [json.loads(line)["trained"] for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted(name for names in trained for name in names) == ["fold-0", "fold-1"]  # one fold per rank
    assert (spread / "folds.json").read_text() == (run / "folds.json").read_text()
    single = audit_dataset(load_audit_model(run), world, "train", tmp_path / "single.csv", batch_size=5,
                           show_progress_bar=False)
    out = tmp_path / "sharded.csv"
    result = subprocess.run([*torchrun, "-m", "spml", "audit", "--checkpoint", str(run), "--data", str(world),
                             "--split", "train", "--out", str(out), "--batch-size", "5", "--device", "cpu", "--json"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["world_size"] == 2
    assert_same_report(read_rows(out), read_rows(single.csv_path))
