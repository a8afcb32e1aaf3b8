"""Importers: COCO, VOC, YOLO and imagefolder data sets made here, converted, trained, audited and reviewed;
malformed input with the exact messages; layout detection."""

from __future__ import annotations

import csv
import json
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import yaml
from conftest import SHARED_PHOTOS, needs_shared_photos
from PIL import Image

from spml.__main__ import main as spml_main
from spml.audit import record_decision
from spml.data import load_dataset
from spml.data.importers import ConvertError, convert, convert_any, detect_format

CLASSES = ["cat", "dog", "traffic light"]
# Several labels on most images; the colours make the classes learnable in principle.
LABELS = [["cat", "dog"], ["dog"], ["cat", "traffic light"], ["traffic light"], ["cat", "dog", "traffic light"],
          ["dog", "traffic light"], ["cat"], ["cat", "dog"]]
COLOURS = {"cat": (220, 40, 40), "dog": (40, 200, 40), "traffic light": (40, 40, 220)}


def _image(path: Path, labels: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (24, 24), (128, 128, 128))
    for i, name in enumerate(labels):
        image.paste(COLOURS[name], (i * 8, 0, i * 8 + 8, 24))
    image.save(path)


COCO_JSON = "annotations/instances_train.json"


def make_coco(root: Path, labels=LABELS) -> Path:
    """annotations/instances_train.json and train/ as COCO lays them out; one image without annotations."""
    images, annotations = [], []
    for i, names in enumerate([*labels, []]):
        _image(root / "train" / f"{i:04d}.jpg", names)
        images.append({"id": 100 + i, "file_name": f"{i:04d}.jpg", "width": 24, "height": 24})
        for name in names:
            for _ in range(2 if name == "dog" else 1):  # two instances of a class: one label
                annotations.append({"id": len(annotations) + 1, "image_id": 100 + i,
                                    "category_id": 10 + CLASSES.index(name), "bbox": [0, 0, 8, 8]})
    # Categories in the JSON's own order, which is not sorted: the data set keeps it.
    categories = [{"id": 10 + i, "name": name} for i, name in enumerate(CLASSES)][::-1]
    (root / "annotations").mkdir(parents=True)
    path = root / "annotations" / "instances_train.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


def _voc_xml(filename: str, objects: list[tuple[str, int]]) -> str:
    body = "".join(f"<object><name>{name}</name><difficult>{difficult}</difficult>"
                   "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>8</xmax><ymax>8</ymax></bndbox></object>"
                   for name, difficult in objects)
    return f"<annotation><folder>VOC</folder><filename>{filename}</filename>{body}</annotation>"


def make_voc(root: Path, labels=LABELS) -> Path:
    for i, names in enumerate(labels):
        _image(root / "JPEGImages" / f"{i:04d}.jpg", names)
        objects = [(name, 0) for name in names] + ([("person", 1)] if i == 0 else [])  # difficult: not a label
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{i:04d}.xml").write_text(_voc_xml(f"{i:04d}.jpg", objects))
    return root


