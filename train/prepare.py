"""``python -m train prepare``: turn a benchmark download into the generic data set format.

For VOC 2012, COCO 2014, NUS-WIDE and CUB-200-2011 this follows the protocol of Cole et al.
(method.md sections 4 and 4b) image for image: the official training set, in the reference's image
order, gets its single positives from one ``RandomState(1200)`` and is then split 80/20 into train
and val; the official validation set is the test split, with its own positives drawn by a fresh
``RandomState(1200)``. The CSVs carry the full labels and the ``positive`` column.

Images are not copied. ``DATASET/images`` is a symbolic link to the download's image folder (an
absolute path), and the CSVs name images as ``images/<path as the reference names it>``. The CSVs
are thus the same on every machine, carry no ``..``, and the data set folder can move; only the
download must stay where it is (re-run prepare, or re-point the link, if it moves).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from spml.data.images import ImageLoadError, load_image
from spml.data.importers import coco as coco_importer
from spml.data.importers.common import ConvertError
from spml.data.protocol import protocol_split, sample_single_positive
from spml.data.scenes import TRAIN_PHOTOS_MODES, make_photo_scenes
from spml.data.synthetic import make_synthetic_dataset, partial_positives
from spml.data.writer import Row, check_writable, link_images, render_dataset, write_rendered

BENCHMARKS = ("voc", "coco", "nuswide", "cub")
IMAGES_LINK = "images"

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]  # fmt: skip

# The 81 concepts in the order of NUS-WIDE's own Concepts81.txt (alphabetical), the order of its label
# files. Cole et al. do not publish the column order of their re-crawl's label matrix; a Concepts81.txt
# or classes.txt found beside the .npy files takes precedence over this list.
NUSWIDE_CLASSES = [
    "airport", "animal", "beach", "bear", "birds", "boats", "book", "bridge", "buildings", "cars",
    "castle", "cat", "cityscape", "clouds", "computer", "coral", "cow", "dancing", "dog", "earthquake",
    "elk", "fire", "fish", "flags", "flowers", "food", "fox", "frost", "garden", "glacier",
    "grass", "harbor", "horses", "house", "lake", "leaf", "map", "military", "moon", "mountain",
    "nighttime", "ocean", "person", "plane", "plants", "police", "protest", "railroad", "rainbow",
    "reflection", "road", "rocks", "running", "sand", "sign", "sky", "snow", "soccer", "sports", "statue",
    "street", "sun", "sunset", "surf", "swimmers", "tattoo", "temple", "tiger", "tower", "town",
    "toy", "train", "tree", "valley", "vehicle", "water", "waterfall", "wedding", "whales", "window",
    "zebra",
]  # fmt: skip


class PrepareError(ValueError):
    """The download is not laid out as expected; the message names the missing or malformed file."""


@dataclass
class Official:
    """A benchmark's official training and validation sets, in the reference's image order."""

    classes: list[str]
    image_dir: Path  # what DATASET/images links to; image names below are relative to it
    train_images: list[str]
    train_labels: np.ndarray  # (N, C) {0, 1}
    test_images: list[str]
    test_labels: np.ndarray
    note: str = ""


def _need(path: Path, hint: str) -> Path:
    if not path.exists():
        raise PrepareError(f"{path}: not found ({hint})")
    return path


def _first_existing(candidates: list[Path]) -> Path | None:
    return next((c for c in candidates if c.exists()), None)


def read_voc(root: Path, progress: bool = True) -> Official:
    """VOC 2012: images with a positive in ``ImageSets/Main/<class>_<split>.txt``, sorted by file name."""
    hint = "--root must be the folder holding VOCdevkit/, as VOCtrainval_11-May-2012.tar unpacks"
    voc = _need(root / "VOCdevkit" / "VOC2012", hint)
    main = _need(voc / "ImageSets" / "Main", hint)
    image_dir = _need(voc / "JPEGImages", hint)
    splits: dict[str, tuple[list[str], np.ndarray]] = {}
    for split in ("train", "val"):
        positives: dict[str, list[int]] = {}
        for c, name in enumerate(tqdm(VOC_CLASSES, desc=f"VOC {split} lists", disable=not progress)):
            path = _need(main / f"{name}_{split}.txt", hint)
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2 or parts[1] not in ("1", "0", "-1"):
                    raise PrepareError(f"{path}, line {number}: expected '<image id> <1|0|-1>', got {line!r}")
                if parts[1] == "1":  # 0 marks a difficult object: not a positive
                    positives.setdefault(f"{parts[0]}.jpg", []).append(c)
        # The reference sorts file names (id + ".jpg"), not ids.
        names = sorted(positives)
        labels = np.zeros((len(names), len(VOC_CLASSES)), dtype=np.uint8)
        for i, image in enumerate(names):
            labels[i, positives[image]] = 1
        splits[split] = (names, labels)
    return Official(VOC_CLASSES, image_dir, *splits["train"], *splits["val"])


def read_coco(root: Path, progress: bool = True) -> Official:
    """COCO 2014: images with an annotation, ids sorted as strings; classes in ``categories`` order."""
    hint = "--root must be the folder holding annotations/, train2014/ and val2014/"
    classes: list[str] | None = None
    splits: dict[str, tuple[list[str], np.ndarray]] = {}
    for split in ("train", "val"):
        path = _need(root / "annotations" / f"instances_{split}2014.json", hint)
        _need(root / f"{split}2014", hint)
        if progress:
            print(f"reading {path} ...", file=sys.stderr)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            categories = [(int(c["id"]), str(c["name"])) for c in data["categories"]]
            annotations = [(int(a["image_id"]), int(a["category_id"])) for a in data["annotations"]]
        except (ValueError, KeyError, TypeError) as error:
            raise PrepareError(f"{path}: not a COCO instances file ({error!r})") from None
        names = [name for _, name in categories]
        if classes is None:
            classes = names
        elif names != classes:
            raise PrepareError(f"{path}: categories differ from those of instances_train2014.json")
        column = {cat_id: i for i, (cat_id, _) in enumerate(categories)}
        ids = sorted({str(image_id) for image_id, _ in annotations})  # as strings, like the reference
        row = {int(image_id): i for i, image_id in enumerate(ids)}
        labels = np.zeros((len(ids), len(classes)), dtype=np.uint8)
        for image_id, category in tqdm(annotations, desc=f"COCO {split} annotations", disable=not progress):
            if category not in column:
                raise PrepareError(f"{path}: image {image_id} has an unknown category id {category}")
            labels[row[image_id], column[category]] = 1
        files = [f"{split}2014/COCO_{split}2014_{int(image_id):012d}.jpg" for image_id in ids]
        splits[split] = (files, labels)
    assert classes is not None
    return Official(classes, root, *splits["train"], *splits["val"])


def _nuswide_classes(folders: list[Path], num_columns: int) -> tuple[list[str], str]:
    names = ("Concepts81.txt", "ConceptsList/Concepts81.txt", "classes.txt")
    candidates = [folder / name for folder in folders for name in names]
    found = _first_existing(candidates)
    if found is None:
        return NUSWIDE_CLASSES, "class names: NUS-WIDE Concepts81 order (built in)"
    names = [line.strip() for line in found.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != num_columns:
        raise PrepareError(f"{found}: {len(names)} class names for a label matrix of {num_columns} columns")
    return names, f"class names: {found}"


def read_nuswide(root: Path, progress: bool = True) -> Official:
    """NUS-WIDE (Cole et al.'s re-crawl): ``formatted_*`` arrays, already in protocol order."""
    names = [f"formatted_{s}_{k}.npy" for s in ("train", "val") for k in ("labels", "images")]
    base = next((d for d in (root, root.parent) if all((d / n).is_file() for n in names)), None)
    if base is None:
        raise PrepareError(
            f"{root / names[0]}: not found (NUS-WIDE needs {', '.join(names)} from Cole et al.'s release "
            f"in --root or its parent)"
        )
    arrays: dict[str, np.ndarray] = {}
    for name in names:
        try:
            arrays[name] = np.load(base / name, allow_pickle=False)  # never unpickle downloaded files
        except ValueError as error:
            raise PrepareError(f"{base / name}: cannot be read without unpickling ({error})") from None
    splits: dict[str, tuple[list[str], np.ndarray]] = {}
    for split in ("train", "val"):
        labels = arrays[f"formatted_{split}_labels.npy"]
        images = arrays[f"formatted_{split}_images.npy"]
        if labels.ndim != 2 or images.ndim != 1 or len(images) != len(labels):
            raise PrepareError(
                f"{base}: formatted_{split}_labels.npy {labels.shape} and formatted_{split}_images.npy "
                f"{images.shape} do not match"
            )
        if not np.isin(labels, (0, 1)).all():
            raise PrepareError(f"{base / f'formatted_{split}_labels.npy'}: labels must be 0 or 1")
        splits[split] = ([str(p).replace("\\", "/") for p in images], labels.astype(np.uint8))
    first = splits["train"][0][0] if splits["train"][0] else ""
    image_dir = _first_existing(
        [d for d in (root / "Flickr", base / "Flickr", root) if (d / first).is_file()]
    )
    if image_dir is None:
        raise PrepareError(f"{root / 'Flickr' / first}: not found (Flickr.zip unpacks to --root/Flickr/)")
    classes, note = _nuswide_classes([root, base], splits["train"][1].shape[1])
    return Official(classes, image_dir, *splits["train"], *splits["val"], note=note)


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split(maxsplit=1)
        if not parts:
            continue
        if len(parts) != 2:
            raise PrepareError(f"{path}, line {number}: expected '<id> <value>', got {line!r}")
        pairs.append((parts[0], parts[1].strip()))
    return pairs


def read_cub(root: Path, progress: bool = True) -> Official:
    """CUB-200-2011 attributes: ``is_present`` labels, the official split, images.txt order."""
    hint = "--root must be the folder holding CUB_200_2011/ and attributes.txt, as CUB_200_2011.tgz unpacks"
    cub = _first_existing([root / "CUB_200_2011" / "CUB_200_2011", root / "CUB_200_2011"])
    cub = _need(cub or root / "CUB_200_2011", hint)
    attributes_path = _first_existing([root / "attributes.txt", cub.parent / "attributes.txt"])
    attributes = _read_pairs(_need(attributes_path or root / "attributes.txt", hint))
    classes = [name for _, name in attributes]
    images = _read_pairs(_need(cub / "images.txt", hint))
    split_path = _need(cub / "train_test_split.txt", hint)
    is_train = dict(_read_pairs(split_path))
    labels_path = _need(cub / "attributes" / "image_attribute_labels.txt", hint)
    row = {image_id: i for i, (image_id, _) in enumerate(images)}
    column = {attr_id: j for j, (attr_id, _) in enumerate(attributes)}
    labels = np.zeros((len(images), len(classes)), dtype=np.uint8)
    seen = np.zeros(labels.shape, dtype=bool)
    with labels_path.open(encoding="utf-8") as handle:
        for number, line in enumerate(
            tqdm(handle, desc="CUB attribute labels", disable=not progress), start=1
        ):
            # '<image> <attribute> <is_present> <certainty> <time>'; a few lines of the release carry an
            # extra field, so only the first three are read.
            parts = line.split(None, 3)
            if not parts:
                continue
            if len(parts) < 3 or parts[0] not in row or parts[1] not in column or parts[2] not in ("0", "1"):
                raise PrepareError(f"{labels_path}, line {number}: unexpected {line.strip()!r}")
            i, j = row[parts[0]], column[parts[1]]
            labels[i, j] = parts[2] == "1"
            seen[i, j] = True
    if not seen.all():
        i, j = map(int, np.argwhere(~seen)[0])
        raise PrepareError(f"{labels_path}: no row for image {images[i][0]}, attribute {attributes[j][0]}")
    missing = [image_id for image_id, _ in images if image_id not in is_train]
    if missing:
        raise PrepareError(f"{split_path}: no entry for image {missing[0]}")
    train = np.array([is_train[image_id] == "1" for image_id, _ in images])
    files = [path for _, path in images]
    return Official(
        classes,
        _need(cub / "images", hint),
        [f for f, t in zip(files, train, strict=True) if t],
        labels[train],
        [f for f, t in zip(files, train, strict=True) if not t],
        labels[~train],
    )


READERS = {"voc": read_voc, "coco": read_coco, "nuswide": read_nuswide, "cub": read_cub}


def _check_images(official: Official, progress: bool) -> None:
    names = official.train_images + official.test_images
    missing = [
        n
        for n in tqdm(names, desc="checking images", disable=not progress)
        if not (official.image_dir / n).is_file()
    ]
    if missing:
        raise PrepareError(
            f"{official.image_dir / missing[0]}: not found ({len(missing)} of {len(names)} images are "
            f"missing under {official.image_dir})"
        )


def protocol_rows(official: Official) -> dict[str, list[Row]]:
    """Rows of train/val/test by the protocol, with drawn positives and full labels."""

    def rows(images: list[str], labels: np.ndarray, observed: np.ndarray, idx: np.ndarray) -> list[Row]:
        out = []
        for i in idx:
            names = [official.classes[j] for j in np.flatnonzero(labels[i])]
            positive = np.flatnonzero(observed[i])
            out.append(
                Row(
                    image=f"{IMAGES_LINK}/{images[i]}",
                    labels=names,
                    positive=official.classes[positive[0]] if positive.size else None,
                )
            )
        return out

    # Positives over the whole official training set in protocol order, before the split.
    train_observed = sample_single_positive(official.train_labels)
    train_idx, val_idx = protocol_split(len(official.train_images))
    test_observed = sample_single_positive(official.test_labels)  # a fresh RandomState(1200)
    return {
        "train": rows(official.train_images, official.train_labels, train_observed, train_idx),
        "val": rows(official.train_images, official.train_labels, train_observed, val_idx),
        "test": rows(
            official.test_images, official.test_labels, test_observed, np.arange(len(official.test_images))
        ),
    }


def prepare_benchmark(
    name: str, root: Path, out: Path, overwrite: bool = False, progress: bool = True
) -> Path:
    """Read the download at ``root`` and write the protocol's data set to ``out``; returns ``out``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise PrepareError(f"{root}: not a directory")
    official = READERS[name](root, progress)
    _check_images(official, progress)
    splits = protocol_rows(official)
    out = Path(out).expanduser()
    files = render_dataset(official.classes, splits)
    check_writable(out, files, overwrite)
    link_images(out / IMAGES_LINK, official.image_dir, overwrite)
    write_rendered(out, files)
    sizes = " / ".join(f"{split} {len(rows)}" for split, rows in splits.items())
    print(f"{name}: wrote {out} ({sizes}; {len(official.classes)} classes)", file=sys.stderr)
    if official.note:
        print(f"{name}: {official.note}", file=sys.stderr)
    return out


COCO_SPLIT = {"val": 0.1, "test": 0.2}  # the rest trains; split by photo
BOXES_FILE = "boxes.csv"  # image,class,x0,y0,x1,y1: every annotated box, in the image's own pixels


def split_photos(count: int, seed: int, fractions: dict[str, float] = COCO_SPLIT) -> dict[str, np.ndarray]:
    """Sorted indices of ``count`` photos per split, from one seeded permutation: val and test get
    ``round(fraction * count)`` photos each, train the rest."""
    order = np.random.default_rng(seed).permutation(count)
    sizes = {name: int(round(fraction * count)) for name, fraction in fractions.items()}
    train = count - sum(sizes.values())
    if train < 1:
        raise PrepareError(f"{count} photos are too few to split into train, val and test")
    splits, start = {"train": np.sort(order[:train])}, train
    for name, size in sizes.items():
        splits[name] = np.sort(order[start:start + size])
        start += size
    return splits


def _drawn_positives(labels: list[list[str]], classes: list[str], seed: int, partial: float | None,
                     photos: np.ndarray) -> list[list[str]]:
    """Each row's observed labels: one drawn by the protocol (uniform among its labels, ``RandomState(1200)``
    over the rows in order), or with ``partial`` each label kept with that probability (at least one),
    drawn from a generator of each photo's own (its number ``photos[i]`` in the whole set)."""
    if partial is not None:
        return [partial_positives(seed, int(p), names, partial) for p, names in zip(photos, labels, strict=True)]
    column = {name: j for j, name in enumerate(classes)}
    matrix = np.zeros((len(labels), len(classes)), dtype=np.uint8)
    for i, names in enumerate(labels):
        matrix[i, [column[name] for name in names]] = 1
    return [[classes[j] for j in np.flatnonzero(row)] for row in sample_single_positive(matrix)]


