"""``train prepare``: fake downloads in the exact upstream layouts, checked against the protocol.

The expected single positives and split are re-derived here with explicit ``RandomState`` calls, not
with the functions under test.
"""

import argparse
import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from spml.data import load_dataset
from train.prepare import NUSWIDE_CLASSES, VOC_CLASSES, add_prepare_arguments, run_prepare

_JPEG = io.BytesIO()
Image.new("RGB", (4, 4), (90, 30, 30)).save(_JPEG, format="JPEG")


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_JPEG.getvalue())


def _prepare(*argv):
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser.add_subparsers(dest="command"))
    return run_prepare(parser.parse_args(["prepare", *argv, "--no-progress"]))


def _protocol_positives(labels):
    """Re-derivation of the protocol's draw: one RandomState(1200), shuffle positives then negatives."""
    rng = np.random.RandomState(1200)
    chosen = []
    for row in labels:
        positives = np.array([j for j, v in enumerate(row) if v == 1], dtype=np.int64)
        negatives = np.array([j for j, v in enumerate(row) if v != 1], dtype=np.int64)
        rng.shuffle(positives)
        rng.shuffle(negatives)
        chosen.append(int(positives[0]) if len(positives) else None)
    return chosen


def _protocol_split(n):
    n_val = int(round(0.2 * n))
    perm = np.random.RandomState(1200).permutation(n)
    return sorted(perm[: n - n_val].tolist()), sorted(perm[n - n_val :].tolist())


