"""``python -m spml predict``: probabilities, positive, CAM box and rejected labels of images."""

from __future__ import annotations

import argparse
import json

from spml.checkpoint import load_model
from spml.inspect import analyze


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("predict", help="analyse images with a checkpoint")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--checkpoint", default="checkpoints/demo", help="directory or hf://OWNER/NAME[@REV]")
    parser.add_argument("--positive", default=None,
                        help="the annotated positive, or several joined by ';' (default: top prediction)")
    parser.add_argument("--top", type=int, default=5, help="how many labels to print per image")
    parser.add_argument("--json", action="store_true", help="one JSON object per image instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load_model(args.checkpoint)
    failures = 0
    for path in args.images:
        try:
            result = analyze(model, path, positive=args.positive)
        except ValueError as error:  # unreadable image, unknown class: report and go on
            print(f"{path}: error: {error}")
            failures += 1
            continue
        top = sorted(result.probabilities.items(), key=lambda item: -item[1])[: args.top]
        if args.json:
            print(json.dumps({"image": path, "positive": result.positive, "box": result.box,
                              "probabilities": result.probabilities, "gaps": result.gaps,
                              "rejected": result.rejected}))
            continue
        labels = ", ".join(f"{name} {probability:.3f}" for name, probability in top)
        print(f"{path}: {labels}")
        print(f"  positive {result.positive} ({'given' if result.positive_given else 'top prediction'}), "
              f"CAM box {result.box}, rejected: {', '.join(result.rejected) or 'none'}")
    return 1 if failures else 0
