"""COCO instances JSON: image-level labels from the annotations, classes in the JSON's category order.

Read with the standard library's json: an instances file is plain JSON, and the image-level labels
need only three lists of it (images, categories, annotations). pycocotools would add a compiled
dependency and its mask and evaluation code for nothing here, and its loader reports malformed
entries with a KeyError rather than the file and entry.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from spml.data.importers.common import (
    Collected,
    ConvertError,
    Entry,
    Problems,
    check_class_name,
    ordered_unique,
    relative_image,
)

NAME = "coco"
REQUIRED_KEYS = ("images", "annotations", "categories")


def _is_id(value: object) -> bool:
    """COCO ids are integers (some tools write strings); anything else cannot be looked up."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as error:
        raise ConvertError(f"{path}: cannot read ({error})") from None
    except json.JSONDecodeError as error:
        raise ConvertError(f"{path}: malformed JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: not a COCO instances file (the top level is not an object)")
    for key in REQUIRED_KEYS:
        if not isinstance(data.get(key), list):
            raise ConvertError(f"{path}: not a COCO instances file (no list {key!r})")
    return data


def _load_if_coco(path: Path) -> dict | None:
    """The content of ``path`` when it is a JSON file holding COCO instances, else None."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    try:
        return _load(path)
    except ConvertError:
        return None


def is_coco_file(path: Path) -> bool:
    """Whether ``path`` looks like a COCO instances JSON: an object that names the three keys. A byte
    search, not a parse: detection must not parse an instances file of hundreds of megabytes that
    :func:`read` then parses (and checks) anyway."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        content = path.read_bytes()
    except OSError:
        return False
    return content.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") and all(
        f'"{key}"'.encode() in content for key in REQUIRED_KEYS)


def find_annotation_file(source: Path) -> tuple[Path, dict]:
    """``source`` itself when it is a file; else the one COCO instances JSON in it or in ``annotations/``;
    with its content (parsed once: an instances file can be hundreds of megabytes)."""
    if source.is_file():
        return source, _load(source)
    candidates: list[tuple[Path, dict]] = []
    for path in sorted(p for folder in (source, source / "annotations") if folder.is_dir()
                       for p in folder.glob("*.json")):
        data = _load_if_coco(path)
        if data is not None:
            # Only the content of the first is kept: more than one is an error below.
            candidates.append((path, data if not candidates else {}))
    if len(candidates) != 1:
        found = ", ".join(p.name for p, _ in candidates) or "none"
        raise ConvertError(f"{source}: expected one COCO instances JSON (found: {found}); name the file as SOURCE")
    return candidates[0]


def _image_folder(path: Path, images: list[dict], given: Path | None) -> Path:
    """``--images``, or the first folder near the JSON that holds its first images: the JSON's folder,
    its parent, or a folder named after the file (instances_train2017.json -> train2017/) in either."""
    if given is not None:
        if not given.is_dir():
            raise ConvertError(f"{given}: the image folder does not exist")
        return given
    names = [i["file_name"] for i in images[:20] if isinstance(i, dict) and isinstance(i.get("file_name"), str)]
    stem = path.stem.split("_")[-1]
    candidates = [path.parent, path.parent.parent, path.parent / stem, path.parent.parent / stem,
                  path.parent / "images", path.parent.parent / "images"]
    for folder in candidates:
        if names and any((folder / name).is_file() for name in names):
            return folder
    raise ConvertError(f"{path}: cannot find its images beside it (looked in {', '.join(map(str, candidates))}); "
                       "give the folder with --images DIR")


