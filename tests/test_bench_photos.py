"""``python -m train bench-photos`` on a tiny photo set: a checkpoint's figures and the anchor's, computed
the way their definitions say (top-1 and its errors agree, the anchor's C chosen at the photos' size)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from PIL import Image

from spml.checkpoint import LoadedModel, save_checkpoint
from spml.data import load_dataset
from spml.data.transforms import input_normalization
from spml.model import create_model
from train.bench_photos import ANCHOR_C, add_bench_photos_arguments, run_bench_photos
from train.prepare import add_prepare_arguments, run_prepare

COLOURS = {"ant": (200, 30, 30), "bee": (30, 200, 30), "cow": (30, 30, 200), "dog": (200, 200, 30)}


def _prepare(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser.add_subparsers(dest="command"))
    return run_prepare(parser.parse_args(["prepare", "photos", *argv]))


def _bench(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_bench_photos_arguments(parser)
    return run_bench_photos(parser.parse_args(list(argv)))


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-photos")
    for c, (name, colour) in enumerate(COLOURS.items()):
        (root / "photos" / name).mkdir(parents=True)
        for i in range(6):
            image = Image.new("RGB", (40 + 4 * i, 30), colour)
            image.paste((255 - 60 * c, 40 * i, 128), (5, 5, 15 + c * 5, 20))  # a mark of its own per class
            image.save(root / "photos" / name / f"{name}-{i}.png")
    assert _prepare("--photos", str(root / "photos"), "--out", str(root / "data"), "--train", "12", "--val", "8",
                    "--image-size", "64", "--no-progress") == 0
    torch.manual_seed(0)
    network = create_model("compact", len(COLOURS), width=8).eval()
    # Declared at 48 px (the size it would be analysed at), trained at 32.
    save_checkpoint(LoadedModel(network, sorted(COLOURS), 48, *input_normalization(network),
                                training={"image_size": 32, "loss": "an"}), root / "checkpoint")
    return root


def test_checkpoint_and_anchor_figures(photo_set, capsys):
    out = photo_set / "bench.json"
    assert _bench("--data", str(photo_set / "data"), "--checkpoints", str(photo_set / "checkpoint"), "--sizes", "64",
                  "--threads", "1", "--workers", "0", "--out", str(out)) == 0
    result = json.loads(out.read_text())
    val_photos = len(load_dataset(photo_set / "data" / "photos").split("val").images)
    assert result["val_scenes"] == 8 and result["val_photos"] == val_photos
    figures = result["checkpoints"][str(photo_set / "checkpoint")]
    assert figures["trained_at"] == 32 and figures["analysed_at"] == 48 and figures["loss"] == "an"
    assert 0.0 < figures["scene_map_64"] <= 100.0
    errors = figures["photo_errors"]
    assert errors["count"] == len(errors["photos"]) == sum(errors["pairs"].values())
    assert figures["photo_top1"] == pytest.approx(100.0 * (val_photos - errors["count"]) / val_photos)
    # Its own resize (stretch) gives photo_top1; the photos are wider than high, so letterboxing them differs.
    assert figures["resize"] == "stretch" and figures["photo_top1"] == figures["photo_top1_stretch"]
    assert 0.0 <= figures["photo_top1_letterbox"] <= 100.0
    for wrong in errors["photos"]:
        assert wrong["true"] != wrong["predicted"] and wrong["photo"].endswith(".png")
    anchor = result["anchor"]
    # C is chosen at the photos' own size (224) even where --sizes does not name it; every size is scored.
    assert [row["C"] for row in anchor["grid"]] == list(ANCHOR_C) and anchor["feature_size"] == 224
    assert anchor["chosen"] == max(anchor["grid"], key=lambda row: row["scene_map_224"])
    for row in anchor["grid"]:
        assert {"scene_map_64", "scene_map_64_softmax", "scene_map_224", "scene_map_224_softmax"} <= set(row)
        assert 0.0 <= row["photo_top1"] <= 100.0
    assert f"wrote {out}" in capsys.readouterr().out


def test_bench_cleanlab_photos_world_is_scenes_of_two_to_four_photos_on_the_photo_backbone(photo_set, tmp_path):
    """bench-cleanlab's real-photo world: scenes of 2 to 4 photos (so every scene has hidden labels), one
    positive each, trained as bench-method's photos-several world; an unknown world is named."""
    from train.bench_cleanlab import _config, make_world

    args = argparse.Namespace(photos=photo_set / "photos", seed=0, train=10, val=4)
    root = make_world(tmp_path, "photos", args)
    train = load_dataset(root).split("train")
    assert len(train.images) == 10 and set(train.labels.sum(axis=1).tolist()) <= {2, 3, 4}
    assert (train.observed == 1).sum(axis=1).tolist() == [1] * 10 and train.has_hidden_labels
    assert make_world(tmp_path, "photos", args) == root  # made once
    config = _config(args, root, tmp_path / "run", "calr", "photos")
    assert (config.arch, config.pretrained, config.image_size, config.resize, config.epochs, config.warmup_epochs) \
        == ("efficientnet_lite0", True, 160, "letterbox", 6, 2)
    assert config.arch_options == {"frozen_stages": 5} and config.loss_options["bias_correction"] is True
    with pytest.raises(ValueError, match="unknown world 'shapes'"):
        make_world(tmp_path, "shapes", args)


