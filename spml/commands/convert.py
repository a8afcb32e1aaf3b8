"""``python -m spml convert {coco,voc,yolo,imagefolder} SOURCE --out DATASET``: a data set as people have it,
written in the generic format with every annotated label observed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spml.data.importers import FORMATS, ConvertError, convert


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert a COCO, VOC, YOLO or imagefolder data set to the generic format",
        description="Images are referenced where they lie (DATASET/images links to their folder when it is "
                    "outside DATASET), never copied. Every label of the source is an annotated (observed) label.")
    parser.add_argument("format", choices=FORMATS)
    parser.add_argument("source", type=Path, help="coco: the instances JSON (or its folder); voc: the folder with "
                        "Annotations/ and JPEGImages/; yolo: the folder with data.yaml; imagefolder: the folder "
                        "with metadata.jsonl or metadata.csv, or with one folder a class (<class>/<image>); either "
                        "may sit in split folders train/, validation/, test/")
    parser.add_argument("--out", type=Path, required=True, help="the data set folder to write")
    parser.add_argument("--images", type=Path, help="coco, voc: the image folder (default: found beside the source)")
    parser.add_argument("--column", help="imagefolder: the metadata column holding the list of labels "
                        "(default: the one list-valued column)")
    parser.add_argument("--skip-bad", action="store_true", help="leave bad entries out (listed) instead of stopping")
    parser.add_argument("--overwrite", action="store_true", help="replace a different data set in --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        result = convert(args.format, args.source, args.out, images=args.images, skip_bad=args.skip_bad,
                         overwrite=args.overwrite, column=args.column)
    except (ConvertError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{split} {count}" for split, count in result.images.items())
    print(f"{args.format}: wrote {result.out} ({result.classes} classes; {sizes} images)")
    if result.unlabelled:
        print(f"left out {result.unlabelled} images without any label")
    if result.skipped:
        print(f"skipped {len(result.skipped)} bad entries:")
        for message in result.skipped:
            print(f"  {message}")
    return 0
