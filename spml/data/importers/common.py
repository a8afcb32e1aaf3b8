"""What the importers share: the error type, the collected entries, and writing them as a data set.

An importer reads a format into a :class:`Collected`: class names in the format's order, and per split
the images (paths relative to one image folder) with their labels. :func:`write_collected` turns that
into the generic format with no ``positive`` column (the data set as annotated), naming the images
through a link to their folder when it lies outside the data set folder: nothing is copied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from spml.data.generic import SEPARATOR
from spml.data.writer import Row, check_writable, link_images, render_dataset, write_rendered

IMAGES_LINK = "images"  # DATASET/images -> the source's image folder, when it lies outside DATASET


class ConvertError(ValueError):
    """Malformed input; the message names the file, the entry and the problem."""


@dataclass
class Entry:
    """One image of the source: its path relative to the image folder (forward slashes) and its labels."""

    image: str
    labels: list[str]
    # (class, (x0, y0, x1, y1)) in the image's own pixels, where the format draws boxes (COCO)
    boxes: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list)


@dataclass
class Collected:
    """What an importer read: classes in the format's order, entries per split, what was left out."""

    classes: list[str]
    image_root: Path
    splits: dict[str, list[Entry]]
    skipped: list[str] = field(default_factory=list)  # bad entries left out with --skip-bad, with reasons
    unlabelled: int = 0  # images without any label, left out (nothing in them is annotated)


class Problems:
    """Bad entries: raised at once, or (``skip_bad``) collected with their messages."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.messages: list[str] = []

    def bad(self, message: str) -> None:
        if not self.skip_bad:
            raise ConvertError(message)
        self.messages.append(message)


def check_class_name(name: object, where: str) -> str:
    """A class name the data set format can hold, or a ConvertError naming ``where`` it came from."""
    if not isinstance(name, str) or not name.strip():
        raise ConvertError(f"{where}: class name {name!r} is not a non-empty string")
    if SEPARATOR in name or "\n" in name or name != name.strip():
        raise ConvertError(f"{where}: class name {name!r} cannot be stored (contains ';' or a newline, or is padded)")
    return name


def relative_image(name: object, where: str) -> str:
    """``name`` as a relative path with forward slashes that stays inside its folder."""
    if not isinstance(name, str) or not name.strip():
        raise ConvertError(f"{where}: image name {name!r} is not a non-empty string")
    path = PurePosixPath(name.strip().replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise ConvertError(f"{where}: image path {name!r} must be relative and stay inside the image folder")
    return path.as_posix()


def ordered_unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def write_collected(collected: Collected, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``collected`` to ``out`` in the generic format (no positive column); returns ``out``.

    Images keep their place: when the image folder lies inside ``out`` the CSVs name them relative to
    ``out``; otherwise ``out/images`` links to the folder and the CSVs name ``images/...``.
    """
    out = Path(out).expanduser().absolute()
    root = collected.image_root.resolve()
    try:
        prefix = PurePosixPath(root.relative_to(out.resolve()).as_posix())
        link = False
    except ValueError:
        prefix, link = PurePosixPath(IMAGES_LINK), True
    splits = {
        name: [Row(image=(prefix / entry.image).as_posix(), labels=entry.labels) for entry in entries]
        for name, entries in collected.splits.items()
        if entries
    }
    if "train" not in splits or not collected.classes:
        raise ConvertError(f"{collected.image_root}: no image with a label to convert")
    files = render_dataset(collected.classes, splits)
    check_writable(out, files, overwrite)
    if link:
        link_images(out / IMAGES_LINK, root, overwrite)
    return write_rendered(out, files)
