"""The generic data set format: ``classes.txt`` plus ``train.csv`` and optional ``val.csv``, ``test.csv``.

Every prepared or converted data set is written in this format (:mod:`spml.data.writer`) and every
consumer reads it through :func:`load_dataset`, here. A CSV has the columns ``image,labels`` and
optionally ``positive`` and ``negatives``; class names inside a field are separated by ``;`` and may
contain spaces.

What is observed (may be trained on as a positive):
- a file without a ``positive`` column is the data set as its annotators left it: every class in
  ``labels`` is observed, and nothing is hidden;
- a file with a ``positive`` column (prepared benchmarks, simulations) observes the classes in it (one,
  or several separated by ``;``, or none); ``labels`` is then the full truth, for clean validation and
  for scoring an audit only;
- ``single_positive=True`` (``--single-positive``) draws one positive per row from ``labels`` by the
  protocol instead, over a file's rows in file order, as the single-positive benchmarks do.

Rows with an empty ``labels`` field are accepted (design.md lists them as bad rows, but NUS-WIDE's
protocol keeps about 22% of its images without any label, so a prepared NUS-WIDE data set needs
them); such a row simply has no positive. Bad rows are: a malformed line, an unknown class, a
positive that is not among the row's labels, a class both in labels and negatives, and a missing
image file.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spml.data.protocol import protocol_split, sample_single_positive

SPLIT_NAMES = ("train", "val", "test")
CLASSES_FILE = "classes.txt"
REQUIRED_COLUMNS = ("image", "labels")
OPTIONAL_COLUMNS = ("positive", "negatives")
SEPARATOR = ";"


class DatasetError(ValueError):
    """A data set file is malformed; the message names the file, the line and the problem."""


@dataclass
class Split:
    """One split of a data set, as arrays aligned with ``images``.

    ``labels`` (N, C) uint8 holds the ``labels`` column: full labels where the data set knows them.
    ``observed`` (N, C) int8 is what training may see: 1 for an observed (annotated) positive, -1 for
    a known negative (``negatives`` column), 0 for unknown. ``has_hidden_labels`` is True when some
    class of ``labels`` is not observed, i.e. ``labels`` holds truth the annotations do not.
    """

    name: str
    source: Path
    classes: list[str]
    images: list[Path]
    rows: list[int]
    labels: np.ndarray
    observed: np.ndarray
    has_hidden_labels: bool
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Dataset:
    """A data set folder: its classes and its splits by name."""

    root: Path
    classes: list[str]
    splits: dict[str, Split]

    def split(self, name: str) -> Split:
        if name not in self.splits:
            available = ", ".join(self.splits) or "none"
            raise DatasetError(f"{self.root}: no split {name!r} (available: {available})")
        return self.splits[name]


def split_names(text: str) -> list[str]:
    """The class names of a ``labels`` or ``negatives`` field, in order, without repeats."""
    # Empty pieces are dropped so that a trailing ';' or an empty field means "no class".
    names = [part.strip() for part in text.split(SEPARATOR)]
    return list(dict.fromkeys(n for n in names if n))


def read_classes(root: Path) -> list[str]:
    """The class names of ``root/classes.txt``, checked (no empty, duplicate or ';' names)."""
    path = root / CLASSES_FILE
    if not path.is_file():
        raise DatasetError(f"{path}: missing (a data set folder needs {CLASSES_FILE})")
    lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    classes: list[str] = []
    where: dict[str, int] = {}
    for number, name in enumerate(lines, start=1):
        if not name:
            raise DatasetError(f"{path}, line {number}: empty class name")
        if SEPARATOR in name:
            raise DatasetError(f"{path}, line {number}: class name {name!r} contains ';'")
        if name in where:
            raise DatasetError(
                f"{path}, line {number}: duplicate class name {name!r} (first on line {where[name]})"
            )
        where[name] = number
        classes.append(name)
    if not classes:
        raise DatasetError(f"{path}: no classes")
    return classes


@dataclass
class _Parsed:
    """The valid rows of one CSV file, before positives are drawn or the file is split."""

    source: Path
    images: list[Path]
    rows: list[int]
    labels: np.ndarray
    positives: np.ndarray | None  # (N, C) uint8, the positive column; None when the file has none
    negatives: np.ndarray
    skipped: list[str]


class _BadRow(Exception):
    """A row's problem, turned into a DatasetError (or a skip) with the file and line by the caller."""


