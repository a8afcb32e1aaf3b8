"""Writing a data set in the generic format (:mod:`spml.data.generic`): every row validated before a
file is written, files replaced atomically, and an existing different data set never overwritten
unless asked."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from spml.data.generic import CLASSES_FILE, REQUIRED_COLUMNS, SEPARATOR, SPLIT_NAMES
from spml.runtime import atomic_write_text


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


def _join(names: list[str] | tuple[str, ...]) -> str:
    return SEPARATOR.join(names)


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
