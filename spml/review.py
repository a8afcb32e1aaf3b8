"""Review of an audit: decisions on suspects, the corrected data set, and safe ways in for user data.

A reviewer confirms a suspect (the label is missing: add it to ``labels``) or dismisses it (the class
is absent: list it in ``negatives``, which training treats as a known negative, never rejected).

Decisions live in a store beside the report, ``<report stem>.decisions.json``, rewritten atomically
at every decision, so they survive a page reload or a restart of the app. The report CSV itself can
carry decisions too: its ``decision`` column, filled by hand, accepts (case-insensitive)
``confirm``/``confirmed``/``yes``/``y``/``true``/``1`` and ``dismiss``/``dismissed``/``no``/``n``/
``false``/``0``; an empty cell is undecided. Where both speak about the same suspect the store wins
(it holds the later, explicit clicks, including "undecided" to withdraw a hand-filled decision).

Decisions are plain data: ``{image: {class: "confirm" | "dismiss"}}``, with ``image`` the path as the
data set CSV writes it.

User data is hostile until proven otherwise: :func:`safe_extract_zip` extracts only images and
CSV/TXT files, refuses path traversal, links and special files, and bounds the total size, the file
count and the image dimensions; :func:`resolve_server_dataset` reads a folder on the server only where
``SPML_ALLOW_SERVER_PATHS=1``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import stat
import threading
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO, Any

from PIL import Image

from spml.checkpoint import LoadedModel
from spml.data.generic import CLASSES_FILE, SEPARATOR, read_classes, split_names
from spml.inspect import analyze
from spml.runtime import atomic_write_text

DECISIONS = ("confirm", "dismiss")
_CONFIRM_WORDS = {"confirm", "confirmed", "yes", "y", "true", "1"}
_DISMISS_WORDS = {"dismiss", "dismissed", "no", "n", "false", "0"}
_STORE_FORMAT = "spml-review-decisions"
_store_lock = threading.Lock()  # the app may record two clicks at once; the rename makes each write atomic

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TABLE_SUFFIXES = (".csv", ".txt")
# The annotation files of the layouts spml.data.importers reads: COCO and imagefolder JSON(L), VOC XML, YOLO YAML.
ANNOTATION_SUFFIXES = (".json", ".jsonl", ".xml", ".yaml", ".yml")
MAX_ZIP_BYTES = 2 * 1024**3
MAX_ZIP_FILES = 100_000
MAX_IMAGE_PIXELS = 40_000_000
SERVER_PATHS_VARIABLE = "SPML_ALLOW_SERVER_PATHS"
_COPY_CHUNK = 1 << 20


class ReviewError(ValueError):
    """A decision, a report or an upload that cannot be used; the message says why."""


def decisions_path(report: str | Path) -> Path:
    """The decision store of ``report``: ``audit.csv`` -> ``audit.decisions.json``."""
    return Path(report).with_suffix(".decisions.json")


def parse_decision(text: str | None) -> str | None:
    """``confirm``, ``dismiss`` or None (undecided) from a hand-filled cell; ReviewError otherwise."""
    word = (text or "").strip().lower()
    if not word:
        return None
    if word in _CONFIRM_WORDS:
        return "confirm"
    if word in _DISMISS_WORDS:
        return "dismiss"
    raise ReviewError(f"unknown decision {text!r}: write confirm/yes/1, dismiss/no/0, or leave it empty")


def _report_decisions(report: Path) -> dict[str, dict[str, str]]:
    """The hand-filled ``decision`` column of a report CSV (none when the column is absent)."""
    decisions: dict[str, dict[str, str]] = {}
    if not report.is_file():
        return decisions
    with report.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"image", "class", "decision"} <= set(reader.fieldnames):
            return decisions
        for row in reader:
            try:
                decision = parse_decision(row["decision"])
            except ReviewError as error:
                raise ReviewError(f"{report}, line {reader.line_num}: {error}") from None
            if decision is not None:
                decisions.setdefault(row["image"], {})[row["class"]] = decision
    return decisions


def _read_store(report: Path) -> dict[str, dict[str, str | None]]:
    path = decisions_path(report)
    if not path.is_file():
        return {}
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReviewError(f"{path} is not a decision store ({error})") from None
    if not isinstance(payload, dict) or payload.get("format") != _STORE_FORMAT:
        raise ReviewError(f"{path} is not a decision store (format != {_STORE_FORMAT!r})")
    return payload["decisions"]


def load_decisions(report: str | Path) -> dict[str, dict[str, str]]:
    """Every decision on ``report``: its hand-filled ``decision`` column, then the store on top."""
    report = Path(report)
    decisions = _report_decisions(report)
    for image, classes in _read_store(report).items():
        for name, decision in classes.items():
            decisions.setdefault(image, {})[name] = decision
            if decision is None:  # withdrawn in the app: undecided even where the CSV says otherwise
                del decisions[image][name]
        if not decisions.get(image, True):
            del decisions[image]
    return decisions


def record_decision(report: str | Path, image: str, class_name: str, decision: str | None) -> dict[str, dict[str, str]]:
    """Record ``decision`` ("confirm", "dismiss" or None to withdraw) on the suspect (image, class)
    and return every decision on ``report`` (as :func:`load_decisions`). The pair is not looked up in
    the report (that would read it whole at every click); the export reports pairs it cannot apply."""
    if decision is not None and decision not in DECISIONS:
        raise ReviewError(f"decision must be one of {DECISIONS} or None, got {decision!r}")
    if not image or not class_name:
        raise ReviewError("a decision needs an image and a class")
    report = Path(report)
    path = decisions_path(report)
    with _store_lock:
        store = _read_store(report)
        store.setdefault(image, {})[class_name] = decision
        payload = {"format": _STORE_FORMAT, "version": 1, "report": report.name, "decisions": store}
        atomic_write_text(path, json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return load_decisions(report)


def export_corrected_dataset(
    dataset_root: str | Path,
    split_csv_name: str,
    decisions: dict[str, dict[str, str]],
    out_csv: str | Path,
) -> dict[str, Any]:
    """Write the data set CSV ``split_csv_name`` of ``dataset_root`` to ``out_csv`` with the decisions
    applied: confirmed classes added to ``labels``, dismissed ones to ``negatives`` (a column added
    where missing). A dismissed class leaves ``labels`` and a confirmed one leaves ``negatives``: the
    reviewer's word wins over the file. Every other column, row and value stays as it was.

    The annotated positives (the ``positive`` column, or every label of a file without one) cannot be
    dismissed. In a file without a ``positive`` column a confirmed class becomes annotated like the
    others. Returns counts and the decisions that could not be applied, with reasons.
    """
    root = Path(dataset_root)
    if PurePosixPath(split_csv_name).name != split_csv_name or not split_csv_name.endswith(".csv"):
        raise ReviewError(f"{split_csv_name!r} is not the name of a CSV file of the data set")
    source = root / split_csv_name
    classes = set(read_classes(root))
    with source.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        records = [(reader.line_num, record) for record in reader]
    columns = [name.strip().lower() for name in header]
    if "image" not in columns or "labels" not in columns:
        raise ReviewError(f"{source}: the header needs image and labels columns")
    image_col, labels_col = columns.index("image"), columns.index("labels")
    positive_col = columns.index("positive") if "positive" in columns else None
    negatives_col = columns.index("negatives") if "negatives" in columns else None
    wanted = {str(PurePosixPath(image)): by_class for image, by_class in decisions.items()}
    applied, problems, matched = {"confirm": 0, "dismiss": 0}, [], set()
    negatives: dict[int, list[str]] = {}  # the new negatives of the rows whose negatives changed
    for line, record in records:
        if len(record) != len(header) or not record[image_col].strip():
            continue  # a malformed row stays as it is
        image = str(PurePosixPath(record[image_col].strip()))
        if image not in wanted:
            continue
        matched.add(image)
        labels = split_names(record[labels_col])
        absent = split_names(record[negatives_col]) if negatives_col is not None else []
        new_labels, new_absent = list(labels), list(absent)
        # Without a positive column every label is annotated (the data set as its annotators left it).
        positives = split_names(record[positive_col]) if positive_col is not None else labels
        for name, decision in wanted[image].items():
            if name not in classes:
                problems.append(f"{image}: unknown class {name!r}")
            elif decision == "dismiss" and name in positives:
                problems.append(f"{image}: {name!r} is the annotated positive and cannot be dismissed")
            elif decision == "confirm":
                new_labels += [] if name in new_labels else [name]
                new_absent = [n for n in new_absent if n != name]
                applied["confirm"] += 1
            elif decision == "dismiss":
                new_labels = [n for n in new_labels if n != name]
                new_absent += [] if name in new_absent else [name]
                applied["dismiss"] += 1
            else:
                problems.append(f"{image}: unknown decision {decision!r} for {name!r}")
        if new_labels != labels:  # rewritten only where changed: every other cell keeps its text
            record[labels_col] = SEPARATOR.join(new_labels)
        if new_absent != absent:
            negatives[line] = new_absent
    problems += [f"{image}: not in {split_csv_name}" for image in sorted(set(wanted) - matched)]

    add_negatives = negatives_col is None and any(negatives.values())
    out_header = header + (["negatives"] if add_negatives else [])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(out_header)
    for line, record in records:
        well_formed = len(record) == len(header)
        if well_formed and line in negatives and negatives_col is not None:
            record[negatives_col] = SEPARATOR.join(negatives[line])
        if well_formed and add_negatives:
            record = [*record, SEPARATOR.join(negatives.get(line, []))]
        writer.writerow(record)
    out = atomic_write_text(out_csv, buffer.getvalue())
    return {"out": str(out), "rows": len(records), "confirmed": applied["confirm"], "dismissed": applied["dismiss"],
            "problems": problems}


def _entry_parts(name: str) -> list[str]:
    """The path components of a zip entry name; ReviewError for anything that could leave the folder."""
    text = name.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":") or "\x00" in text:
        raise ReviewError(f"zip entry {name!r} has an absolute path")
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ReviewError(f"zip entry {name!r} leaves the extraction folder")
    return parts


def _copy_limited(source: IO[bytes], target: Path, declared: int, budget: int, name: str) -> int:
    """Copy an entry's stream, stopping as soon as it outgrows its declared size or the budget.

    Headers can lie, so the bytes are counted as they inflate. (Python's zipfile also stops at the
    declared size and then fails the CRC check; this count does not rely on that.) Returns the bytes
    written."""
    written = 0
    with target.open("xb") as handle:
        while chunk := source.read(_COPY_CHUNK):
            written += len(chunk)
            if written > declared:
                raise ReviewError(f"zip entry {name!r} inflates past its declared size (a zip bomb?)")
            if written > budget:
                raise ReviewError(f"the zip inflates past the limit of {budget:,} bytes")
            handle.write(chunk)
    return written


def _check_image_size(path: Path, name: str, max_pixels: int) -> None:
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
    except Exception:  # noqa: BLE001 - an unreadable image is the audit's to report, with its line
        return
    if width * height > max_pixels:
        raise ReviewError(f"image {name!r} is {width}x{height}, over the limit of {max_pixels:,} pixels")


def _dataset_root(dest: Path) -> Path:
    from spml.data.importers import detect_format

    roots = sorted((path.parent for path in dest.rglob(CLASSES_FILE)), key=lambda p: (len(p.parts), str(p)))
    if not roots:
        if detect_format(dest) is not None:
            return dest  # another layout (COCO, VOC, YOLO, imagefolder): spml.data.importers.convert_any reads it
        raise ReviewError(f"the zip holds no {CLASSES_FILE} (a data set folder needs one, see the data set format) "
                          "and no COCO, VOC, YOLO or imagefolder layout")
    if len(roots) > 1 and len(roots[1].parts) == len(roots[0].parts):
        raise ReviewError(f"the zip holds several data sets ({roots[0].relative_to(dest)}, "
                          f"{roots[1].relative_to(dest)}): upload one")
    return roots[0]


def safe_extract_zip(
    zip_path: str | Path,
    dest: str | Path,
    *,
    max_total_bytes: int = MAX_ZIP_BYTES,
    max_files: int = MAX_ZIP_FILES,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> Path:
    """Extract an uploaded data set zip into the new or empty folder ``dest`` and return the data set
    root inside it (the shallowest folder holding classes.txt), or ``dest`` itself when it holds a COCO,
    VOC, YOLO or imagefolder layout instead (``spml.data.importers.convert_any`` converts it).

    Refused outright (ReviewError, and ``dest`` emptied): absolute or ``..`` names, symbolic links and
    other special entries, encrypted entries, more than ``max_files`` entries, declared or actual
    uncompressed size above ``max_total_bytes``, an entry inflating past its declared size, an image
    over ``max_image_pixels``, a corrupt archive. Skipped: anything other than images, CSV/TXT files and
    the importers' annotation files (JSON, JSONL, XML, YAML), folders, macOS resource forks and hidden files.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ReviewError(f"{dest} must be a new or empty folder")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            if len(archive.infolist()) > max_files:  # folders count too: a flood of them costs as much
                raise ReviewError(f"the zip holds {len(archive.infolist()):,} entries, more than the "
                                  f"{max_files:,} allowed")
            entries = [info for info in archive.infolist() if not info.is_dir()]
            declared = sum(info.file_size for info in entries)
            if declared > max_total_bytes:
                raise ReviewError(f"the zip declares {declared:,} bytes uncompressed, more than the "
                                  f"{max_total_bytes:,} allowed")
            budget, seen = max_total_bytes, set()
            for info in entries:
                parts = _entry_parts(info.filename)
                kind = stat.S_IFMT(info.external_attr >> 16)  # Unix file type, where the zip records one
                if info.create_system == 3 and kind and kind != stat.S_IFREG:
                    raise ReviewError(f"zip entry {info.filename!r} is a link or a special file")
                if info.flag_bits & 0x1:
                    raise ReviewError(f"zip entry {info.filename!r} is encrypted")
                suffix = PurePosixPath(info.filename).suffix.lower()
                if (not parts or any(part.startswith(".") or part == "__MACOSX" for part in parts)
                        or suffix not in IMAGE_SUFFIXES + TABLE_SUFFIXES + ANNOTATION_SUFFIXES):
                    continue
                relative = "/".join(parts)
                if relative.lower() in seen:
                    raise ReviewError(f"zip entry {info.filename!r} appears twice")
                seen.add(relative.lower())
                target = dest.joinpath(*parts)
                if not target.resolve().is_relative_to(dest.resolve()):
                    raise ReviewError(f"zip entry {info.filename!r} leaves the extraction folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source:
                    budget -= _copy_limited(source, target, info.file_size, budget, info.filename)
                if suffix in IMAGE_SUFFIXES:
                    _check_image_size(target, info.filename, max_image_pixels)
        return _dataset_root(dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError) as error:
        _empty(dest)
        raise ReviewError(f"{Path(zip_path).name} is not a readable zip ({type(error).__name__}: {error})") from None
    except ReviewError:
        _empty(dest)
        raise


def _empty(folder: Path) -> None:
    """Remove what an extraction wrote into ``folder`` (new or empty when it started)."""
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def resolve_server_dataset(path: str | Path) -> Path:
    """A data set folder on the server, only where the operator allows it (SPML_ALLOW_SERVER_PATHS=1):
    otherwise any visitor of the app could read the server's files."""
    if os.environ.get(SERVER_PATHS_VARIABLE) != "1":
        raise PermissionError(f"reading folders on the server is off; the operator can set {SERVER_PATHS_VARIABLE}=1")
    root = Path(path).expanduser().resolve()
    if not (root / CLASSES_FILE).is_file():
        raise ReviewError(f"{root} is not a data set folder (no {CLASSES_FILE})")
    return root


def suspect_evidence(model: LoadedModel, dataset_root: str | Path, row: dict[str, Any]) -> dict[str, Any]:
    """The evidence of one report row for the review screen: the image, the annotated positive's CAM
    as a heat map, the masked image, the box and crop of the region, and the numbers.

    Images are (H, W, 3) uint8 arrays at the image's own size. ``positive_given`` is False for an
    image without an annotated positive: the audit used the whole image there, and the maps shown are
    those of the top prediction.
    """
    root = Path(dataset_root).resolve()
    path = (root / str(row["image"])).resolve()
    if not path.is_relative_to(root):
        raise ReviewError(f"image {row['image']!r} is outside the data set folder")
    result = analyze(model, path, positive=str(row.get("positive") or "") or None)
    name = str(row["class"])
    return {
        "image": result.image,
        "overlay": result.overlay,
        "masked_image": result.masked_image,
        "crop": result.crop,
        "box": result.box,
        "class": name,
        "positive": result.positive,
        "positive_given": result.positive_given,
        "probability": result.probabilities[name],
        "logit": result.logits[name],
        "masked_logit": result.masked_logits[name],
        "gap": result.gaps[name],
        "rejected": name in result.rejected,
        "gap_threshold": result.gap_threshold,
    }
