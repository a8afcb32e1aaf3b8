"""YOLO (Ultralytics layout): a ``data.yaml`` with ``names`` and split folders, labels beside the images.

``names`` is a list or a mapping id -> name (read with yaml.safe_load). ``train``, ``val`` and ``test``
are image folders (or lists of them) relative to ``path`` (or to the YAML's folder). An image
``.../images/.../x.jpg`` has its boxes in ``.../labels/.../x.txt``, one ``class x y w h`` (or a
segment: class and point pairs) per line; its labels are the classes of those lines. An image with
no label file or an empty one is a background image: it is left out and counted.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from spml.data.images import IMAGE_SUFFIXES
from spml.data.importers.common import Collected, ConvertError, Entry, Problems, check_class_name

NAME = "yolo"
YAML_NAMES = ("data.yaml", "data.yml", "dataset.yaml", "dataset.yml")
SPLITS = {"train": "train", "val": "val", "test": "test"}


def find_yaml(source: Path) -> Path | None:
    if source.is_file():
        return source
    return next((source / name for name in YAML_NAMES if (source / name).is_file()), None)


def _classes(names: object, where: str) -> list[str]:
    if isinstance(names, list):
        return [check_class_name(name, f"{where}, names[{i}]") for i, name in enumerate(names)]
    if isinstance(names, dict):
        try:
            ids = sorted(int(key) for key in names)
        except (TypeError, ValueError):
            raise ConvertError(f"{where}: the keys of names must be class ids (integers)") from None
        if ids != list(range(len(ids))):
            raise ConvertError(f"{where}: the class ids of names must be 0..{len(ids) - 1}, got {ids}")
        by_id = {int(key): value for key, value in names.items()}
        return [check_class_name(by_id[i], f"{where}, names[{i}]") for i in ids]
    raise ConvertError(f"{where}: names must be a list or a mapping of id: name")


def _label_file(image: Path) -> Path:
    """YOLO's rule: the last ``images`` folder of the path becomes ``labels``, the suffix ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _split_folders(value: object, base: Path, yaml_dir: Path, where: str) -> list[Path]:
    entries = value if isinstance(value, list) else [value]
    folders = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise ConvertError(f"{where}: expected a folder name, got {entry!r}")
        candidates = [base / entry]
        if entry.startswith("../"):
            candidates.append(yaml_dir / entry[3:])  # Roboflow exports write ../train/images beside data.yaml
        folder = next((c for c in candidates if c.is_dir()), None)
        if folder is None:
            raise ConvertError(f"{where}: image folder {entry!r} not found (looked in {candidates[0]})")
        folders.append(folder)
    return folders


def _read_labels(path: Path, classes: list[str]) -> list[str]:
    labels = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}, line {number}"
        try:
            class_id = int(fields[0])
            coordinates = [float(value) for value in fields[1:]]
        except ValueError:
            problem = f"expected 'class x y w h' with an integer class, got {line.strip()!r}"
            raise ConvertError(f"{where}: {problem}") from None
        if not 0 <= class_id < len(classes):
            raise ConvertError(f"{where}: class {class_id} is not in names (0..{len(classes) - 1})")
        if len(coordinates) < 4:
            raise ConvertError(f"{where}: expected 'class x y w h', got {len(coordinates)} coordinates")
        labels.append(classes[class_id])
    return labels


def read(source: Path, images: Path | None = None, skip_bad: bool = False) -> Collected:
    if images is not None:
        raise ConvertError("--images is not used for yolo: data.yaml names the image folders")
    path = find_yaml(source)
    if path is None:
        raise ConvertError(f"{source}: no data.yaml (a YOLO folder holds data.yaml with names and split folders)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConvertError(f"{path}: malformed YAML ({error})") from None
    if not isinstance(data, dict) or "names" not in data:
        raise ConvertError(f"{path}: no names (the class names, a list or a mapping of id: name)")
    classes = _classes(data["names"], str(path))
    if len(set(classes)) != len(classes):
        raise ConvertError(f"{path}: duplicate class names in names")
    if "train" not in data:
        raise ConvertError(f"{path}: no train (the training images' folder)")
    base = (path.parent / str(data["path"])) if isinstance(data.get("path"), str) else path.parent
    folders = {
        split: _split_folders(data[key], base, path.parent, f"{path}, {key}")
        for key, split in SPLITS.items() if data.get(key)
    }
    if "val" in folders and folders["val"] == folders["train"]:
        del folders["val"]  # a val that is the training set is no validation: split train by the protocol
    root = Path(os.path.commonpath([f.resolve() for fs in folders.values() for f in fs]))
    problems = Problems(skip_bad)
    order = {name: i for i, name in enumerate(classes)}
    splits: dict[str, list[Entry]] = {}
    unlabelled = 0
    for split, split_folders in folders.items():
        entries = splits.setdefault(split, [])
        for folder in split_folders:
            for image in sorted(p for p in folder.resolve().rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
                label_file = _label_file(image)
                labels = []
                if label_file.is_file():
                    try:
                        labels = _read_labels(label_file, classes)
                    except ConvertError as error:
                        problems.bad(str(error))
                        continue
                if not labels:
                    unlabelled += 1
                    continue
                entries.append(Entry(image.relative_to(root).as_posix(),
                                     sorted(dict.fromkeys(labels), key=order.__getitem__)))
    return Collected(classes, root, splits, problems.messages, unlabelled)
