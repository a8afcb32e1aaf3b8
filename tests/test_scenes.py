"""``train prepare photos``: scenes of 1 to 4 photos from an image-folder set, split by source photo."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_PHOTOS, needs_shared_photos
from PIL import Image

from spml.data import load_dataset, sample_single_positive
from spml.data.scenes import BACKGROUND, compose_scene, plan_scenes, read_photo_folder, split_photos
from train.prepare import add_prepare_arguments, run_prepare

COLOURS = {"ant": (200, 0, 0), "bee": (0, 200, 0), "cow": (0, 0, 200), "dog": (200, 200, 0), "eel": (0, 200, 200)}


def _photo_folder(root, per_class: int = 5):
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (12, 6), colour).save(root / name / f"{name}-{i}.jpg", quality=95)
    (root / "notes.txt").write_text("not a class")  # a file beside the class folders is ignored
    return root


def _prepare(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser.add_subparsers(dest="command"))
    return run_prepare(parser.parse_args(["prepare", "photos", *argv]))


def test_compose_scene_fits_each_photo_in_its_cell_on_grey():
    red = Image.new("RGB", (4, 2), (255, 0, 0))  # wide: fills its cell's width, grey above and below
    blue = Image.new("RGB", (2, 4), (0, 0, 255))  # tall: fills a half's height exactly
    scene = np.asarray(compose_scene([red, blue], 8))
    assert scene.shape == (8, 8, 3)
    assert (scene[:, 4:] == (0, 0, 255)).all()  # the right half: 4 x 8 from a 2 x 4 photo
    assert (scene[3:5, :4] == (255, 0, 0)).all()  # the left cell (4 x 8): the photo scaled to 4 x 2, centred
    assert (scene[:3, :4] == BACKGROUND).all() and (scene[5:, :4] == BACKGROUND).all()
    quad = np.asarray(compose_scene([Image.new("RGB", (2, 2), c) for c in COLOURS.values()][:4], 8))
    assert [tuple(quad[y, x]) for y, x in ((0, 0), (0, 7), (7, 0), (7, 7))] == list(COLOURS.values())[:4]
    with pytest.raises(ValueError, match="1 to 4 photos, got 5"):
        compose_scene([red] * 5, 8)


def test_split_and_plan_are_seeded_and_keep_classes_distinct(tmp_path):
    folder = read_photo_folder(_photo_folder(tmp_path / "photos"))
    assert folder.classes == sorted(COLOURS) and len(folder.photos["ant"]) == 5
    splits = split_photos(folder, 0.2, seed=3)
    for name in folder.classes:
        assert len(splits["val"][name]) == 1 and len(splits["train"][name]) == 4
        assert not set(splits["val"][name]) & set(splits["train"][name])
    assert split_photos(folder, 0.2, seed=3) == splits
    scenes = plan_scenes(splits["train"], 200, (0.1, 0.2, 0.3, 0.4), np.random.RandomState(0))
    assert scenes == plan_scenes(splits["train"], 200, (0.1, 0.2, 0.3, 0.4), np.random.RandomState(0))
    assert all(len({p.split("/")[0] for p in scene}) == len(scene) for scene in scenes)
    counts = np.bincount([len(scene) for scene in scenes], minlength=5)[1:]
    assert counts.sum() == 200 and counts[3] > counts[0]  # 40% of fours against 10% of singles
    with pytest.raises(ValueError, match="scenes of 4 photos need 4 classes"):
        plan_scenes({"ant": ["ant/a.jpg"], "bee": ["bee/b.jpg"]}, 1, (0, 0, 0, 1), np.random.RandomState(0))


def test_prepare_photos_writes_scenes_with_their_labels_and_the_plain_photos(tmp_path, capsys):
    photos = _photo_folder(tmp_path / "photos")
    assert _prepare("--photos", str(photos), "--out", str(tmp_path / "a"), "--train", "30", "--val", "10",
                    "--image-size", "16", "--no-progress") == 0
    assert "scenes: train 30 / val 10" in capsys.readouterr().err
    dataset = load_dataset(tmp_path / "a")
    sources = json.loads((tmp_path / "a" / "sources.json").read_text())
    for split in ("train", "val"):
        rows = dataset.split(split)
        planned = sources["scenes"][split]
        assert len(rows.images) == len(planned)
        expected = np.zeros((len(planned), len(COLOURS)))
        for i, scene in enumerate(planned):
            expected[i, [dataset.classes.index(p.split("/")[0]) for p in scene]] = 1
            with Image.open(rows.images[i]) as image:
                assert image.size == (16, 16)
        assert np.array_equal(rows.labels, expected)
        # One annotated positive a scene, drawn by the protocol over the split's rows in order.
        assert np.array_equal(rows.observed == 1, sample_single_positive(expected.astype(int)) == 1)
    used = {split: {p for scene in sources["scenes"][split] for p in scene} for split in ("train", "val")}
    assert used["train"] and used["val"] and not used["train"] & used["val"]  # no photo in both splits
    plain = load_dataset(tmp_path / "a" / "photos")
    assert len(plain.split("train").images) == 20 and len(plain.split("val").images) == 5
    val_photos = {"/".join(Path(p).parts[-2:]) for p in plain.split("val").images}
    assert val_photos >= used["val"] and not val_photos & used["train"]
    assert (plain.split("val").observed == 1).sum(axis=1).tolist() == [1] * 5

    # Deterministic: the same seed gives the same files, byte for byte; re-running in place is a no-op.
    assert _prepare("--photos", str(photos), "--out", str(tmp_path / "b"), "--train", "30", "--val", "10",
                    "--image-size", "16", "--no-progress") == 0
    for name in ("train.csv", "val.csv", "classes.txt", "photos/val.csv", "scenes/train/000007.jpg"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert _prepare("--photos", str(photos), "--out", str(tmp_path / "a"), "--train", "30", "--val", "10",
                    "--image-size", "16", "--no-progress") == 0
    assert _prepare("--photos", str(photos), "--out", str(tmp_path / "a"), "--train", "30", "--val", "10",
                    "--seed", "1", "--no-progress") == 1
    assert "already holds a different data set" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["single-positive", "single-label"])
def test_prepare_photos_train_photos_adds_every_training_photo_alone_to_train_only(tmp_path, capsys, mode):
    photos = _photo_folder(tmp_path / "photos")
    common = ("--photos", str(photos), "--train", "30", "--val", "10", "--image-size", "16", "--no-progress")
    assert _prepare(*common, "--out", str(tmp_path / "scenes")) == 0
    assert _prepare(*common, "--out", str(tmp_path / "both"), "--train-photos", mode) == 0
    assert f"train 30 and every training photo alone ({mode}) / val 10" in capsys.readouterr().err
    train = load_dataset(tmp_path / "both").split("train")
    assert len(train.images) == 30 + 20  # the 30 scenes, then the 4 training photos of each of 5 classes
    # The scenes are the same rows (each class unknown but its positive) and the same files as without the option.
    scenes = load_dataset(tmp_path / "scenes").split("train")
    assert np.array_equal(train.labels[:30], scenes.labels) and np.array_equal(train.observed[:30], scenes.observed)
    assert (tmp_path / "both" / "scenes/train/000007.jpg").read_bytes() == \
        (tmp_path / "scenes" / "scenes/train/000007.jpg").read_bytes()
    plain = load_dataset(tmp_path / "both" / "photos").split("train")
    # The photos themselves (through the link), each with its one label observed; the other classes unknown
    # (single-positive) or known absent (single-label: -1 everywhere but the label).
    assert [Path(p).resolve() for p in train.images[30:]] == [Path(p).resolve() for p in plain.images]
    assert all(Path(p).resolve().parent.parent == photos.resolve() for p in train.images[30:])
    assert np.array_equal(train.labels[30:], plain.labels)
    others = 0 if mode == "single-positive" else -1
    assert np.array_equal(train.observed[30:], np.where(plain.labels == 1, 1, others))
    assert (tmp_path / "both" / "val.csv").read_text().splitlines()[1:] == \
        [line + ("," if mode == "single-label" else "")
         for line in (tmp_path / "scenes" / "val.csv").read_text().splitlines()[1:]]
    assert load_dataset(tmp_path / "both").split("val").observed.tolist() == \
        load_dataset(tmp_path / "scenes").split("val").observed.tolist()
    assert json.loads((tmp_path / "both" / "sources.json").read_text())["train_photos"] == mode


def test_prepare_photos_errors_name_the_problem(tmp_path, capsys):
    assert _prepare("--photos", str(tmp_path / "missing"), "--out", str(tmp_path / "out")) == 1
    assert "missing: not a directory" in capsys.readouterr().err
    (tmp_path / "one" / "ant").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "one" / "ant" / "a.png")
    assert _prepare("--photos", str(tmp_path / "one"), "--out", str(tmp_path / "out")) == 1
    assert "found 1 class folder(s) with images; scenes need at least 2" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@needs_shared_photos
def test_the_shared_photos_are_an_image_folder_of_35_classes():
    folder = read_photo_folder(SHARED_PHOTOS)
    assert len(folder.classes) == 35 and sum(map(len, folder.photos.values())) == 7342
    splits = split_photos(folder, 0.2, seed=0)
    assert sum(map(len, splits["val"].values())) == 1467  # round(0.2 n) per class
