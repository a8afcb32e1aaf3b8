"""TensorBoard events of a training run, read back by TensorBoard's own reader: every metrics.csv number
at its epoch's step, the loss and learning rates per step, the CAM grid per epoch, a resume that drops
what a killed run wrote past its last saved epoch, and ``--no-tensorboard``."""

from __future__ import annotations

import json

import pytest
from test_train import read_events, read_metrics, tiny_config

from train.board import GRID_IMAGES, RunBoard
from train.engine import fit


@pytest.fixture(scope="module")
def calr_run(tmp_path_factory):
    from spml.data import make_synthetic_dataset

    world = make_synthetic_dataset(tmp_path_factory.mktemp("board") / "data", seed=3, train=24, val=12, test=12,
                                   image_size=32, progress=False)
    run = tmp_path_factory.mktemp("board") / "run"
    fit(tiny_config(world, run, "calr", epochs=3))
    return run


def test_epoch_scalars_are_the_metrics_rows(calr_run):
    events, rows = read_events(calr_run), read_metrics(calr_run)
    # 24 images at batch 8: 3 steps an epoch, so epoch e ends at step 3e. An empty cell (the rule's
    # precision while it is off) has no event.
    expected = {key: [(3 * int(row["epoch"]), float(row[key])) for row in rows if row[key] != ""]
                for key in rows[0] if key != "epoch"}
    assert {"val_map", "train_loss", "rejected", "rejection_precision", "gap_threshold", "rejection_recall"} <= {
        key for key, points in expected.items() if points}
    for key, points in expected.items():
        written = [(s.step, s.value) for s in events.Scalars(f"epoch/{key}")] if points else []
        assert [step for step, _ in written] == [step for step, _ in points], key
        assert [value for _, value in written] == pytest.approx([value for _, value in points], rel=1e-6), key
    assert int(rows[-1]["rejected"]) > 0  # the rule acted after its warm-up epoch: the curves show it


def test_steps_cams_histograms_and_test(calr_run):
    events = read_events(calr_run)
    assert [s.step for s in events.Scalars("step/loss")] == list(range(1, 10))
    rates = events.Scalars("step/lr_head")
    assert len(rates) == 9 and all(s.value == pytest.approx(1e-3) for s in rates)  # lr 1e-3, head x1, no schedule
    grids = events.Images("cams/val")
    assert [g.step for g in grids] == [3, 6, 9]
    # 8 val images in a grid of 4 columns: 2 rows of captioned tiles.
    assert (grids[0].width, grids[0].height) == (4 * 192, 2 * (192 + 30)) and GRID_IMAGES == 8
    assert [h.step for h in events.Histograms("calr/class_average")] == [3, 6, 9]
    summary = json.loads((calr_run / "summary.json").read_text())
    assert events.Scalars("test/map_of_best")[0].value == pytest.approx(summary["test_map"], rel=1e-6)


def test_a_resume_drops_what_a_killed_run_wrote_past_its_saved_epoch(tmp_path):
    board = RunBoard.open(tmp_path, first_step=1)
    for step in range(1, 7):  # the killed run: epoch 1 saved at step 3, then 3 more steps logged
        board.step(step, float(step), [0.1, 1.0])
    board.close()
    board = RunBoard.open(tmp_path, first_step=4)  # resumed after epoch 1
    for step in range(4, 7):
        board.step(step, 10.0 * step, [0.1, 1.0])
    board.close()
    scalars = read_events(tmp_path).Scalars("step/loss")
    assert [(s.step, s.value) for s in scalars] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]


def test_no_tensorboard_writes_no_events(tmp_path):
    from spml.data import make_synthetic_dataset

    world = make_synthetic_dataset(tmp_path / "data", seed=3, train=8, val=4, test=0, image_size=32, progress=False)
    fit(tiny_config(world, tmp_path / "run", "an", epochs=1, tensorboard=False))
    assert (tmp_path / "run" / "metrics.csv").is_file()
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))
