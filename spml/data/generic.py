"""The generic data set format: ``classes.txt`` plus ``train.csv`` and optional ``val.csv``, ``test.csv``.

Every prepared or converted data set is written in this format and every consumer reads it through
:func:`load_dataset`. A CSV has the columns ``image,labels`` and optionally ``positive`` and
``negatives``; class names inside a field are separated by ``;`` and may contain spaces.

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
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spml.data.protocol import protocol_split, sample_single_positive
from spml.runtime import atomic_write_text

SPLIT_NAMES = ("train", "val", "test")
CLASSES_FILE = "classes.txt"
REQUIRED_COLUMNS = ("image", "labels")
OPTIONAL_COLUMNS = ("positive", "negatives")
SEPARATOR = ";"


class DatasetError(ValueError):
    """A data set file is malformed; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class Row:
    """One image of a split, as written to a CSV file."""

    image: str
    labels: list[str]
    # The observed classes: one name, or several (written joined by ';'); None writes an empty field.
    positive: str | list[str] | tuple[str, ...] | None = None
    negatives: list[str] | tuple[str, ...] = ()

    @property
    def positives(self) -> list[str]:
        """The observed classes as a list (empty for None)."""
        if self.positive is None:
            return []
        return [self.positive] if isinstance(self.positive, str) else list(self.positive)


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


def _join(names: list[str] | tuple[str, ...]) -> str:
    return SEPARATOR.join(names)


def split_names(text: str) -> list[str]:
    """The class names of a ``labels`` or ``negatives`` field, in order, without repeats."""
    # Empty pieces are dropped so that a trailing ';' or an empty field means "no class".
    names = [part.strip() for part in text.split(SEPARATOR)]
    return list(dict.fromkeys(n for n in names if n))


def _check_classes(classes: list[str]) -> None:
    if not classes:
        raise ValueError("a data set needs at least one class")
    seen: set[str] = set()
    for name in classes:
        if not name or name != name.strip() or SEPARATOR in name or "\n" in name:
            raise ValueError(f"invalid class name {name!r} (empty, padded, or containing ';' or a newline)")
        if name in seen:
            raise ValueError(f"duplicate class name {name!r}")
        seen.add(name)


def _render_csv(rows: list[Row], known: set[str], with_positive: bool, with_negatives: bool) -> str:
    header = (
        list(REQUIRED_COLUMNS)
        + (["positive"] if with_positive else [])
        + (["negatives"] if with_negatives else [])
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        if not row.image or row.image.startswith("/") or "\\" in row.image:
            raise ValueError(f"image path {row.image!r} must be relative, with forward slashes")
        unknown = [n for n in [*row.labels, *row.negatives] if n not in known]
        if unknown:
            raise ValueError(f"{row.image}: unknown classes {unknown}")
        outside = [n for n in row.positives if n not in row.labels]
        if outside:
            raise ValueError(f"{row.image}: positive {outside[0]!r} is not among its labels")
        if set(row.labels) & set(row.negatives):
            raise ValueError(f"{row.image}: classes both in labels and negatives")
        record = [row.image, _join(row.labels)]
        if with_positive:
            record.append(_join(row.positives))
        if with_negatives:
            record.append(_join(row.negatives))
        writer.writerow(record)
    return buffer.getvalue()


def render_dataset(classes: list[str], splits: dict[str, list[Row]]) -> dict[str, str]:
    """The files :func:`write_dataset` would write, by file name, after validating everything."""
    _check_classes(classes)
    unknown_splits = set(splits) - set(SPLIT_NAMES)
    if unknown_splits or "train" not in splits:
        raise ValueError(f"splits must include 'train' and be among {SPLIT_NAMES}, got {sorted(splits)}")
    known = set(classes)
    everything = [row for rows in splits.values() for row in rows]
    # Decided over the whole data set: a split whose rows all lack a positive (possible on NUS-WIDE)
    # must still say so, or loading it would take every label of it as observed instead.
    with_positive = any(r.positive is not None for r in everything)
    with_negatives = any(r.negatives for r in everything)
    files = {CLASSES_FILE: "".join(f"{name}\n" for name in classes)}
    for name, rows in splits.items():
        files[f"{name}.csv"] = _render_csv(rows, known, with_positive, with_negatives)
    return files


def check_writable(out: Path, files: dict[str, str], overwrite: bool = False) -> None:
    """Refuse to replace a different data set in ``out`` unless ``overwrite`` is set.

    Identical files are fine (re-running a preparation is a no-op), and so are files that are no part
    of the format (images). A split file that the new data set would not have counts as different:
    a stale ``val.csv`` would silently change how ``train.csv`` is split.
    """
    if overwrite or not out.exists():
        return
    dataset_files = [CLASSES_FILE] + [f"{s}.csv" for s in SPLIT_NAMES]
    for name in dataset_files:
        path = out / name
        if path.exists() and (name not in files or path.read_text(encoding="utf-8") != files[name]):
            raise FileExistsError(
                f"{out} already holds a different data set ({name} differs); pass overwrite to replace it"
            )


def write_dataset(
    out: str | Path, classes: list[str], splits: dict[str, list[Row]], overwrite: bool = False
) -> Path:
    """Write a data set in the generic format; returns ``out``.

    The ``positive`` (``negatives``) column is written, in every split, when a row of any split has one.
    """
    out = Path(out)
    files = render_dataset(classes, splits)
    check_writable(out, files, overwrite)
    return write_rendered(out, files)


def write_rendered(out: Path, files: dict[str, str]) -> Path:
    """Write the files of :func:`render_dataset` (checked by :func:`check_writable`) into ``out``, and
    remove a split file the data set no longer has; returns ``out``. For callers that must check before
    work of their own (images, links) and then write without rendering again."""
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLIT_NAMES:
        stale = out / f"{split}.csv"
        if f"{split}.csv" not in files and stale.exists():
            stale.unlink()
    for name, text in files.items():
        atomic_write_text(out / name, text)
    return out


def link_images(link: Path, target: Path, overwrite: bool = False) -> None:
    """Make ``link`` a symbolic link to the folder ``target`` (an absolute path): a data set names its
    images through it and never copies them. An existing link to ``target`` is kept; one to elsewhere
    is replaced only with ``overwrite``; a real file or folder is never replaced."""
    target = target.resolve()
    if link.is_symlink():
        if Path(os.readlink(link)) == target:
            return
        if not overwrite:
            raise FileExistsError(f"{link} links to {os.readlink(link)}, not {target} (use --overwrite)")
        link.unlink()
    elif link.exists():
        raise FileExistsError(f"{link} exists and is not a link; move it away (images are never deleted)")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)


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
