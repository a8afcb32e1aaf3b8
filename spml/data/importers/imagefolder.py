"""Hugging Face imagefolder: images with a ``metadata.jsonl`` or ``metadata.csv`` naming them in ``file_name``,
or, where no metadata file exists, one folder a class.

Metadata layout: the labels are the column holding a list of class names (``--column``, or the one
list-valued column of the first row). In ``metadata.csv`` a list is written as a JSON list
(``["cat", "dog"]``), as ``datasets`` writes one. The metadata sits in the folder itself (one split,
train) or in split folders ``train/``, ``validation/`` (or ``val/``) and ``test/``. It takes precedence
wherever a metadata file exists.

Class-folder layout: ``SOURCE/<class>/<image>`` (one split, train), or the same under split folders
(``SOURCE/train/<class>/<image>``, ...) when every visible subfolder of SOURCE is a split folder. Each
image is labelled with its class folder's name; images nested deeper under a class folder belong to
it. Image files are those with a suffix of :data:`~spml.data.images.IMAGE_SUFFIXES` (any case); other
files, and hidden files and folders (names starting with ``.``), are ignored; images lying beside the
class folders have no class and are counted as unlabelled. A class folder whose name the data set
format cannot hold is a bad entry. Classes are the names found, sorted.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from spml.data.images import IMAGE_SUFFIXES
from spml.data.importers.common import (
    Collected,
    ConvertError,
    Entry,
    Problems,
    check_class_name,
    ordered_unique,
    relative_image,
)

NAME = "imagefolder"
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
SPLIT_FOLDERS = {"train": "train", "validation": "val", "val": "val", "test": "test"}


def metadata_file(folder: Path) -> Path | None:
    return next((folder / name for name in METADATA_FILES if (folder / name).is_file()), None)


def metadata_files(source: Path) -> dict[str, Path]:
    """The metadata file of each split: the folder's own (train), else those of its split folders."""
    if source.is_file():
        return {"train": source}
    own = metadata_file(source)
    if own is not None:
        return {"train": own}
    found: dict[str, Path] = {}
    for folder, split in SPLIT_FOLDERS.items():
        path = metadata_file(source / folder)
        if path is not None and split not in found:
            found[split] = path
    return found


def _records(path: Path, problems: Problems) -> list[tuple[str, dict]]:
    """(where, record) for each row of a metadata file; rows that are not objects are bad entries."""
    records: list[tuple[str, dict]] = []
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                problems.bad(f"{where}: malformed JSON ({error.msg})")
                continue
            if not isinstance(record, dict):
                problems.bad(f"{where}: not a JSON object")
                continue
            records.append((where, record))
        return records
    reader = csv.DictReader(text.splitlines())
    for record in reader:
        where = f"{path}, line {reader.line_num}"
        values = {}
        for key, value in record.items():
            if isinstance(value, str) and value.strip().startswith("["):
                try:
                    values[key] = json.loads(value)
                except json.JSONDecodeError:
                    problems.bad(f"{where}: column {key!r} is not a JSON list ({value!r})")
                    break
            else:
                values[key] = value
        else:
            records.append((where, values))
    return records


def _label_column(records: list[tuple[str, dict]], column: str | None, path: Path) -> str:
    if column is not None:
        return column
    if not records:
        raise ConvertError(f"{path}: no rows")
    lists = [key for key, value in records[0][1].items() if isinstance(value, list)]
    if len(lists) != 1:
        found = ", ".join(lists) or "none"
        raise ConvertError(f"{records[0][0]}: expected one column holding a list of labels (found: {found}); "
                           "name it with --column")
    return lists[0]


def class_folder_splits(source: Path) -> dict[str, Path]:
    """The folder holding each split's class folders: the split folders where every visible subfolder
    of ``source`` is one, else ``source`` itself (train)."""
    names = {p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if not names or not names <= SPLIT_FOLDERS.keys():
        return {"train": source}
    found: dict[str, Path] = {}
    for folder, split in SPLIT_FOLDERS.items():
        if folder in names:
            found.setdefault(split, source / folder)
    return found


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _images_under(folder: Path) -> list[Path]:
    """The image files under ``folder`` at any depth, sorted; none inside hidden folders."""
    return sorted(p for p in folder.rglob("*")
                  if _is_image(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _read_class_folders(source: Path, problems: Problems) -> Collected:
    splits: dict[str, list[Entry]] = {}
    unlabelled = 0
    for split, folder in class_folder_splits(source).items():
        entries = splits.setdefault(split, [])
        for child in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
            if not child.is_dir():
                unlabelled += _is_image(child)  # beside the class folders: no class
                continue
            images = _images_under(child)
            if not images:
                continue
            try:
                name = check_class_name(child.name, f"{child}, class folder")
            except ConvertError as error:
                problems.bad(str(error))
                continue
            entries.extend(Entry(image.relative_to(source).as_posix(), [name]) for image in images)
    if not splits.get("train") and not problems.messages:
        raise ConvertError(f"{source}: found neither metadata.jsonl or metadata.csv (in the folder or in train/) "
                           "nor class folders with images (<class>/<image>, or train/<class>/<image>)")
    classes = sorted({entry.labels[0] for entries in splits.values() for entry in entries})
    return Collected(classes, source, splits, problems.messages, unlabelled)


def read(source: Path, images: Path | None = None, skip_bad: bool = False, column: str | None = None) -> Collected:
    if images is not None:
        raise ConvertError("--images is not used for imagefolder: file_name is relative to the metadata file")
    problems = Problems(skip_bad)
    files = metadata_files(source)
    if not files:
        if column is not None:
            raise ConvertError(f"{source}: --column names a metadata column, but there is no metadata.jsonl or "
                               "metadata.csv (class folders are labelled by their names)")
        return _read_class_folders(source, problems)
    if "train" not in files:
        raise ConvertError(f"{source}: no metadata.jsonl or metadata.csv (in the folder or in train/)")
    root = source.parent if source.is_file() else source
    found: dict[str, list[tuple[str, list[str]]]] = {}
    unlabelled = 0
    for split, path in files.items():
        records = _records(path, problems)
        label_column = _label_column(records, column, path)
        rows = found.setdefault(split, [])
        for where, record in records:
            try:
                name = relative_image(record.get("file_name"), f"{where}, file_name")
                labels = record.get(label_column)
                if not isinstance(labels, list):
                    raise ConvertError(f"{where}: column {label_column!r} is not a list of labels ({labels!r})")
                labels = ordered_unique([check_class_name(label, f"{where}, {label_column}") for label in labels])
            except ConvertError as error:
                problems.bad(str(error))
                continue
            image = path.parent / name
            if not image.is_file():
                problems.bad(f"{where}: missing image file {name!r}")
                continue
            if not labels:
                unlabelled += 1
                continue
            rows.append(((path.parent.relative_to(root) / name).as_posix(), labels))
    classes = sorted({label for rows in found.values() for _, labels in rows for label in labels})
    splits = {split: [Entry(image, sorted(labels)) for image, labels in rows] for split, rows in found.items()}
    return Collected(classes, root, splits, problems.messages, unlabelled)