def test_bench_cleanlab_runs_end_to_end_on_a_tiny_world(tmp_path, capsys):
    """The whole command on a tiny synthetic world (AN, 2 folds): results.json holds the in-sample and the
    out-of-sample results, every ranking's figures in range, and the settings as written JSON."""
    from train.bench_cleanlab import add_bench_cleanlab_arguments, run_bench_cleanlab

    parser = argparse.ArgumentParser()
    add_bench_cleanlab_arguments(parser)
    args = parser.parse_args(["--work", str(tmp_path), "--train", "24", "--val", "8", "--image-size", "32",
                              "--width", "8", "--epochs", "2", "--folds", "2", "--losses", "an", "--worlds",
                              "single", "--threads", "1"])
    assert run_bench_cleanlab(args) == 0
    payload = json.loads((tmp_path / "results.json").read_text())
    assert [(r["world"], r["loss"], r["sample"]) for r in payload["results"]] == [
        ("single", "an", "in-sample"), ("single", "an", "out-of-sample")]
    for result in payload["results"]:
        for figures in (result["pairs"]["audit"], result["pairs"]["probability"]):
            assert 0.0 <= figures["ap"] <= 1.0 and 0.0 <= figures["auroc"] <= 1.0
    assert payload["settings"]["photos"] == str(args.photos) and "| single | an |" in capsys.readouterr().out
    # Each ranking's precision-recall curve ends where its ranking ends (every hidden label found) and is drawn.
    curve = payload["results"][0]["pairs"]["audit"]["curve"]
    assert curve["recall"][-1] == 1.0 and len(curve["recall"]) == len(curve["precision"])
    with Image.open(tmp_path / "precision_recall.png") as picture:
        assert picture.format == "PNG" and picture.width >= 600  # two panels side by side


def test_a_multilabel_set_gets_the_single_positive_anchor(tmp_path):
    from conftest import make_coco_set

    from train.prepare import prepare_coco_set

    make_coco_set(tmp_path / "coco", photos=30)
    data = prepare_coco_set(tmp_path / "coco" / "instances.json", tmp_path / "coco" / "images", tmp_path / "data",
                            progress=False)
    out = tmp_path / "bench.json"
    assert _bench("--data", str(data), "--sizes", "32", "--threads", "1", "--workers", "0", "--out", str(out)) == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "multi-label photos, single positives"
    assert (result["val_photos"], result["test_photos"]) == (3, 6)
    anchor = result["anchor"]
    assert [row["C"] for row in anchor["grid"]] == list(ANCHOR_C)
    assert anchor["chosen"] == max(anchor["grid"], key=lambda row: row["val_map"])
    # One regression for each class annotated in some training photos but not all of them.
    observed = load_dataset(data).split("train").observed == 1
    assert anchor["classes_fitted"] == int((observed.any(axis=0) & ~observed.all(axis=0)).sum())
    assert all(0.0 < row["test_map"] <= 100.0 for row in anchor["grid"])


def test_bench_cleanlab_coco_world_scores_the_audit_and_where_it_looks(tmp_path, monkeypatch):
    """The coco world on a tiny COCO-format set (the real world's backbone at 64 px, 2 epochs, 2 folds):
    every ranking scored, and the audit's suspect boxes checked against the drawn ones."""
    from dataclasses import replace

    from conftest import make_coco_set

    from train import bench_cleanlab

    make_coco_set(tmp_path / "coco", photos=30)
    monkeypatch.setattr(bench_cleanlab, "COCO_WORLD", replace(bench_cleanlab.COCO_WORLD, image_size=64, epochs=2,
                                                              warmup_epochs=1))
    parser = argparse.ArgumentParser()
    bench_cleanlab.add_bench_cleanlab_arguments(parser)
    args = parser.parse_args(["--work", str(tmp_path / "work"), "--folds", "2", "--losses", "calr", "--worlds", "coco",
                              "--coco", str(tmp_path / "coco"), "--threads", "1"])
    assert bench_cleanlab.run_bench_cleanlab(args) == 0
    payload = json.loads((tmp_path / "work" / "results.json").read_text())
    assert [(r["world"], r["sample"]) for r in payload["results"]] == [("coco", "in-sample"), ("coco", "out-of-sample")]
    for result in payload["results"]:
        assert 0.0 <= result["pairs"]["audit"]["ap"] <= 1.0
        where = result["where"]
        assert where["top"] == result["hidden_labels"] and where["with_drawn_box"] == where["hidden_in_top"]
        assert 0 <= where["centre_inside"] <= where["with_drawn_box"]
