"""Importers: COCO, VOC, YOLO and imagefolder data sets (Hugging Face metadata, or one folder a class)
into the generic format.

A converted data set has no ``positive`` column: every label its annotators gave is observed. Images
are referenced where they lie (through a link when outside the data set folder), never copied.

- :func:`convert` converts one named format;
- :func:`detect_format` tells which layout a folder (an extracted upload, say) holds;
- :func:`convert_any` detects and converts, and returns the data set folder to read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from spml.data.generic import CLASSES_FILE
from spml.data.importers import coco, imagefolder, voc, yolo
from spml.data.importers.common import Collected, ConvertError, write_collected

GENERIC = "generic"  # our own format: classes.txt and train.csv
FORMATS = ("coco", "voc", "yolo", "imagefolder")
_READERS = {"coco": coco.read, "voc": voc.read, "yolo": yolo.read, "imagefolder": imagefolder.read}
_WRAPPER_DEPTH = 3  # an archive often wraps its content in a folder or two: look that deep through them
_IGNORED = {"__MACOSX"}  # what archivers add beside the content

__all__ = ["FORMATS", "GENERIC", "ConvertError", "ConvertResult", "convert", "convert_any", "detect_format"]


@dataclass
class ConvertResult:
    """A written data set and what the conversion counted."""

    out: Path
    format: str
    classes: int
    images: dict[str, int]  # rows written per split
    skipped: list[str] = field(default_factory=list)  # bad entries left out (--skip-bad), with reasons
    unlabelled: int = 0  # images without any label, left out


def convert(
    format: str,
    source: str | Path,
    out: str | Path,
    *,
    images: str | Path | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
    column: str | None = None,
) -> ConvertResult:
    """Convert ``source`` in ``format`` (one of :data:`FORMATS`) to a data set at ``out``.

    ``images`` is the image folder where the format does not fix it (COCO, VOC); ``column`` the label
    column of an imagefolder metadata file. Bad entries raise :class:`ConvertError` naming the file,
    the entry and the problem; with ``skip_bad`` they are left out and listed in the result.
    """
    if format not in _READERS:
        raise ConvertError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    source = Path(source).expanduser()
    if not source.exists():
        raise ConvertError(f"{source}: no such file or folder")
    if column is not None and format != "imagefolder":
        raise ConvertError(f"--column is only used for imagefolder, not {format}")
    image_folder = None if images is None else Path(images).expanduser()
    if format == "imagefolder":
        collected: Collected = imagefolder.read(source, image_folder, skip_bad, column)
    else:
        collected = _READERS[format](source, image_folder, skip_bad)
    written = write_collected(collected, out, overwrite)
    return ConvertResult(written, format, len(collected.classes),
                         {split: len(entries) for split, entries in collected.splits.items() if entries},
                         collected.skipped, collected.unlabelled)


def _format_here(folder: Path) -> str | None:
    if (folder / CLASSES_FILE).is_file() and (folder / "train.csv").is_file():
        return GENERIC
    if imagefolder.metadata_files(folder).get("train") is not None:
        return "imagefolder"
    if yolo.find_yaml(folder) is not None:
        return "yolo"
    if voc.is_voc_folder(folder):
        return "voc"
    jsons = [p for sub in (folder, folder / "annotations") if sub.is_dir() for p in sub.glob("*.json")]
    if any(coco.is_coco_file(p) for p in jsons):
        return "coco"
    return None


def _locate(folder: Path) -> tuple[str, Path] | None:
    """(format, the folder holding it): ``folder`` itself, or down through folders that are alone in theirs."""
    for _ in range(_WRAPPER_DEPTH + 1):
        found = _format_here(folder)
        if found is not None:
            return found, folder
        children = [c for c in folder.iterdir() if c.name not in _IGNORED and not c.name.startswith(".")]
        if len(children) != 1 or not children[0].is_dir() or children[0].is_symlink():
            return None
        folder = children[0]
    return None


def detect_format(folder: str | Path) -> str | None:
    """Which layout ``folder`` holds: ``"generic"`` (our own), ``"coco"``, ``"voc"``, ``"yolo"``,
    ``"imagefolder"``, or None. The layout may sit in ``folder`` or inside a few folders that are alone
    in their parent (as an archive often wraps it). Checked in that order: the first layout found wins."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = _locate(folder)
    return None if found is None else found[0]


def convert_any(folder: str | Path, out: str | Path, *, skip_bad: bool = False, overwrite: bool = False) -> Path:
    """Detect the layout of ``folder`` and return a data set folder to read: the folder that holds our
    own format as it is (nothing is written), or ``out`` with the conversion of any other layout.
    Raises :class:`ConvertError` when no layout is recognised."""
    folder = Path(folder)
    found = _locate(folder) if folder.is_dir() else None
    if found is None:
        raise ConvertError(f"{folder}: no data set found: expected classes.txt with train.csv, a COCO instances "
                           "JSON, a VOC folder (Annotations/), a YOLO data.yaml, or an imagefolder metadata.jsonl/.csv")
    format, where = found
    if format == GENERIC:
        return where
    return convert(format, where, out, skip_bad=skip_bad, overwrite=overwrite).out