def prepare_coco_set(instances: Path, images: Path, out: Path, *, seed: int = 0, partial: float | None = None,
                     skip_bad: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """One COCO-format annotated set (``instances.json`` and its image folder) as a data set split by us.

    The photos are split by photo into train / val / test (:data:`COCO_SPLIT`, seeded); every split keeps
    every label in ``labels``. Each photo's ``positive``: one label drawn by the protocol (per split, over
    its rows in file order), or with ``partial`` each label kept with probability P, at least one. The
    boxes go to ``DATASET/boxes.csv`` (scoring where the audit looks); images are linked, not copied.
    A box of an unknown category, a missing or undecodable image, a photo with no box: an error naming
    it, or with ``skip_bad`` left out and counted."""
    if partial is not None and not 0.0 < partial <= 1.0:
        raise PrepareError(f"--partial must be in (0, 1], got {partial}")
    for path, what in ((instances, "the instances file"), (images, "the image folder")):
        if not path.exists():
            raise PrepareError(f"{path}: not found ({what})")
    try:
        collected = coco_importer.read(instances, images, skip_bad=skip_bad, require_labels=True)
    except ConvertError as error:
        raise PrepareError(str(error)) from None
    skipped = list(collected.skipped)
    entries = []
    for entry in tqdm(sorted(collected.splits["train"], key=lambda e: e.image), desc="checking images",
                      unit="img", disable=not progress):
        try:
            load_image(collected.image_root / entry.image)
        except ImageLoadError as error:
            if not skip_bad:
                raise PrepareError(f"{error} (or pass --skip-bad to leave it out)") from None
            skipped.append(str(error))
            continue
        entries.append(entry)
    if not entries:
        raise PrepareError(f"{instances}: no usable photo")
    splits: dict[str, list[Row]] = {}
    for name, index in split_photos(len(entries), seed).items():
        chosen = [entries[i] for i in index]
        positives = _drawn_positives([e.labels for e in chosen], collected.classes, seed, partial, index)
        splits[name] = [Row(f"{IMAGES_LINK}/{e.image}", e.labels, positive=p)
                        for e, p in zip(chosen, positives, strict=True)]
    files = render_dataset(collected.classes, splits)
    boxes = ["image,class,x0,y0,x1,y1\n"] + [
        f"{IMAGES_LINK}/{e.image},{name},{x0:g},{y0:g},{x1:g},{y1:g}\n"
        for e in entries for name, (x0, y0, x1, y1) in e.boxes
    ]
    files[BOXES_FILE] = "".join(boxes)
    out = Path(out).expanduser()
    check_writable(out, files, overwrite)
    link_images(out / IMAGES_LINK, collected.image_root, overwrite)
    write_rendered(out, files)
    sizes = " / ".join(f"{name} {len(rows)}" for name, rows in splits.items())
    kind = f"labels kept with p = {partial}" if partial is not None else "one positive a photo"
    print(f"coco: wrote {out} ({sizes} photos; {len(collected.classes)} classes; {kind}; "
          f"{len(boxes) - 1} boxes)", file=sys.stderr)
    if skipped:
        print(f"coco: left out {len(skipped)} bad entries (--skip-bad), the first: {skipped[0]}", file=sys.stderr)
    return out


def add_prepare_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``prepare {voc,coco,nuswide,cub,synthetic}`` on a command line's subparsers."""
    parser = subparsers.add_parser(
        "prepare",
        help="write a data set in the generic format from a benchmark download or the synthetic world",
        description="Write a data set in the generic format: a benchmark download split and given single "
        "positives by the protocol of Cole et al. (images are linked, not copied), or the synthetic world.",
    )
    sources = parser.add_subparsers(dest="source", required=True, metavar="{voc,coco,nuswide,cub,synthetic,photos}")
    for name in BENCHMARKS:
        sub = sources.add_parser(name, help=f"{name}: split and draw single positives by the protocol")
        if name != "coco":
            sub.add_argument("--root", type=Path, required=True, help="the folder the download unpacks into")
        else:
            sub.add_argument("--root", type=Path, help="the COCO 2014 download (annotations/, train2014/, val2014/): "
                             "the protocol's official splits; or --instances with --images")
            sub.add_argument("--instances", type=Path, help="any COCO-format instances JSON (e.g. "
                             "../shared/coco/instances.json): one annotated set, split by photo 70 / 10 / 20")
            sub.add_argument("--images", type=Path, help="the folder the instances' file_name entries are under")
            sub.add_argument("--seed", type=int, default=0, help="seed of the split by photo (default 0)")
            sub.add_argument("--partial", type=float, default=None, metavar="P",
                             help="keep each label of a photo with probability P (at least one) "
                             "instead of one positive")
            sub.add_argument("--skip-bad", action="store_true",
                             help="leave out (and count) bad boxes and missing, broken or unannotated photos")
        _common(sub)
    synthetic = sources.add_parser("synthetic", help="render the synthetic world of coloured shapes")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--train", type=int, default=1200, help="training images (default 1200)")
    synthetic.add_argument("--val", type=int, default=300, help="validation images (default 300)")
    synthetic.add_argument("--test", type=int, default=600, help="test images (default 600)")
    synthetic.add_argument("--image-size", type=int, default=128, help="side in pixels (default 128)")
    synthetic.add_argument("--partial", type=float, nargs="?", const=0.5, default=None, metavar="P",
                           help="partial labels: keep each true training label with probability P (default 0.5), "
                                "at least one per image; the left-out ones go to DATASET/left_out.csv")
    _common(synthetic)
    photos = sources.add_parser("photos", help="scenes of 1 to 4 photos of distinct classes from an image-folder set")
    photos.add_argument("--photos", type=Path, required=True,
                        help="an image-folder data set: one folder a class, one label a photo (../shared/photos/train)")
    photos.add_argument("--seed", type=int, default=0, help="seed of the photo split and the scenes (default 0)")
    photos.add_argument("--train", type=int, default=2400, help="training scenes (default 2400)")
    photos.add_argument("--val", type=int, default=600, help="validation scenes (default 600)")
    photos.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of each class's photos kept for validation scenes (default 0.2)")
    photos.add_argument("--image-size", type=int, default=448, help="scene side in pixels (default 448)")
    photos.add_argument("--mix", type=float, nargs=4, default=None, metavar=("P1", "P2", "P3", "P4"),
                        help="shares of scenes with 1, 2, 3 and 4 photos (default 0.2 0.3 0.2 0.3)")
    photos.add_argument("--train-photos", choices=TRAIN_PHOTOS_MODES,
                        help="train.csv also lists every training photo alone beside the scenes (val stays scenes): "
                             "single-positive (its class observed, the others unknown) or single-label (the others "
                             "known absent, as a folder of one class declares)")
    _common(photos)
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="the data set folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace a different data set in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_prepare(args: argparse.Namespace) -> int:
    """Run ``prepare`` from parsed arguments; returns the exit status (1 with a message on failure)."""
    progress = not args.no_progress
    try:
        if args.source == "synthetic":
            out = make_synthetic_dataset(
                args.out, seed=args.seed, train=args.train, val=args.val, test=args.test,
                image_size=args.image_size, progress=progress, overwrite=args.overwrite, partial=args.partial,
            )  # fmt: skip
            sizes = f"train {args.train} / val {args.val} / test {args.test}"
            if args.partial is not None:
                sizes += f", partial labels kept with p = {args.partial}"
            print(f"synthetic: wrote {out} ({sizes})", file=sys.stderr)
        elif args.source == "photos":
            options = {} if args.mix is None else {"mix": tuple(args.mix)}
            out = make_photo_scenes(args.photos, args.out, seed=args.seed, train=args.train, val=args.val,
                                    val_fraction=args.val_fraction, image_size=args.image_size,
                                    overwrite=args.overwrite, progress=progress, train_photos=args.train_photos,
                                    **options)
            alone = f" and every training photo alone ({args.train_photos})" if args.train_photos else ""
            print(f"photos: wrote {out} (scenes: train {args.train}{alone} / val {args.val}) and {out / 'photos'} "
                  "(the plain photos, split the same way)", file=sys.stderr)
        elif args.source == "coco" and args.root is None:
            if args.instances is None or args.images is None:
                raise PrepareError("prepare coco needs --root DIR (the COCO 2014 download), or --instances FILE "
                                   "with --images DIR (one COCO-format set)")
            prepare_coco_set(args.instances, args.images, args.out, seed=args.seed, partial=args.partial,
                             skip_bad=args.skip_bad, overwrite=args.overwrite, progress=progress)
        else:
            if args.source == "coco" and args.instances is not None:
                raise PrepareError("prepare coco: give --root or --instances with --images, not both")
            prepare_benchmark(args.source, args.root, args.out, overwrite=args.overwrite, progress=progress)
    except (ValueError, FileExistsError) as error:  # bad layout, bad sizes, or a data set in the way
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
