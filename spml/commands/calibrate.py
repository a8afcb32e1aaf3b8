"""``python -m spml calibrate CKPT --data DATASET [--split train]``: store in a checkpoint the statistics of
its training images, with which ``analyze`` tells whether an image is from the model's world
(``result.in_distribution``). No retraining, no forward pass: a thumbnail descriptor per image
(``spml.familiarity``)."""

from __future__ import annotations

import argparse

from spml.checkpoint import CheckpointError, load_model
from spml.data.generic import DatasetError
from spml.familiarity import calibrate_checkpoint, sample_photos, split_features


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("calibrate", help="store the training images' statistics in a checkpoint")
    parser.add_argument("checkpoint", help="a local checkpoint directory (its config.json is rewritten)")
    parser.add_argument("--data", required=True, help="the data set the checkpoint was trained on")
    parser.add_argument("--split", default="train", help="the split to take the statistics of (default train)")
    parser.add_argument("--check", default=None, metavar="SPLIT",
                        help="then count the images of SPLIT (of the same world) taken for another world: "
                             "the false alarms")
    parser.add_argument("--photos", action="store_true",
                        help="then count scikit-image's sample photos taken for the model's world (misses)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        model = load_model(args.checkpoint)
        statistics = calibrate_checkpoint(args.checkpoint, model, args.data, args.split)
        if args.check:
            descriptors, shares = split_features(args.data, args.check)
            distances = statistics.distance(descriptors)
            alarms = int((~statistics.familiar(descriptors, shares)).sum())
            print(f"{args.check}: {alarms} of {len(distances)} images taken for another world "
                  f"({100.0 * alarms / len(distances):.2f}% false alarms; largest distance {distances.max():.3f}, "
                  f"threshold {statistics.threshold:.3f}; smallest saturated share {shares.min():.4f}, "
                  f"colour floor {statistics.colour_floor:.4f})")
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
    return 0
