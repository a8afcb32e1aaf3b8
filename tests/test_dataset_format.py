"""The generic data set format: writing, loading, protocol positives and split, errors, ImageDataset."""

import csv
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from spml.data import (
    DatasetError,
    ImageDataset,
    ImageLoadError,
    Row,
    eval_transform,
    load_dataset,
    protocol_split,
    sample_single_positive,
    weak_transform,
    write_dataset,
)
from spml.data.dataset import BrokenImage, SkipBrokenImages, collate_skipping_broken

CLASSES = ["cat", "dog", "dining table", "potted, plant"]


def _images(root, names):
    (root / "img").mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (6, 5), (200, 10, 10)).save(root / "img" / name)


def _write_csv(path, header, rows):
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _labels_for(i):
    # Deterministic varied labels over CLASSES, some rows with several.
    return [c for j, c in enumerate(CLASSES) if (i >> j) & 1] or ["cat"]


@pytest.fixture
def full_dataset(tmp_path):
    """12 training images with several labels each, no positive column, no val.csv, a test.csv of 3."""
    root = tmp_path / "ds"
    names = [f"{i:02d}.png" for i in range(15)]
    _images(root, names)
    rows = {
        "train": [Row(f"img/{names[i]}", _labels_for(i)) for i in range(12)],
        "test": [Row(f"img/{names[i]}", _labels_for(i)) for i in range(12, 15)],
    }
    write_dataset(root, CLASSES, rows)
    return root


def test_without_positive_column_every_label_is_observed(full_dataset):
    ds = load_dataset(full_dataset)
    labels = np.array([[int(c in _labels_for(i)) for c in CLASSES] for i in range(12)], dtype=np.uint8)
    train_idx, val_idx = protocol_split(12)
    train, val = ds.split("train"), ds.split("val")
    np.testing.assert_array_equal(train.observed, labels[train_idx])
    np.testing.assert_array_equal(val.observed, labels[val_idx])
    assert train.observed.dtype == np.int8 and train.observed.sum() == labels[train_idx].sum()
    assert (train.observed.sum(1) > 1).any()  # several observed labels per row
    assert not train.has_hidden_labels and not ds.split("test").has_hidden_labels


def test_round_trip_and_protocol_positives(full_dataset):
    ds = load_dataset(full_dataset, single_positive=True)
    assert ds.classes == CLASSES and set(ds.splits) == {"train", "val", "test"}
    labels = np.array([[int(c in _labels_for(i)) for c in CLASSES] for i in range(12)], dtype=np.uint8)
    drawn = sample_single_positive(labels)  # over all of train.csv, before the split
    train_idx, val_idx = protocol_split(12)
    train, val = ds.split("train"), ds.split("val")
    assert (len(train), len(val)) == (10, 2)
    np.testing.assert_array_equal(train.labels, labels[train_idx])
    np.testing.assert_array_equal(train.observed, drawn[train_idx])
    np.testing.assert_array_equal(val.observed, drawn[val_idx])
    assert train.images == [full_dataset / f"img/{i:02d}.png" for i in train_idx]
    assert train.rows == [int(i) + 2 for i in train_idx]  # header is line 1
    assert train.labels.dtype == np.uint8 and train.observed.dtype == np.int8
    assert train.has_hidden_labels
    test = ds.split("test")
    test_labels = np.array([[int(c in _labels_for(i)) for c in CLASSES] for i in range(12, 15)])
    np.testing.assert_array_equal(test.observed, sample_single_positive(test_labels))  # own draw, seed 1200


