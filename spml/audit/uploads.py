"""Safe ways in for user data: uploaded zips and, where the operator allows it, server folders.

User data is hostile until proven otherwise: :func:`safe_extract_zip` extracts only images and
CSV/TXT files, refuses path traversal, links and special files, and bounds the total size, the file
count and the image dimensions; :func:`resolve_server_dataset` reads a folder on the server only where
``SPML_ALLOW_SERVER_PATHS=1``.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from PIL import Image

from spml.audit.review import ReviewError
from spml.data.generic import CLASSES_FILE
from spml.data.images import IMAGE_SUFFIXES

TABLE_SUFFIXES = (".csv", ".txt")
# The annotation files of the layouts spml.data.importers reads: COCO and imagefolder JSON(L), VOC XML, YOLO YAML.
ANNOTATION_SUFFIXES = (".json", ".jsonl", ".xml", ".yaml", ".yml")
MAX_ZIP_BYTES = 2 * 1024**3
MAX_ZIP_FILES = 100_000
MAX_IMAGE_PIXELS = 40_000_000
SERVER_PATHS_VARIABLE = "SPML_ALLOW_SERVER_PATHS"
_COPY_CHUNK = 1 << 20


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


def dataset_root(dest: Path) -> Path:
    """The data set inside the extraction folder ``dest``: the shallowest folder holding classes.txt, or
    ``dest`` itself when it holds a COCO, VOC, YOLO or imagefolder layout instead. ReviewError for
    neither, or for several data sets side by side."""
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
        return dataset_root(dest)
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
