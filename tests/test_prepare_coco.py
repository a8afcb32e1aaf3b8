"""``train prepare coco --instances FILE --images DIR``: one COCO-format annotated set split by photo.

A small COCO-format set is written here (real JPEGs, COCO's gapped category ids, boxes); the split,
the protocol's positives and the boxes are re-derived with explicit calls, not with the code under test.
"""

import argparse
import csv
import json

import numpy as np
import pytest
from conftest import COCO_CATEGORIES as CATEGORIES
from conftest import SHARED_COCO, needs_shared_coco
from conftest import make_coco_set as _coco_set

from spml.data import load_dataset
from train.prepare import add_prepare_arguments, run_prepare


def _prepare(*argv):
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser.add_subparsers(dest="command"))
    return run_prepare(parser.parse_args(["prepare", "coco", *argv, "--no-progress"]))


def _rows(out, split):
    with (out / f"{split}.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _truth(data):
    """File name -> labels in category order, from the annotations."""
    names = {c["id"]: c["name"] for c in CATEGORIES}
    order = [c["name"] for c in CATEGORIES]
    labels = {}
    for image in data["images"]:
        present = {names[a["category_id"]] for a in data["annotations"] if a["image_id"] == image["id"]}
        labels[image["file_name"]] = [n for n in order if n in present]
    return labels


def test_split_positives_and_boxes(tmp_path):
    data = _coco_set(tmp_path / "coco")
    out = tmp_path / "data"
    assert _prepare("--instances", str(tmp_path / "coco" / "instances.json"), "--images",
                    str(tmp_path / "coco" / "images"), "--out", str(out)) == 0
    assert (out / "classes.txt").read_text().splitlines() == [c["name"] for c in CATEGORIES]
    assert (out / "images").is_symlink() and (out / "images").resolve() == (tmp_path / "coco" / "images").resolve()
    truth = _truth(data)
    files = sorted(truth)
    # 20 photos: val round(0.1 * 20) = 2, test 4, train the other 14, from one seeded permutation.
    order = np.random.default_rng(0).permutation(20)
    expected = {"train": sorted(order[:14]), "val": sorted(order[14:16]), "test": sorted(order[16:])}
    classes = [c["name"] for c in CATEGORIES]
    for split, index in expected.items():
        rows = _rows(out, split)
        assert [r["image"] for r in rows] == [f"images/{files[i]}" for i in index]
        for row in rows:  # every split keeps every label
            assert row["labels"].split(";") == truth[row["image"].removeprefix("images/")]
        # One positive a photo, drawn by the protocol over the split's rows (a fresh RandomState(1200)).
        rng = np.random.RandomState(1200)
        for row in rows:
            positives = np.array([classes.index(n) for n in row["labels"].split(";")])
            negatives = np.array([j for j in range(4) if j not in positives])
            rng.shuffle(positives)
            rng.shuffle(negatives)
            assert row["positive"] == classes[positives[0]]
    with (out / "boxes.csv").open(newline="", encoding="utf-8") as handle:
        boxes = list(csv.DictReader(handle))
    assert len(boxes) == len(data["annotations"])
    first = boxes[0]  # photo 0: person at [0, 1.5, 10, 8.25] -> x1 = 10, y1 = 9.75
    assert (first["image"], first["class"]) == ("images/000000001000.jpg", "person")
    assert [float(first[k]) for k in ("x0", "y0", "x1", "y1")] == [0.0, 1.5, 10.0, 9.75]
    dataset = load_dataset(out)
    assert [len(dataset.split(s)) for s in ("train", "val", "test")] == [14, 2, 4]
    assert (dataset.split("train").observed.sum(axis=1) == 1).all()
    # The same command again is a no-op; another seed is another split, refused over this one.
    assert _prepare("--instances", str(tmp_path / "coco" / "instances.json"), "--images",
                    str(tmp_path / "coco" / "images"), "--out", str(out)) == 0
    assert _prepare("--instances", str(tmp_path / "coco" / "instances.json"), "--images",
                    str(tmp_path / "coco" / "images"), "--out", str(out), "--seed", "1") == 1


def test_partial(tmp_path):
    _coco_set(tmp_path / "coco")
    common = ["--instances", str(tmp_path / "coco" / "instances.json"), "--images", str(tmp_path / "coco" / "images")]
    assert _prepare(*common, "--out", str(tmp_path / "half"), "--partial", "0.5") == 0
    assert _prepare(*common, "--out", str(tmp_path / "all"), "--partial", "1") == 0
    rows = [r for split in ("train", "val", "test") for r in _rows(tmp_path / "half", split)]
    kept = [len(r["positive"].split(";")) for r in rows]
    labels = [len(r["labels"].split(";")) for r in rows]
    assert all(1 <= k <= n for k, n in zip(kept, labels, strict=True))
    assert sum(kept) < sum(labels)  # 0.5 leaves labels out ...
    for split in ("train", "val", "test"):  # ... 1 keeps every one
        assert all(r["positive"] == r["labels"] for r in _rows(tmp_path / "all", split))
    assert _prepare(*common, "--out", str(tmp_path / "bad"), "--partial", "1.5") == 1


@pytest.mark.parametrize("break_it, named", [
    (lambda root, data: data["annotations"].append(
        {"id": 999, "image_id": 1003, "category_id": 42, "bbox": [0, 0, 4, 4]}), "unknown category_id 42"),
    (lambda root, data: (root / "images" / "000000001004.jpg").unlink(), "missing image file '000000001004.jpg'"),
    (lambda root, data: (root / "images" / "000000001005.jpg").write_bytes(b"\xff\xd8not a jpeg"),
     "000000001005.jpg"),
    (lambda root, data: data.update(annotations=[a for a in data["annotations"] if a["image_id"] != 1006]),
     "image 1006 (000000001006.jpg) has no annotation"),
    (lambda root, data: data["annotations"][0].update(bbox=[0, 0, -3, 4]), "negative width or height"),
])
def test_bad_entries_are_named_or_skipped(tmp_path, capsys, break_it, named):
    root = tmp_path / "coco"
    data = _coco_set(root)
    break_it(root, data)
    (root / "instances.json").write_text(json.dumps(data))
    common = ["--instances", str(root / "instances.json"), "--images", str(root / "images")]
    assert _prepare(*common, "--out", str(tmp_path / "strict")) == 1
    assert named in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()  # nothing written on an error
    assert _prepare(*common, "--out", str(tmp_path / "lenient"), "--skip-bad") == 0
    err = capsys.readouterr().err
    assert "left out 1 bad entries" in err and named in err
    photos = sum(len(_rows(tmp_path / "lenient", s)) for s in ("train", "val", "test"))
    assert photos == (20 if "category" in named or "width" in named else 19)


def test_needs_root_or_instances(tmp_path, capsys):
    assert _prepare("--out", str(tmp_path / "x")) == 1
    assert "--instances FILE with --images DIR" in capsys.readouterr().err
    assert _prepare("--instances", str(tmp_path / "none.json"), "--images", str(tmp_path), "--out",
                    str(tmp_path / "x")) == 1
    assert "none.json: not found" in capsys.readouterr().err


@needs_shared_coco
def test_shared_coco(tmp_path):
    out = tmp_path / "coco"
    assert _prepare("--instances", str(SHARED_COCO / "instances.json"), "--images", str(SHARED_COCO / "images"),
                    "--out", str(out)) == 0
    dataset = load_dataset(out)
    sizes = [len(dataset.split(s)) for s in ("train", "val", "test")]
    assert sum(sizes) == 2149 and sizes == [1504, 215, 430]
    assert len(dataset.classes) == 80
    person = dataset.classes.index("person")
    for split in ("train", "val", "test"):
        assert (dataset.split(split).labels[:, person] == 1).all()  # the README: every photo shows a person
    with (out / "boxes.csv").open(encoding="utf-8") as handle:
        assert sum(1 for _ in handle) - 1 == 20726
