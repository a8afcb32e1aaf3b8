"""``python -m spml calibrate CKPT --data DATASET [--data DATASET ...] [--split train]``: store in a checkpoint
the statistics of its training images, with which ``analyze`` tells whether an image is from the model's world
(``result.in_distribution``). No retraining, no forward pass: a thumbnail descriptor per image
(``spml.familiarity``). Several data sets are taken together: a world of scenes and the single photos they are
made of, say. ``--check``, ``--photos`` and ``--others`` then count what the notice flags."""

from __future__ import annotations

import argparse

import numpy as np

from spml.checkpoint import CheckpointError, load_model
from spml.data.generic import DatasetError
from spml.data.sample_photos import sample_photos
from spml.familiarity import ImageStatistics, calibrate_checkpoint, describe, other_worlds, split_features


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("calibrate", help="store the training images' statistics in a checkpoint")
    parser.add_argument("checkpoint", help="a local checkpoint directory (its config.json is rewritten)")
    parser.add_argument("--data", required=True, action="append",
                        help="the data set the checkpoint was trained on; repeat to take several together")
    parser.add_argument("--split", default="train", help="the split to take the statistics of (default train)")
    parser.add_argument("--check", default=None, metavar="SPLIT",
                        help="then count the images of SPLIT of each data set (of the same world) taken for "
                             "another world: the false alarms")
    parser.add_argument("--photos", action="store_true",
                        help="then count scikit-image's sample photos taken for another world")
    parser.add_argument("--others", action="store_true",
                        help="then count the synthetic world's scenes, uniform noise and blank images taken for "
                             "another world, at the checkpoint's input size")
    parser.set_defaults(func=run)


def flagged_line(name: str, statistics: ImageStatistics, descriptors: np.ndarray, measures: np.ndarray) -> str:
    """How many of a set of images are taken for another world, and by which test (an image may fail several)."""
    distances = statistics.distance(descriptors)
    flagged = int((~statistics.familiar(descriptors, measures)).sum())
    tests = {"distance": int((distances > statistics.threshold).sum()),
             **{key.replace("_", " "): int((~passed).sum())
                for key, passed in statistics.within_limits(measures).items()}}
    return (f"{name}: {flagged} of {len(distances)} taken for another world ({100.0 * flagged / len(distances):.2f}%; "
            + ", ".join(f"{test} {count}" for test, count in tests.items())
            + f"; largest distance {distances.max():.3f}, threshold {statistics.threshold:.3f})")


def run(args: argparse.Namespace) -> int:
    try:
        model = load_model(args.checkpoint)
        statistics = calibrate_checkpoint(args.checkpoint, model, args.data, args.split)
        for data in args.data if args.check else []:
            print(flagged_line(f"{data} {args.check}", statistics, *split_features(data, args.check)))
    except (CheckpointError, DatasetError, ValueError) as error:
        print(f"error: {error}")
        return 2
    if args.photos:
        photos = sample_photos()
        verdicts = {name: statistics.in_distribution(photo) for name, photo in photos.items()}
        flagged = [name for name, (familiar, _, _) in verdicts.items() if not familiar]
        print(f"photos: {len(flagged)} of {len(photos)} flagged as another world; not flagged: "
              + (", ".join(f"{name} ({verdicts[name][1]:.2f})" for name in photos if name not in flagged) or "none"))
        for name in flagged:
            print(f"  {name}: {verdicts[name][2]}")
    if args.others:
        for name, images in other_worlds(model.image_size).items():
            print(flagged_line(name, statistics, *describe(images)))
    return 0