def test_several_positives_in_the_positive_column(tmp_path):
    root = tmp_path / "ds"
    _images(root, ["a.png", "b.png", "c.png"])
    rows = [
        Row("img/a.png", ["cat", "dog", "dining table"], positive=["cat", "dining table"]),
        Row("img/b.png", ["cat", "dog"], positive="dog"),
        Row("img/c.png", ["dog"], positive=[]),
    ]
    write_dataset(root, CLASSES, {"train": rows, "val": rows})
    assert (root / "train.csv").read_text().splitlines() == [
        "image,labels,positive",
        "img/a.png,cat;dog;dining table,cat;dining table",
        "img/b.png,cat;dog,dog",  # one name is written as before: prepared benchmark files do not change
        "img/c.png,dog,",
    ]
    train = load_dataset(root).split("train")
    np.testing.assert_array_equal(train.observed, [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(train.labels, [[1, 1, 1, 0], [1, 1, 0, 0], [0, 1, 0, 0]])
    assert train.has_hidden_labels
    with pytest.raises(DatasetError, match="train.csv: has a positive column"):
        load_dataset(root, single_positive=True)
    with pytest.raises(ValueError, match="positive 'potted, plant' is not among its labels"):
        bad = Row("img/a.png", ["cat"], positive=["cat", "potted, plant"])
        write_dataset(tmp_path / "x", CLASSES, {"train": [bad]})


def test_names_with_spaces_and_commas_survive_csv_quoting(full_dataset):
    text = (full_dataset / "train.csv").read_text()
    assert '"potted, plant' in text
    assert (full_dataset / "classes.txt").read_text().splitlines() == CLASSES


def test_positive_and_negatives_columns(tmp_path):
    root = tmp_path / "ds"
    _images(root, ["a.png", "b.png", "c.png"])
    rows = [
        Row("img/a.png", ["cat", "dog"], positive="dog", negatives=["dining table"]),
        Row("img/b.png", ["cat"], positive="cat"),
        Row("img/c.png", [], positive=None),  # NUS-WIDE keeps images without labels
    ]
    write_dataset(root, CLASSES, {"train": rows, "val": rows[:1]})
    header = (root / "train.csv").read_text().splitlines()[0]
    assert header == "image,labels,positive,negatives"
    train = load_dataset(root).split("train")
    np.testing.assert_array_equal(train.observed, [[0, 1, -1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(train.labels, [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert train.has_hidden_labels  # 'cat' on the first row is known beyond its positive


def test_single_positive_only_data_set_has_no_hidden_labels(tmp_path):
    root = tmp_path / "ds"
    _images(root, ["a.png", "b.png"])
    rows = [Row("img/a.png", ["dog"], positive="dog"), Row("img/b.png", ["cat"], positive="cat")]
    write_dataset(root, CLASSES, {"train": rows, "val": rows})
    assert not load_dataset(root).split("train").has_hidden_labels


def _bad(tmp_path, header, rows, classes=("cat", "dog")):
    root = tmp_path / "bad"
    _images(root, ["a.png", "b.png"])
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    _write_csv(root / "train.csv", header, rows)
    return root


@pytest.mark.parametrize(
    ("header", "rows", "needle"),
    [
        (["image", "labels"], [["img/a.png", "cat"], ["img/b.png", "xyz"]], "unknown class 'xyz'"),
        (["image", "labels"], [["img/a.png", "cat"], ["img/missing.png", "dog"]], "missing image file"),
        (["image", "labels"], [["img/a.png", "cat"], ["img/b.png", "cat", "extra"]], "malformed line"),
        (["image", "labels", "positive"], [["img/a.png", "cat"], ["img/b.png", "cat", "dog"]], "not among"),
        (["image", "labels", "positive"], [["img/a.png", "cat"], ["img/b.png", "cat", "cat;dog"]],
         "positive 'dog' is not among the row's labels"),
        (["image", "labels", "negatives"], [["img/a.png", "cat", ""], ["img/b.png", "cat", "cat"]], "both"),
    ],
)
def test_bad_row_names_file_line_and_problem(tmp_path, header, rows, needle):
    if len(rows[0]) < len(header):
        rows[0] = rows[0] + [""] * (len(header) - len(rows[0]))
    root = _bad(tmp_path, header, rows)
    with pytest.raises(DatasetError) as error:
        load_dataset(root)
    message = str(error.value)
    assert "train.csv" in message and "line 3" in message and needle in message
    skipped = load_dataset(root, skip_bad=True).split("train")
    # 2 rows, 1 bad: protocol_split(1) keeps the single good row in train.
    assert len(skipped.skipped) == 1 and needle in skipped.skipped[0] and len(skipped) == 1


def test_unknown_class_lists_known_classes(tmp_path):
    root = _bad(tmp_path, ["image", "labels"], [["img/a.png", "cat;zebra"]])
    with pytest.raises(DatasetError, match=r"unknown class 'zebra' in labels \(known: cat, dog\)"):
        load_dataset(root)


def test_missing_column_and_duplicate_class(tmp_path):
    root = _bad(tmp_path, ["image", "tags"], [["img/a.png", "cat"]])
    with pytest.raises(DatasetError, match=r"train.csv, line 1: missing column 'labels'"):
        load_dataset(root)
    root = _bad(tmp_path, ["image", "labels"], [["img/a.png", "cat"]], classes=("cat", "dog", "cat"))
    with pytest.raises(DatasetError, match=r"classes.txt, line 3: duplicate class name 'cat'"):
        load_dataset(root)


def test_check_images_off_accepts_missing_files(tmp_path):
    root = _bad(tmp_path, ["image", "labels"], [["img/nope.png", "cat"], ["img/a.png", "dog"]])
    assert len(load_dataset(root, check_images=False).split("train")) == 2


def test_unknown_split_lists_available(full_dataset):
    with pytest.raises(DatasetError, match=r"no split 'holdout' \(available: train, val, test\)"):
        load_dataset(full_dataset).split("holdout")


def test_write_refuses_a_different_data_set(full_dataset):
    rows = {"train": [Row("img/00.png", ["cat"])]}
    with pytest.raises(FileExistsError):
        write_dataset(full_dataset, CLASSES, rows)
    write_dataset(full_dataset, CLASSES, rows, overwrite=True)
    assert not (full_dataset / "test.csv").exists()  # a stale split would change the data set
    write_dataset(full_dataset, CLASSES, rows)  # identical: fine
    with pytest.raises(ValueError, match="unknown classes"):
        write_dataset(full_dataset, CLASSES, {"train": [Row("img/00.png", ["cow"])]}, overwrite=True)


def test_image_dataset_items_and_workers(full_dataset):
    split = load_dataset(full_dataset).split("train")
    dataset = ImageDataset(split, weak_transform(16), strong_transform=eval_transform(16))
    item = dataset[0]
    assert item["image"].shape == (3, 16, 16) and item["strong"].shape == (3, 16, 16)
    assert item["labels"].dtype == torch.float32 and item["observed"].dtype == torch.int8
    assert item["index"] == 0 and torch.equal(item["labels"], torch.from_numpy(split.labels[0]).float())
    pickle.loads(pickle.dumps(dataset))  # spawn-started workers need this
    batch = next(iter(DataLoader(dataset, batch_size=4, num_workers=1)))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["observed"].shape == (4, len(CLASSES))
    assert "strong" not in ImageDataset(split, eval_transform(16))[0]


def test_image_dataset_names_a_broken_image(full_dataset):
    split = load_dataset(full_dataset).split("train")
    split.images[0].write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match=str(split.images[0].name)):
        ImageDataset(split, eval_transform(16))[0]


def test_skip_broken_images_hands_the_broken_ones_to_the_caller(full_dataset):
    """One wrapper for the trainer and the audit: a broken image becomes a BrokenImage naming it, the
    collate drops it from the batch and returns it; a batch of broken images only is None."""
    split = load_dataset(full_dataset).split("train")
    split.images[1].write_bytes(b"not an image")
    items = SkipBrokenImages(ImageDataset(split, eval_transform(16)))
    broken = items[1]
    assert isinstance(broken, BrokenImage) and broken.index == 1 and split.images[1].name in broken.message
    assert items[0]["size"].tolist() == [6, 5]  # the file's own (width, height)
    batch, dropped = collate_skipping_broken([items[0], items[1], items[2]])
    assert batch["index"].tolist() == [0, 2] and batch["image"].shape == (2, 3, 16, 16)
    assert dropped == [broken]
    assert collate_skipping_broken([broken]) == (None, [broken])