def make_yolo(root: Path, labels=LABELS, names_as_dict: bool = False) -> Path:
    names = {i: name for i, name in enumerate(CLASSES)} if names_as_dict else list(CLASSES)
    (root).mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val",
                                                    "names": names}))
    for i, label_names in enumerate(labels):
        split = "val" if i >= 6 else "train"
        _image(root / "images" / split / f"{i:04d}.png", label_names)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        lines = [f"{CLASSES.index(n)} 0.5 0.5 0.2 0.2" for n in label_names]
        (root / "labels" / split / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    _image(root / "images" / "train" / "background.png", [])  # no label file: a background image
    return root


def make_imagefolder(root: Path, labels=LABELS, kind: str = "jsonl") -> Path:
    rows = []
    for i, names in enumerate(labels):
        _image(root / "pictures" / f"{i:04d}.png", names)
        rows.append({"file_name": f"pictures/{i:04d}.png", "objects": names, "caption": f"image {i}"})
    if kind == "jsonl":
        (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        with (root / "metadata.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file_name", "objects", "caption"])
            writer.writerows([row["file_name"], json.dumps(row["objects"]), row["caption"]] for row in rows)
    return root


def make_class_folders(root: Path, names: list[str]) -> Path:
    """A tiny PNG at each relative path in ``names`` (one folder a class: nothing but the folder labels it)."""
    for name in names:
        if name.endswith(".txt"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text("not an image\n")
        else:
            _image(root / name, [])
    return root


def _loaded_labels(dataset: Path) -> dict[str, dict[str, list[str]]]:
    """split -> image (relative to the data set) -> class names, as load_dataset reads them."""
    data = load_dataset(dataset)
    return {name: {image.relative_to(data.root).as_posix(): [data.classes[i] for i in np.flatnonzero(row)]
                   for image, row in zip(split.images, split.labels, strict=True)}
            for name, split in data.splits.items()}




MAKERS = {
    "coco": (make_coco, lambda root: root / COCO_JSON),
    "voc": (make_voc, lambda root: root),
    "yolo": (make_yolo, lambda root: root),
    "imagefolder": (make_imagefolder, lambda root: root),
}


def _rows(dataset: Path, name: str = "train.csv") -> list[dict]:
    with (dataset / name).open(newline="") as handle:
        return list(csv.DictReader(handle))


def _annotated(dataset: Path) -> dict[str, set[str]]:
    return {row["image"]: set(row["labels"].split(";")) for name in ("train.csv", "val.csv")
            if (dataset / name).exists() for row in _rows(dataset, name)}


# --- end to end: convert, train, audit, review ---------------------------------------------------

@pytest.mark.parametrize("format", ["coco", "voc", "yolo", "imagefolder"])
def test_convert_train_audit_review_end_to_end(format, tmp_path, capsys):
    make, source_of = MAKERS[format]
    source = source_of(make(tmp_path / "source"))
    dataset = tmp_path / "dataset"
    assert spml_main(["convert", format, str(source), "--out", str(dataset)]) == 0
    printed = capsys.readouterr().out
    assert f"{format}: wrote {dataset}" in printed

    # The generic format with no positive column; images linked, not copied.
    header = (dataset / "train.csv").read_text().splitlines()[0]
    assert header == "image,labels"
    assert (dataset / "images").is_symlink() and not any(p.is_file() for p in dataset.glob("*.png"))
    classes = (dataset / "classes.txt").read_text().splitlines()
    assert classes == (CLASSES[::-1] if format == "coco" else CLASSES)  # COCO: the JSON's category order
    annotated = _annotated(dataset)
    assert sorted(map(sorted, annotated.values())) == sorted(map(sorted, LABELS))  # every label, no empty row
    data = load_dataset(dataset)
    for split in data.splits.values():
        np.testing.assert_array_equal(split.observed, split.labels)  # every label observed
        assert not split.has_hidden_labels

    from train.__main__ import main as train_main

    run = tmp_path / "run"
    assert train_main(["fit", "--data", str(dataset), "--loss", "calr", "--arch", "compact", "--out", str(run),
                       "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--no-pretrained",
                       "--device", "cpu", "--workers", "0", "--max-steps-per-epoch", "1",
                       "--warmup-epochs", "0"]) == 0
    report = tmp_path / "audit.csv"
    assert spml_main(["audit", "--checkpoint", str(run / "best"), "--data", str(dataset), "--split", "train",
                      "--out", str(report), "--batch-size", "4", "--device", "cpu"]) == 0
    rows = _rows(report.parent, report.name)
    data = load_dataset(dataset)
    relative = [p.relative_to(data.root).as_posix() for p in data.split("train").images]
    expected = {(image, name) for image in relative for name in classes if name not in annotated[image]}
    assert {(row["image"], row["class"]) for row in rows} == expected  # every unannotated pair, no annotated one
    for row in rows:
        assert set(row["positive"].split(";")) == annotated[row["image"]]  # all annotated positives, listed

    # Review: confirm the best suspect and export; the corrected CSV holds it as a label.
    best = rows[0]
    record_decision(report, best["image"], best["class"], "confirm")
    corrected = tmp_path / "corrected.csv"
    assert spml_main(["review-export", "--report", str(report), "--data", str(dataset), "--split", "train",
                      "--out", str(corrected)]) == 0
    out = {row["image"]: row["labels"].split(";") for row in _rows(corrected.parent, corrected.name)}
    assert set(out[best["image"]]) == annotated[best["image"]] | {best["class"]}


def test_several_labels_per_row_csv_trains_with_all_observed_and_audit_never_lists_them(tmp_path):
    """A plain image,labels CSV, as people write one: every label is annotated, in training and audit."""
    root = tmp_path / "own"
    for i, names in enumerate(LABELS):
        _image(root / "img" / f"{i}.png", names)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    with (root / "train.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "labels"])
        writer.writerows([f"img/{i}.png", ";".join(names)] for i, names in enumerate(LABELS))
    data = load_dataset(root)
    assert sum(len(s) for s in data.splits.values()) == len(LABELS)
    for split in data.splits.values():
        np.testing.assert_array_equal(split.observed, split.labels)
    single = load_dataset(root, single_positive=True)
    assert all((s.observed.sum(1) == 1).all() for s in single.splits.values())  # --single-positive: one each

    from train.__main__ import main as train_main

    run = tmp_path / "run"
    assert train_main(["fit", "--data", str(root), "--loss", "an", "--arch", "compact", "--out", str(run),
                       "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--no-pretrained",
                       "--device", "cpu", "--workers", "0", "--max-steps-per-epoch", "2"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["loss"] == "an"
    for name, flags in (("annotated", []), ("single", ["--single-positive"])):
        report = tmp_path / f"audit_{name}.csv"
        assert spml_main(["audit", "--checkpoint", str(run / "best"), "--data", str(root), "--split", "train",
                          "--out", str(report), "--device", "cpu", *flags]) == 0
        rows = _rows(tmp_path, report.name)
        annotated = {f"img/{i}.png": set(names) for i, names in enumerate(LABELS)}
        listed = {(row["image"], row["class"]) for row in rows}
        images = {row["image"] for row in rows}
        if flags:  # one drawn positive: the other labels of the image are candidates again
            assert any(name in annotated[image] for image, name in listed)
        else:
            assert images and not any(name in annotated[image] for image, name in listed)
            assert len(rows) == sum(len(CLASSES) - len(annotated[image]) for image in images)


# --- what the converters read ------------------------------------------------------------------------

def test_coco_images_without_annotations_are_left_out_and_counted(tmp_path):
    result = convert("coco", make_coco(tmp_path / "coco") / COCO_JSON, tmp_path / "out")
    assert result.unlabelled == 1 and result.images == {"train": len(LABELS)} and result.classes == 3
    assert "0008.jpg" not in (tmp_path / "out" / "train.csv").read_text()
    # The folder as SOURCE finds the one instances file; --images can name the folder.
    again = convert("coco", tmp_path / "coco", tmp_path / "out2", images=tmp_path / "coco" / "train")
    assert (again.out / "train.csv").read_text() == (result.out / "train.csv").read_text()


def test_voc_difficult_only_objects_are_not_labels(tmp_path):
    result = convert("voc", make_voc(tmp_path / "voc"), tmp_path / "out")
    assert (tmp_path / "out" / "classes.txt").read_text().splitlines() == CLASSES  # 'person' was only difficult
    assert result.images == {"train": len(LABELS)}


def test_yolo_names_as_mapping_and_splits(tmp_path):
    result = convert("yolo", make_yolo(tmp_path / "yolo", names_as_dict=True), tmp_path / "out")
    assert result.images == {"train": 6, "val": 2} and result.unlabelled == 1
    rows = _rows(tmp_path / "out", "val.csv")
    assert [row["image"] for row in rows] == ["images/val/0006.png", "images/val/0007.png"]
    assert [row["labels"] for row in rows] == ["cat", "cat;dog"]


def test_imagefolder_csv_metadata_and_in_place_images(tmp_path):
    root = make_imagefolder(tmp_path / "hf", kind="csv")
    result = convert("imagefolder", root, root / "converted")
    assert result.images == {"train": len(LABELS)}
    assert _rows(root / "converted")[0]["image"] == "images/pictures/0000.png"
    # A data set folder that holds the images names them directly, with no link.
    inside = convert("imagefolder", root, root, overwrite=True)
    assert _rows(inside.out)[0]["image"] == "pictures/0000.png" and not (root / "images").exists()
    assert load_dataset(root).split("train").images[0].is_file()


def test_imagefolder_class_folders_one_split(tmp_path, capsys):
    root = make_class_folders(tmp_path / "photos", [
        "cat/1.png", "cat/2.PNG", "cat/deeper/3.jpg",  # any case of suffix; nested images belong to the class
        "cat/notes.txt", "cat/.thumb.png", "cat/.cache/4.png",  # not an image, hidden file, hidden folder
        "dog/1.png", ".hidden/1.png", "empty/readme.txt",  # a hidden folder, a folder without images
        "loose.png",  # beside the class folders: no class, counted as unlabelled
    ])
    out = tmp_path / "out"
    assert spml_main(["convert", "imagefolder", str(root), "--out", str(out)]) == 0
    assert capsys.readouterr().out == (f"imagefolder: wrote {out} (2 classes; train 4 images)\n"
                                       "left out 1 images without any label\n")
    assert (out / "classes.txt").read_text() == "cat\ndog\n"
    assert (out / "train.csv").read_text() == ("image,labels\nimages/cat/1.png,cat\nimages/cat/2.PNG,cat\n"
                                               "images/cat/deeper/3.jpg,cat\nimages/dog/1.png,dog\n")
    # Round trip: no val.csv, so load_dataset splits train 80/20; every image keeps its folder's label.
    loaded = _loaded_labels(out)
    assert {image: labels for split in loaded.values() for image, labels in split.items()} == {
        "images/cat/1.png": ["cat"], "images/cat/2.PNG": ["cat"], "images/cat/deeper/3.jpg": ["cat"],
        "images/dog/1.png": ["dog"]}
    with pytest.raises(ConvertError, match=r"--column names a metadata column, but there is no metadata.jsonl"):
        convert("imagefolder", root, tmp_path / "out2", column="objects")


@pytest.mark.parametrize("validation", ["validation", "val"])
def test_imagefolder_class_folders_in_split_folders(tmp_path, validation):
    root = make_class_folders(tmp_path / "photos", [
        "train/cat/a.png", "train/dog/b.png", "train/dog/c.png", f"{validation}/cat/d.png",
        "test/dog/e.png", "test/bird/f.png", ".git/objects/x.png"])  # a hidden folder is not a split
    result = convert("imagefolder", root, tmp_path / "out")
    assert result.classes == 3 and result.images == {"train": 3, "val": 1, "test": 2} and result.unlabelled == 0
    assert (tmp_path / "out" / "classes.txt").read_text().splitlines() == ["bird", "cat", "dog"]
    assert _loaded_labels(tmp_path / "out") == {
        "train": {"images/train/cat/a.png": ["cat"], "images/train/dog/b.png": ["dog"],
                  "images/train/dog/c.png": ["dog"]},
        "val": {f"images/{validation}/cat/d.png": ["cat"]},
        "test": {"images/test/bird/f.png": ["bird"], "images/test/dog/e.png": ["dog"]},
    }


def test_imagefolder_metadata_takes_precedence_over_class_folders(tmp_path):
    root = make_imagefolder(tmp_path / "hf")  # its images lie in pictures/, which could pass for a class folder
    result = convert("imagefolder", root, tmp_path / "out")
    assert (tmp_path / "out" / "classes.txt").read_text().splitlines() == CLASSES
    assert result.images == {"train": len(LABELS)}


@needs_shared_photos
def test_imagefolder_converts_the_real_photo_folder(tmp_path):
    result = convert("imagefolder", SHARED_PHOTOS, tmp_path / "out")
    folders = sorted(p.name for p in SHARED_PHOTOS.iterdir() if p.is_dir())
    assert result.classes == len(folders) == 35 and result.images == {"train": 7342}
    assert (tmp_path / "out" / "classes.txt").read_text().splitlines() == folders
    rows = _rows(tmp_path / "out")
    assert len(rows) == 7342
    for row in rows:
        assert row["labels"] == PurePosixPath(row["image"]).parts[1]  # images/<class>/<photo>


# --- malformed input: exact messages, --skip-bad ------------------------------------------------------

def test_coco_bad_annotation_names_file_entry_and_problem(tmp_path, capsys):
    path = make_coco(tmp_path / "coco") / COCO_JSON
    data = json.loads(path.read_text())
    data["annotations"][1]["category_id"] = 99
    data["images"][2]["file_name"] = "missing.jpg"
    path.write_text(json.dumps(data))
    with pytest.raises(ConvertError) as error:
        convert("coco", path, tmp_path / "out")
    images = tmp_path / "coco" / "train"
    assert str(error.value) == f"{path}, images[2] (id 102): missing image file 'missing.jpg' in {images}"
    assert spml_main(["convert", "coco", str(path), "--out", str(tmp_path / "out"), "--skip-bad"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 2 bad entries:" in printed
    assert f"  {path}, annotations[1] (id 2): unknown category_id 99" in printed


def test_coco_malformed_json_and_missing_lists(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [}')
    assert spml_main(["convert", "coco", str(path), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"error: {path}: malformed JSON (line 1, column 13: Expecting value)\n"
    path.write_text('{"images": [], "annotations": []}')
    with pytest.raises(ConvertError, match=r"bad.json: not a COCO instances file \(no list 'categories'\)$"):
        convert("coco", path, tmp_path / "out")


def test_voc_malformed_and_hostile_xml(tmp_path):
    root = make_voc(tmp_path / "voc")
    bad = root / "Annotations" / "0003.xml"
    bad.write_text("<annotation><filename>0003.jpg</filename><object><name>cat</object></annotation>")
    with pytest.raises(ConvertError) as error:
        convert("voc", root, tmp_path / "out")
    assert str(error.value).startswith(f"{bad}: malformed XML (mismatched tag: line 1, column ")
    bad.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx"><!ENTITY y "&x;&x;&x;&x;">]>'
                   "<annotation><filename>0003.jpg</filename><object><name>&y;</name></object></annotation>")
    with pytest.raises(ConvertError) as error:
        convert("voc", root, tmp_path / "out")
    assert str(error.value) == f"{bad}: refused XML (EntitiesForbidden: entities or external references)"
    bad.write_text("<annotation><filename>0003.jpg</filename><object><pose>Left</pose></object></annotation>")
    with pytest.raises(ConvertError) as error:
        convert("voc", root, tmp_path / "out")
    assert str(error.value) == f"{bad}, object 1: no <name>"
    result = convert("voc", root, tmp_path / "out", skip_bad=True)
    assert result.images == {"train": len(LABELS) - 1} and result.skipped == [f"{bad}, object 1: no <name>"]


def test_yolo_bad_label_lines(tmp_path):
    root = make_yolo(tmp_path / "yolo")
    bad = root / "labels" / "train" / "0001.txt"
    bad.write_text("1 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.2 0.2\n")
    with pytest.raises(ConvertError) as error:
        convert("yolo", root, tmp_path / "out")
    assert str(error.value) == f"{bad}, line 2: class 5 is not in names (0..2)"
    bad.write_text("dog 0.5 0.5 0.2 0.2\n")
    with pytest.raises(ConvertError, match=r"0001.txt, line 1: expected 'class x y w h' with an integer class"):
        convert("yolo", root, tmp_path / "out")
    bad.write_text("1 0.5 0.5\n")
    with pytest.raises(ConvertError) as error:
        convert("yolo", root, tmp_path / "out")
    assert str(error.value) == f"{bad}, line 1: expected 'class x y w h', got 2 coordinates"
    (root / "data.yaml").write_text("train: images/train\n")
    with pytest.raises(ConvertError) as error:
        convert("yolo", root, tmp_path / "out")
    assert str(error.value) == f"{root / 'data.yaml'}: no names (the class names, a list or a mapping of id: name)"


def test_imagefolder_bad_rows(tmp_path):
    root = make_imagefolder(tmp_path / "hf")
    path = root / "metadata.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = json.dumps({"file_name": "pictures/nope.png", "objects": ["cat"]})
    lines[4] = "{not json"
    lines[5] = json.dumps({"file_name": "../outside.png", "objects": ["cat"]})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConvertError) as error:
        convert("imagefolder", root, tmp_path / "out")
    assert str(error.value) == f"{path}, line 5: malformed JSON (Expecting property name enclosed in double quotes)"
    result = convert("imagefolder", root, tmp_path / "out", skip_bad=True)
    assert result.skipped == [
        f"{path}, line 5: malformed JSON (Expecting property name enclosed in double quotes)",
        f"{path}, line 3: missing image file 'pictures/nope.png'",
        f"{path}, line 6, file_name: image path '../outside.png' must be relative and stay inside the image folder",
    ]
    assert result.images == {"train": len(LABELS) - 3}
    path.write_text(json.dumps({"file_name": "pictures/0000.png", "objects": ["cat"], "tags": ["dog"]}) + "\n")
    with pytest.raises(ConvertError, match=r"line 1: expected one column holding a list of labels "
                                           r"\(found: objects, tags\); name it with --column$"):
        convert("imagefolder", root, tmp_path / "out")
    assert convert("imagefolder", root, tmp_path / "out2", column="tags").classes == 1


def test_imagefolder_bad_class_folder_name(tmp_path, capsys):
    root = make_class_folders(tmp_path / "photos", ["cat/1.png", "dog;puppy/2.png"])
    message = (f"{root / 'dog;puppy'}, class folder: class name 'dog;puppy' cannot be stored "
               "(contains ';' or a newline, or is padded)")
    with pytest.raises(ConvertError) as error:
        convert("imagefolder", root, tmp_path / "out")
    assert str(error.value) == message
    result = convert("imagefolder", root, tmp_path / "out", skip_bad=True)
    assert result.skipped == [message] and result.classes == 1 and result.images == {"train": 1}
    assert spml_main(["convert", "imagefolder", str(root), "--out", str(tmp_path / "out2"), "--skip-bad"]) == 0
    assert f"skipped 1 bad entries:\n  {message}\n" in capsys.readouterr().out


def test_imagefolder_without_metadata_or_class_folders(tmp_path, capsys):
    root = make_class_folders(tmp_path / "nothing", ["loose.png", "notes/readme.txt", ".hidden/1.png"])
    expected = (f"{root}: found neither metadata.jsonl or metadata.csv (in the folder or in train/) "
                "nor class folders with images (<class>/<image>, or train/<class>/<image>)")
    with pytest.raises(ConvertError) as error:
        convert("imagefolder", root, tmp_path / "out")
    assert str(error.value) == expected
    (tmp_path / "empty").mkdir()
    assert spml_main(["convert", "imagefolder", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"error: {expected.replace(str(root), str(tmp_path / 'empty'))}\n"
    assert not (tmp_path / "out").exists()


def test_a_class_name_the_format_cannot_hold_is_refused(tmp_path):
    path = make_coco(tmp_path / "coco") / COCO_JSON
    data = json.loads(path.read_text())
    data["categories"][0]["name"] = "cat;dog"
    path.write_text(json.dumps(data))
    with pytest.raises(ConvertError) as error:
        convert("coco", path, tmp_path / "out")
    assert str(error.value) == (f"{path}, categories[0]: class name 'cat;dog' cannot be stored "
                                "(contains ';' or a newline, or is padded)")


# --- detection ----------------------------------------------------------------------------------

def test_detect_format_and_convert_any(tmp_path):
    for format, (make, _) in MAKERS.items():
        root = make(tmp_path / format / "wrapper" / "content")  # as an archive often wraps it
        assert detect_format(tmp_path / format) == format
        assert detect_format(root) == format
        out = convert_any(tmp_path / format, tmp_path / f"{format}_data")
        assert out == tmp_path / f"{format}_data" and load_dataset(out).classes
    own = tmp_path / "coco_data"
    assert detect_format(own) == "generic"
    assert convert_any(own, tmp_path / "unused") == own and not (tmp_path / "unused").exists()
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    assert detect_format(tmp_path / "empty") is None and detect_format(tmp_path / "missing") is None
    with pytest.raises(ConvertError, match="no data set found"):
        convert_any(tmp_path / "empty", tmp_path / "out")