def _parse_csv(path: Path, root: Path, classes: list[str], skip_bad: bool, check_images: bool) -> _Parsed:
    index = {name: i for i, name in enumerate(classes)}
    images: list[Path] = []
    rows: list[int] = []
    label_rows: list[np.ndarray] = []
    positive_rows: list[np.ndarray] = []
    negative_rows: list[np.ndarray] = []
    skipped: list[str] = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"{path}, line 1: empty file (expected a header 'image,labels')")
        columns = [h.strip().lower() for h in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise DatasetError(f"{path}, line 1: missing column {missing[0]!r} (header: {','.join(header)})")
        col = {
            name: columns.index(name) for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if name in columns
        }
        parser = _RowParser(len(columns), col, index, classes, root, check_images)
        try:
            for record in reader:
                line = reader.line_num
                if not record or all(not f.strip() for f in record):
                    continue  # blank lines carry no row
                try:
                    image, labels, positive, negatives = parser(record)
                except _BadRow as bad:
                    message = f"{path}, line {line}: {bad}"
                    if not skip_bad:
                        raise DatasetError(message) from None
                    skipped.append(message)
                    continue
                images.append(image)
                rows.append(line)
                label_rows.append(labels)
                positive_rows.append(positive)
                negative_rows.append(negatives)
        except csv.Error as error:
            raise DatasetError(f"{path}, line {reader.line_num}: malformed CSV ({error})") from None
    num_classes = len(classes)

    def stack(arrays: list[np.ndarray]) -> np.ndarray:
        return np.stack(arrays) if arrays else np.zeros((0, num_classes), dtype=np.uint8)

    return _Parsed(
        source=path,
        images=images,
        rows=rows,
        labels=stack(label_rows),
        positives=stack(positive_rows) if "positive" in col else None,
        negatives=stack(negative_rows),
        skipped=skipped,
    )


@dataclass
class _RowParser:
    """Turns one CSV record into (image path, label vector, positive vector, negatives vector)."""

    num_columns: int
    col: dict[str, int]
    index: dict[str, int]
    classes: list[str]
    root: Path
    check_images: bool

    def names(self, text: str, what: str) -> list[str]:
        names = split_names(text)
        unknown = [n for n in names if n not in self.index]
        if unknown:
            preview = ", ".join(self.classes[:5]) + (", ..." if len(self.classes) > 5 else "")
            raise _BadRow(f"unknown class {unknown[0]!r} in {what} (known: {preview})")
        return names

    def vector(self, names: list[str]) -> np.ndarray:
        vec = np.zeros(len(self.classes), dtype=np.uint8)
        vec[[self.index[n] for n in names]] = 1
        return vec

    def __call__(self, record: list[str]) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
        if len(record) != self.num_columns:
            raise _BadRow(f"malformed line: {len(record)} fields where the header has {self.num_columns}")
        image_field = record[self.col["image"]].strip()
        if not image_field:
            raise _BadRow("empty image path")
        if Path(image_field).is_absolute():
            raise _BadRow(f"image path {image_field!r} must be relative to the data set folder")
        labels = self.names(record[self.col["labels"]], "labels")
        positives = self.names(record[self.col["positive"]], "positive") if "positive" in self.col else []
        outside = [n for n in positives if n not in labels]
        if outside:
            raise _BadRow(f"positive {outside[0]!r} is not among the row's labels")
        negatives = self.names(record[self.col["negatives"]], "negatives") if "negatives" in self.col else []
        both = [n for n in negatives if n in labels]
        if both:
            raise _BadRow(f"class {both[0]!r} is both in labels and negatives")
        image = self.root / image_field
        if self.check_images and not image.is_file():
            raise _BadRow(f"missing image file {image_field!r}")
        return image, self.vector(labels), self.vector(positives), self.vector(negatives)


def _observed(parsed: _Parsed, single_positive: bool) -> np.ndarray:
    """The observed matrix: the file's positive column; without one, every label (the data set as
    annotated), or with ``single_positive`` the protocol's draw over the rows in file order."""
    if single_positive:
        if parsed.positives is not None:
            raise DatasetError(f"{parsed.source}: has a positive column, so its observed classes are given; "
                               "--single-positive draws them only for files without one")
        observed = sample_single_positive(parsed.labels).astype(np.int8)
    elif parsed.positives is None:
        observed = parsed.labels.astype(np.int8)
    else:
        observed = parsed.positives.astype(np.int8)
    observed[parsed.negatives.astype(bool)] = -1
    return observed


def _make_split(
    name: str, parsed: _Parsed, observed: np.ndarray, classes: list[str], idx: np.ndarray, skipped: list[str]
) -> Split:
    labels = parsed.labels[idx]
    obs = observed[idx]
    hidden = bool(((labels == 1) & (obs != 1)).any())
    return Split(
        name=name,
        source=parsed.source,
        classes=classes,
        images=[parsed.images[i] for i in idx],
        rows=[parsed.rows[i] for i in idx],
        labels=labels,
        observed=obs,
        has_hidden_labels=hidden,
        skipped=skipped,
    )


def load_dataset(
    root: str | Path, *, skip_bad: bool = False, check_images: bool = True, single_positive: bool = False
) -> Dataset:
    """Read a data set folder in the generic format.

    Observed positives come from the ``positive`` column where a file has it; otherwise every class
    in ``labels`` is observed. With ``single_positive`` a file without a ``positive`` column gets one
    positive per row drawn by the protocol (:func:`sample_single_positive`, seed 1200) over its valid
    rows in file order instead (a file with the column is an error then: its positives are given).
    Without ``val.csv``, train.csv is split 80/20 by :func:`protocol_split` after the draw, as
    the protocol does with an official training set. ``check_images`` checks that each image file
    exists (cheap); it does not decode it. With ``skip_bad`` bad rows are left out and listed in
    ``Split.skipped`` (the rows skipped from train.csv are listed on the train split).
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: not a data set folder (no such directory)")
    classes = read_classes(root)
    if not (root / "train.csv").is_file():
        raise DatasetError(f"{root / 'train.csv'}: missing (a data set folder needs train.csv)")
    splits: dict[str, Split] = {}
    for name in SPLIT_NAMES:
        path = root / f"{name}.csv"
        if not path.is_file():
            continue
        parsed = _parse_csv(path, root, classes, skip_bad, check_images)
        observed = _observed(parsed, single_positive)  # drawn over the whole file, before any split
        if name == "train" and not (root / "val.csv").is_file():
            train_idx, val_idx = protocol_split(len(parsed.images))
            splits["train"] = _make_split("train", parsed, observed, classes, train_idx, parsed.skipped)
            splits["val"] = _make_split("val", parsed, observed, classes, val_idx, [])
        else:
            every = np.arange(len(parsed.images))
            splits[name] = _make_split(name, parsed, observed, classes, every, parsed.skipped)
    return Dataset(root=root, classes=classes, splits=splits)
