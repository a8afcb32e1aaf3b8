"""Every committed recipe runs where a user puts the data: one step of each with ``--data`` elsewhere,
the recipe's own paths inside its data set following it, and a wrong path failing before any step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from spml import load_model
from spml.data import make_synthetic_dataset
from train.__main__ import main as train_main
from train.config import follow_data, load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "train" / "configs").glob("*.yaml"))
_CONFIGS = {path: yaml.safe_load(path.read_text()) or {} for path in RECIPES}
_BY_BEST = {f"{config['out']}/best": path for path, config in _CONFIGS.items() if "out" in config}
_STARTED_FROM = {config["init_from"] for config in _CONFIGS.values() if "init_from" in config}


def _stage(path: Path) -> int:
    """How many recipes' runs this one starts from, one after another (0: none, from ImageNet or scratch)."""
    init_from = _CONFIGS[path].get("init_from")
    return 0 if init_from is None else 1 + _stage(_BY_BEST[init_from])


# A stage that starts from another recipe's run (init_from) comes after every stage of its chain.
ORDERED = sorted(RECIPES, key=_stage)
ONE_STEP = ["--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "2", "--image-size", "64",
            "--no-pretrained", "--device", "cpu", "--workers", "0"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder to run the recipes in (their runs and exports land there, never in the checkout), with
    a data set elsewhere: a tiny world, and inside it a second one where the photos recipes keep their
    single photos (data/photos/photos)."""
    root = tmp_path_factory.mktemp("recipes")
    elsewhere = make_synthetic_dataset(root / "elsewhere" / "mine", seed=1, train=4, val=2, test=2, image_size=32,
                                       progress=False)
    make_synthetic_dataset(elsewhere / "photos", seed=2, train=3, val=1, test=0, image_size=32, progress=False)
    return root


def test_recipe_paths_follow_data():
    assert follow_data("data/photos/photos", "data/photos", "/mine") == "/mine/photos"
    assert follow_data("data/photos", "data/photos", "/mine") == "/mine"
    assert follow_data("data/other", "data/photos", "/mine") == "data/other"
    assert follow_data("data/photos2", "data/photos", "/mine") == "data/photos2"  # a sibling, not inside
    config = load_config(ROOT / "train" / "configs" / "photos_calr.yaml", {"data": "/mine"})
    assert config.calibration_data == ["/mine/photos"]
    config = load_config(ROOT / "train" / "configs" / "photos_calr.yaml", {})
    assert config.calibration_data == ["data/photos/photos"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ORDERED, ids=[path.stem for path in ORDERED])
def test_recipe_runs_one_step_with_data_elsewhere(workspace, monkeypatch, recipe):
    monkeypatch.chdir(workspace)
    data = workspace / "elsewhere" / "mine"
    assert train_main(["fit", "--config", str(recipe), "--data", str(data), *ONE_STEP]) == 0
    written = _CONFIGS[recipe]
    run = workspace / written["out"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"] == str(data) and "calibration_error" not in summary
    familiarity = load_model(run / "best").familiarity
    expected = " + ".join([str(data)] + [str(data / "photos")] * len(written.get("calibration_data", [])))
    assert familiarity is not None and familiarity["data"] == expected
    # A Q2L run's checkpoint and resume state take gigabytes: keep only the runs a later stage starts from.
    if f"{written['out']}/best" not in _STARTED_FROM:
        shutil.rmtree(run)


def test_a_wrong_path_fails_before_the_first_step(workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = ROOT / "train" / "configs" / "photos_calr.yaml"
    # The data set is there, the single photos its recipe names inside it are not.
    bare = make_synthetic_dataset(tmp_path / "bare", seed=1, train=4, val=2, test=0, image_size=32, progress=False)
    assert train_main(["fit", "--config", str(recipe), "--data", str(bare), *ONE_STEP]) == 2
    assert f"calibration_data {bare / 'photos'}: no classes.txt there" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # failed before the run folder was made
    stage = ROOT / "train" / "configs" / "photos_calr_320.yaml"
    data = workspace / "elsewhere" / "mine"
    assert train_main(["fit", "--config", str(stage), "--data", str(data), "--out", str(tmp_path / "r"),
                       *ONE_STEP]) == 2
    assert "init_from runs/photos_calr/best: not a checkpoint" in capsys.readouterr().err
    # --init-from overrides the recipe's, and is checked the same way.
    assert train_main(["fit", "--config", str(stage), "--data", str(data), "--out", str(tmp_path / "r"),
                       "--init-from", str(tmp_path / "nowhere"), *ONE_STEP]) == 2
    assert f"init_from {tmp_path / 'nowhere'}: not a checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_no_export_leaves_the_recipes_export_folder_alone(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = ROOT / "train" / "configs" / "demo.yaml"  # exports checkpoints/demo
    data = workspace / "elsewhere" / "mine"
    assert train_main(["fit", "--config", str(recipe), "--data", str(data), "--no-export", *ONE_STEP]) == 0
    assert (tmp_path / "runs" / "demo" / "summary.json").is_file()
    assert not (tmp_path / "checkpoints").exists()
    assert yaml.safe_load((tmp_path / "runs" / "demo" / "config.yaml").read_text())["export"] is None