def _read(out, split):
    with (out / f"{split}.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _check(out, classes, train_images, train_labels, test_images, test_labels):
    """The written data set is the protocol's: order, labels, positives, split, and it loads."""
    assert (out / "classes.txt").read_text().splitlines() == classes
    assert (out / "images").is_symlink()  # images are linked, not copied
    positives = _protocol_positives(train_labels)
    train_idx, val_idx = _protocol_split(len(train_images))
    test_positives = _protocol_positives(test_labels)  # a fresh RandomState(1200) for the test split
    expected = {
        "train": [(train_images[i], train_labels[i], positives[i]) for i in train_idx],
        "val": [(train_images[i], train_labels[i], positives[i]) for i in val_idx],
        "test": [(test_images[i], test_labels[i], test_positives[i]) for i in range(len(test_images))],
    }
    for split, rows in expected.items():
        written = _read(out, split)
        assert len(written) == len(rows), split
        for row, (image, labels, positive) in zip(written, rows, strict=True):
            assert row["image"] == f"images/{image}"
            names = row["labels"].split(";") if row["labels"] else []
            assert names == [classes[j] for j, v in enumerate(labels) if v]
            assert row["positive"] == ("" if positive is None else classes[positive])
    dataset = load_dataset(out)
    assert [len(dataset.split(s)) for s in ("train", "val", "test")] == [len(v) for v in expected.values()]
    return dataset


def test_voc(tmp_path):
    root = tmp_path / "voc"
    main = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = {
        "train": ["2008_000123", "2007_000032", "2009_000001", "2008_000002", "2010_000400", "2007_000999",
                  "2011_000005", "2008_000050", "2012_000001", "2009_000777", "2007_000010", "2008_000666"],
        "val": ["2008_000300", "2007_000500", "2011_000100", "2010_000010", "2009_000020"],
    }  # fmt: skip
    truth = {}
    for split, names in ids.items():
        labels = (rng.random((len(names), 20)) < 0.12).astype(int)
        labels[np.arange(len(names)), rng.integers(0, 20, len(names))] = 1
        if split == "train":
            labels[-1] = 0  # 2008_000666: only difficult or negative entries, so not in the split
        for c, name in enumerate(VOC_CLASSES):
            lines = []
            for i, image in enumerate(names):
                value = 1 if labels[i, c] else (0 if (i + c) % 5 == 0 else -1)  # 0 = difficult
                lines.append(f"{image}  {value}" if value >= 0 else f"{image} {value}")
            (main / f"{name}_{split}.txt").write_text("\n".join(lines) + "\n")
        for image in names:
            _image(root / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{image}.jpg")
        kept = sorted(i for i in range(len(names)) if labels[i].any())
        kept.sort(key=lambda i: names[i])
        truth[split] = ([f"{names[i]}.jpg" for i in kept], labels[kept])
    out = tmp_path / "out"
    assert _prepare("voc", "--root", str(root), "--out", str(out)) == 0
    assert "2008_000666.jpg" not in (out / "train.csv").read_text() + (out / "val.csv").read_text()
    dataset = _check(out, VOC_CLASSES, *truth["train"], *truth["val"])
    assert [len(dataset.split(s)) for s in ("train", "val", "test")] == [9, 2, 5]  # 11 -> round(2.2) = 2
    assert _prepare("voc", "--root", str(root), "--out", str(out)) == 0  # same data set again: fine


def test_coco(tmp_path):
    root = tmp_path / "coco"
    categories = [{"id": 7, "name": "zebra"}, {"id": 2, "name": "apple"}, {"id": 90, "name": "traffic light"}]
    annotated = {"train": [9, 10, 100, 2, 25, 1000, 3], "val": [4, 40, 400]}
    rng = np.random.default_rng(1)
    truth = {}
    for split, ids in annotated.items():
        annotations, labels = [], {}
        for image_id in ids:
            cats = rng.choice([7, 2, 90], size=int(rng.integers(1, 4)), replace=True)
            for cat in cats:
                annotations.append({"id": len(annotations), "image_id": image_id, "category_id": int(cat)})
            labels[image_id] = [int(c in cats) for c in (7, 2, 90)]
        images = [{"id": i, "file_name": f"COCO_{split}2014_{i:012d}.jpg"} for i in [*ids, 55]]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        document = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(document))
        for i in [*ids, 55]:
            _image(root / f"{split}2014" / f"COCO_{split}2014_{i:012d}.jpg")
        order = sorted(str(i) for i in ids)  # 55 has no annotation: left out
        truth[split] = (
            [f"{split}2014/COCO_{split}2014_{int(i):012d}.jpg" for i in order],
            np.array([labels[int(i)] for i in order]),
        )
    assert truth["train"][0][:3] == [f"train2014/COCO_train2014_{i:012d}.jpg" for i in (10, 100, 1000)]
    out = tmp_path / "out"
    assert _prepare("coco", "--root", str(root), "--out", str(out)) == 0
    _check(out, ["zebra", "apple", "traffic light"], *truth["train"], *truth["val"])


def _nuswide_tree(base, image_root, rows=10, val_rows=4):
    rng = np.random.default_rng(2)
    for split, n in (("train", rows), ("val", val_rows)):
        labels = (rng.random((n, 81)) < 0.04).astype(np.float64)
        labels[::3] = 0  # rows without any label are kept
        labels[1, 5] = 1
        images = np.array([f"concept{i % 3}/{split}_{i:04d}_{1000 + i}.jpg" for i in range(n)])
        np.save(base / f"formatted_{split}_labels.npy", labels)
        np.save(base / f"formatted_{split}_images.npy", images)
        for name in images:
            _image(image_root / name)


def test_nuswide(tmp_path):
    root = tmp_path / "nus"
    root.mkdir()
    _nuswide_tree(root, root / "Flickr")
    out = tmp_path / "out"
    assert _prepare("nuswide", "--root", str(root), "--out", str(out)) == 0
    train_labels = np.load(root / "formatted_train_labels.npy")
    val_labels = np.load(root / "formatted_val_labels.npy")
    train_images = [str(p) for p in np.load(root / "formatted_train_images.npy")]
    val_images = [str(p) for p in np.load(root / "formatted_val_images.npy")]
    dataset = _check(out, NUSWIDE_CLASSES, train_images, train_labels, val_images, val_labels)
    train = dataset.split("train")
    assert (train.observed.sum(1) == (train.labels.sum(1) > 0)).all()  # no positive where no label


def test_nuswide_files_in_parent_and_concepts_file(tmp_path):
    base = tmp_path / "nus"
    root = base / "data"
    root.mkdir(parents=True)
    _nuswide_tree(base, root / "Flickr", rows=5, val_rows=2)
    names = [f"concept {i}" for i in range(81)]
    (base / "Concepts81.txt").write_text("\n".join(names) + "\n")
    out = tmp_path / "out"
    assert _prepare("nuswide", "--root", str(root), "--out", str(out)) == 0
    assert load_dataset(out).classes == names


def test_cub(tmp_path):
    root = tmp_path / "cub"
    cub = root / "CUB_200_2011"
    (cub / "attributes").mkdir(parents=True)
    attributes = ["has_bill_shape::curved_(up_or_down)", "has_bill_shape::dagger", "has_wing_color::blue",
                  "has_size::small_(5_-_9_in)", "has_primary_color::red"]  # fmt: skip
    (root / "attributes.txt").write_text("".join(f"{i + 1} {a}\n" for i, a in enumerate(attributes)))
    files = [f"{(i % 3) + 1:03d}.Bird_{i % 3}/Bird_{i:04d}.jpg" for i in range(9)]
    is_train = [1, 0, 1, 1, 0, 1, 0, 1, 1]
    (cub / "images.txt").write_text("".join(f"{i + 1} {f}\n" for i, f in enumerate(files)))
    (cub / "train_test_split.txt").write_text("".join(f"{i + 1} {t}\n" for i, t in enumerate(is_train)))
    labels = (np.random.default_rng(3).random((9, 5)) < 0.4).astype(int)
    labels[3] = 0  # a training image with no attribute present
    lines = []
    for i in range(9):
        for j in range(5):
            extra = " 27.3" if (i, j) == (2, 1) else ""  # the release has a few lines with an extra field
            lines.append(f"{i + 1} {j + 1} {labels[i, j]} 3{extra} 0.0\n")
    (cub / "attributes" / "image_attribute_labels.txt").write_text("".join(lines))
    for f in files:
        _image(cub / "images" / f)
    out = tmp_path / "out"
    assert _prepare("cub", "--root", str(root), "--out", str(out)) == 0
    train = [i for i in range(9) if is_train[i]]
    test = [i for i in range(9) if not is_train[i]]
    _check(out, attributes, [files[i] for i in train], labels[train], [files[i] for i in test], labels[test])


def test_layout_errors_name_the_missing_file(tmp_path, capsys):
    out = tmp_path / "out"
    assert _prepare("voc", "--root", str(tmp_path), "--out", str(out)) == 1
    assert "VOCdevkit/VOC2012" in capsys.readouterr().err
    (tmp_path / "CUB_200_2011").mkdir()
    assert _prepare("cub", "--root", str(tmp_path), "--out", str(out)) == 1
    assert "attributes.txt: not found" in capsys.readouterr().err
    assert _prepare("nuswide", "--root", str(tmp_path), "--out", str(out)) == 1
    assert "formatted_train_labels.npy" in capsys.readouterr().err
    assert not out.exists()


def test_missing_images_and_a_data_set_in_the_way(tmp_path, capsys):
    root = tmp_path / "coco"
    categories = [{"id": 1, "name": "a"}]
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        document = {"categories": categories, "annotations": [{"image_id": 5, "category_id": 1}]}
        (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(document))
        (root / f"{split}2014").mkdir()
    out = tmp_path / "out"
    assert _prepare("coco", "--root", str(root), "--out", str(out)) == 1
    assert "COCO_train2014_000000000005.jpg: not found (2 of 2 images" in capsys.readouterr().err
    for split in ("train", "val"):
        _image(root / f"{split}2014" / f"COCO_{split}2014_000000000005.jpg")
    synthetic = (
        "synthetic",
        "--out",
        str(out),
        "--train",
        "3",
        "--val",
        "0",
        "--test",
        "0",
        "--image-size",
        "32",
    )
    assert _prepare(*synthetic) == 0
    assert _prepare("coco", "--root", str(root), "--out", str(out)) == 1
    assert "different data set" in capsys.readouterr().err
    assert _prepare("coco", "--root", str(root), "--out", str(out), "--overwrite") == 1
    assert (
        "not a link" in capsys.readouterr().err
    )  # the synthetic world's real images/ folder is never deleted


def test_synthetic(tmp_path):
    out = tmp_path / "syn"
    argv = [
        "--out",
        str(out),
        "--seed",
        "3",
        "--train",
        "10",
        "--val",
        "0",
        "--test",
        "4",
        "--image-size",
        "32",
    ]
    assert _prepare("synthetic", *argv) == 0
    dataset = load_dataset(out)
    # No val.csv: train is split by the protocol, after positives are drawn over all of train.csv.
    assert [len(dataset.split(s)) for s in ("train", "val", "test")] == [8, 2, 4]
    with Image.open(dataset.split("test").images[0]) as image:
        assert image.size == (32, 32)


def test_synthetic_partial(tmp_path, capsys):
    out = tmp_path / "partial"
    argv = ["--out", str(out), "--seed", "1", "--train", "12", "--val", "3", "--test", "0", "--image-size", "16",
            "--partial", "0.6", "--no-progress"]
    assert _prepare("synthetic", *argv) == 0
    assert "partial labels kept with p = 0.6" in capsys.readouterr().err
    train = load_dataset(out).split("train")
    left_out = (out / "left_out.csv").read_text().splitlines()
    assert left_out[0] == "image,class"
    assert len(left_out) - 1 == int(((train.labels == 1) & (train.observed != 1)).sum())
    assert (train.observed.sum(1) >= 1).all()


@pytest.mark.parametrize("source", ["voc", "nuswide", "cub"])  # coco: --root or --instances (test_prepare_coco)
def test_root_is_required(source):
    with pytest.raises(SystemExit):
        _prepare(source, "--out", "x")