def _box(value: object, where: str) -> tuple[float, float, float, float]:
    """COCO's ``[x, y, width, height]`` as ``(x0, y0, x1, y1)``; a ConvertError naming ``where`` otherwise."""
    if (not isinstance(value, list) or len(value) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise ConvertError(f"{where}: bbox {value!r} is not [x, y, width, height]")
    x, y, width, height = (float(v) for v in value)
    if width < 0 or height < 0:
        raise ConvertError(f"{where}: bbox {value!r} has a negative width or height")
    return x, y, x + width, y + height


def read(source: Path, images: Path | None = None, skip_bad: bool = False, require_labels: bool = False) -> Collected:
    """The images of a COCO instances file with their labels (and boxes, where an annotation has one).

    ``require_labels``: an image without any annotation is a bad entry (an error, or skipped and listed
    with ``skip_bad``) instead of being left out and counted in ``unlabelled``; for sets where every
    photo is meant to be annotated, as ``train prepare coco`` reads them."""
    path, data = find_annotation_file(source)
    problems = Problems(skip_bad)
    classes: list[str] = []
    category_names: dict[object, str] = {}
    for number, category in enumerate(data["categories"]):
        where = f"{path}, categories[{number}]"
        if not isinstance(category, dict) or not _is_id(category.get("id")):
            raise ConvertError(f"{where}: a category needs an id and a name")
        name = check_class_name(category.get("name"), where)
        if name in classes:
            raise ConvertError(f"{where}: duplicate category name {name!r}")
        if category["id"] in category_names:
            raise ConvertError(f"{where}: duplicate category id {category['id']!r}")
        classes.append(name)
        category_names[category["id"]] = name
    if not classes:
        raise ConvertError(f"{path}: no categories")

    root = _image_folder(path, data["images"], images)
    files: dict[object, str] = {}
    for number, image in enumerate(data["images"]):
        where = f"{path}, images[{number}]"
        if not isinstance(image, dict) or not _is_id(image.get("id")):
            problems.bad(f"{where}: an image needs an id and a file_name")
            continue
        where += f" (id {image['id']})"
        try:
            name = relative_image(image.get("file_name"), where)
        except ConvertError as error:
            problems.bad(str(error))
            continue
        if image["id"] in files:
            problems.bad(f"{where}: duplicate image id")
        elif not (root / name).is_file():
            problems.bad(f"{where}: missing image file {name!r} in {root}")
        else:
            files[image["id"]] = name

    labels: dict[object, list[str]] = {image_id: [] for image_id in files}
    boxes: dict[object, list[tuple[str, tuple[float, float, float, float]]]] = {image_id: [] for image_id in files}
    known_images = {image.get("id") for image in data["images"] if isinstance(image, dict) and _is_id(image.get("id"))}
    for number, annotation in enumerate(data["annotations"]):
        where = f"{path}, annotations[{number}]"
        if not isinstance(annotation, dict):
            problems.bad(f"{where}: not an object")
            continue
        if "id" in annotation:
            where += f" (id {annotation['id']})"
        category, image_id = annotation.get("category_id"), annotation.get("image_id")
        if not _is_id(category) or category not in category_names:
            problems.bad(f"{where}: unknown category_id {category!r}")
        elif not _is_id(image_id) or image_id not in known_images:
            problems.bad(f"{where}: unknown image_id {image_id!r}")
        elif image_id in labels:  # an image left out above takes its annotations with it
            if "bbox" in annotation:
                try:
                    box = _box(annotation["bbox"], where)
                except ConvertError as error:
                    problems.bad(str(error))
                    continue
                boxes[image_id].append((category_names[category], box))
            labels[image_id].append(category_names[category])
    if require_labels:
        for image_id in [i for i, names in labels.items() if not names]:
            problems.bad(f"{path}: image {image_id!r} ({files[image_id]}) has no annotation (a photo with no box)")
            del labels[image_id]
    order = {name: i for i, name in enumerate(classes)}
    entries = [Entry(files[i], sorted(ordered_unique(names), key=order.__getitem__), boxes[i])
               for i, names in labels.items() if names]
    unlabelled = sum(1 for names in labels.values() if not names)
    return Collected(classes, root, {"train": entries}, problems.messages, unlabelled)
