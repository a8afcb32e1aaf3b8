"""Pascal VOC: ``Annotations/*.xml`` (one file per image) and ``JPEGImages/``.

The XML is parsed with defusedxml, which refuses entity expansion and external references (an
uploaded folder may hold a hostile file). An image's labels are the names of its objects, except
objects marked ``<difficult>1</difficult>``: VOC's own image-level lists (ImageSets/Main) do not count
an image whose only instances of a class are difficult as a positive, and ``train prepare voc`` follows
them. Classes are the names found, sorted (for VOC's 20 classes, the benchmark's order).
"""

from __future__ import annotations

from pathlib import Path
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as SafeElementTree
from defusedxml import DefusedXmlException

from spml.data.importers.common import (
    Collected,
    ConvertError,
    Entry,
    Problems,
    check_class_name,
    ordered_unique,
    relative_image,
)

NAME = "voc"
ANNOTATIONS = "Annotations"
IMAGES = "JPEGImages"


def is_voc_folder(folder: Path) -> bool:
    return (folder / ANNOTATIONS).is_dir() and any((folder / ANNOTATIONS).glob("*.xml"))


def _labels(path: Path, display: str) -> tuple[str | None, list[str]]:
    """(the image file named by the XML or None, the labels of its objects)."""
    try:
        tree = SafeElementTree.parse(path)
    except ParseError as error:
        raise ConvertError(f"{display}: malformed XML ({error})") from None
    except DefusedXmlException as error:
        reason = f"{type(error).__name__}: entities or external references"
        raise ConvertError(f"{display}: refused XML ({reason})") from None
    root = tree.getroot()
    if root.tag != "annotation":
        raise ConvertError(f"{display}: not a VOC annotation (root element <{root.tag}>)")
    filename = root.findtext("filename")
    labels = []
    for number, obj in enumerate(root.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise ConvertError(f"{display}, object {number}: no <name>")
        check_class_name(name, f"{display}, object {number}")
        if (obj.findtext("difficult") or "0").strip() != "1":
            labels.append(name)
    return (filename.strip() if filename and filename.strip() else None), ordered_unique(labels)


def read(source: Path, images: Path | None = None, skip_bad: bool = False) -> Collected:
    annotations = source / ANNOTATIONS
    if not annotations.is_dir():
        raise ConvertError(f"{source}: no {ANNOTATIONS}/ folder (a VOC folder holds Annotations/ and JPEGImages/)")
    root = images if images is not None else source / IMAGES
    if not root.is_dir():
        raise ConvertError(f"{root}: the image folder does not exist (give it with --images DIR)")
    problems = Problems(skip_bad)
    found: list[tuple[str, list[str]]] = []
    xml_files = sorted(annotations.glob("*.xml"))
    if not xml_files:
        raise ConvertError(f"{annotations}: no .xml files")
    for path in xml_files:
        display = f"{ANNOTATIONS}/{path.name}"
        try:
            filename, labels = _labels(path, f"{source / display}")
            # VOC names the file in <filename>; some tools leave it out, then the XML's own stem is the image.
            name = relative_image(filename or f"{path.stem}.jpg", f"{source / display}")
        except ConvertError as error:
            problems.bad(str(error))
            continue
        if not (root / name).is_file():
            problems.bad(f"{source / display}: missing image file {name!r} in {root}")
            continue
        found.append((name, labels))
    classes = sorted({label for _, labels in found for label in labels})
    if not classes:
        raise ConvertError(f"{annotations}: no object with a class name in any annotation")
    entries = [Entry(name, sorted(labels)) for name, labels in found if labels]
    unlabelled = sum(1 for _, labels in found if not labels)
    return Collected(classes, root, {"train": entries}, problems.messages, unlabelled)
