"""``python -m train bench-photos``: the photos models against the anchor any user would try first.

On a data set made by ``train prepare photos`` (scenes in ``DATA``, the plain photos in ``DATA/photos``):

- each checkpoint's scene mAP on the val scenes at every ``--sizes`` (the app may analyse at a larger
  size than the model trained at: a scene of four photos at 448 px shows each photo at 224 px), and its
  top-1 on the val photos (the argmax over classes, each photo having one label) at its own size, the photo
  brought to the square input in each way (``stretch``: squeezed; ``letterbox``: fitted whole on grey, as in a
  scene of one photo), ``photo_top1`` being the checkpoint's own (its ``input.resize``, what the app does);
- the anchor: the ImageNet features of the same backbone (EfficientNet-Lite0, global average pooled,
  1280 values), a scikit-learn logistic regression fitted on the single training photos, scored the same
  way: top-1 on the val photos, scene mAP at every size from its per-class decision values and from its
  softmax probabilities (both shown: the softmax shares one unit among a scene's objects);
- each run's training figures from its ``metrics.csv`` (minutes, images/s, CALR's rejection precision).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from spml.checkpoint import LoadedModel, load_model
from spml.data import ImageDataset, Split, eval_transform, load_dataset
from spml.data.transforms import RESIZE_MODES, input_normalization
from spml.metrics import mean_average_precision
from spml.model import SPMLModel, create_model
from spml.runtime import atomic_write_text
from train.loop import predict

ANCHOR_C = (0.1, 1.0, 10.0)


def _loader(split: Split, image_size: int, network: SPMLModel, batch_size: int, workers: int,
            resize: str = "stretch") -> DataLoader:
    """The evaluation view, each image brought to the square input by ``resize``."""
    dataset = ImageDataset(split, eval_transform(image_size, *input_normalization(network), resize))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)


@torch.inference_mode()
def pooled_features(network: SPMLModel, loader: DataLoader, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """The backbone's globally average-pooled last feature map of every image, and the full labels."""
    network.eval()
    features, labels = [], []
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
        features.append(network(batch["image"]).features.mean(dim=(2, 3)).numpy())
        labels.append(batch["labels"].numpy())
    return np.concatenate(features), np.concatenate(labels)


def top1(scores: np.ndarray, labels: np.ndarray) -> float:
    """Percent of images whose best-scored class is one of their labels."""
    return float(100.0 * labels[np.arange(len(labels)), scores.argmax(axis=1)].mean())


def checkpoint_figures(model: LoadedModel, scenes: Split, photos: Split, sizes: list[int], batch_size: int,
                       workers: int) -> dict[str, Any]:
    device = torch.device("cpu")
    # A checkpoint may declare a larger input size (the app's) than it was trained at.
    figures: dict[str, Any] = {"trained_at": model.training.get("image_size", model.image_size),
                               "analysed_at": model.image_size}
    for size in sizes:
        scores, labels = predict(model.network, _loader(scenes, size, model.network, batch_size, workers), device)
        figures[f"scene_map_{size}"] = mean_average_precision(scores, labels)
    figures["resize"] = model.resize
    for resize in RESIZE_MODES:
        loader = _loader(photos, model.image_size, model.network, batch_size, workers, resize)
        scores, labels = predict(model.network, loader, device)
        figures[f"photo_top1_{resize}"] = top1(scores, labels)
        if resize == model.resize:
            figures["photo_top1"] = figures[f"photo_top1_{resize}"]
            figures["photo_errors"] = photo_errors(scores, labels, photos, model.classes)
    return figures


def photo_errors(scores: np.ndarray, labels: np.ndarray, photos: Split, classes: list[str]) -> dict[str, Any]:
    """The val photos whose top class is wrong: the most frequent (true, predicted) pairs and every error."""
    predicted, truth = scores.argmax(axis=1), labels.argmax(axis=1)
    wrong = np.flatnonzero(predicted != truth)
    pairs: dict[str, int] = {}
    for i in wrong:
        key = f"{classes[truth[i]]} -> {classes[predicted[i]]}"
        pairs[key] = pairs.get(key, 0) + 1
    return {"count": int(wrong.size), "pairs": dict(sorted(pairs.items(), key=lambda item: -item[1])),
            "photos": [{"photo": str(photos.images[i]), "true": classes[truth[i]], "predicted": classes[predicted[i]],
                        "probability": round(float(scores[i, predicted[i]]), 3)} for i in wrong]}


def anchor_figures(scenes: Split, photos_train: Split, photos_val: Split, sizes: list[int], batch_size: int,
                   workers: int, feature_size: int = 224) -> dict[str, Any]:
    """The logistic-regression anchor on ImageNet features; C chosen by val scene mAP (as the models are
    chosen by val mAP) at ``feature_size``, the photos' own training size, scored there too whatever
    ``sizes`` holds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    network = create_model("efficientnet_lite0", photos_train.labels.shape[1], pretrained=True)
    train_x, train_y = pooled_features(network, _loader(photos_train, feature_size, network, batch_size, workers),
                                       "anchor: training photos")
    val_x, val_y = pooled_features(network, _loader(photos_val, feature_size, network, batch_size, workers),
                                   "anchor: val photos")
    scene_x = {size: pooled_features(network, _loader(scenes, size, network, batch_size, workers),
                                     f"anchor: val scenes at {size}") for size in sorted({*sizes, feature_size})}
    scaler = StandardScaler().fit(train_x)
    targets = train_y.argmax(axis=1)
    results = []
    for c in ANCHOR_C:
        classifier = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(train_x), targets)
        row: dict[str, Any] = {"C": c, "photo_top1": top1(classifier.decision_function(scaler.transform(val_x)), val_y)}
        for size, (x, y) in scene_x.items():
            inputs = scaler.transform(x)
            row[f"scene_map_{size}"] = mean_average_precision(classifier.decision_function(inputs), y)
            row[f"scene_map_{size}_softmax"] = mean_average_precision(classifier.predict_proba(inputs), y)
        results.append(row)
    best = max(results, key=lambda row: row[f"scene_map_{feature_size}"])
    return {"chosen": best, "grid": results, "feature_size": feature_size}


def single_positive_anchor(train: Split, val: Split, test: Split, feature_size: int, batch_size: int,
                           workers: int) -> dict[str, Any]:
    """The anchor of a multi-label set with single positives (``train prepare coco``): the same ImageNet
    features, one logistic regression a class fitted on the training photos' annotated positives against
    every other photo (assume negative: the only labels a single-positive set has), C chosen by val mAP,
    test mAP over the classes with a positive and a negative. A class never annotated gets no regression
    (a constant score: its AP is its share of positives)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    network = create_model("efficientnet_lite0", train.labels.shape[1], pretrained=True)
    features = {split.name: pooled_features(network, _loader(split, feature_size, network, batch_size, workers),
                                            f"anchor: {split.name} photos")[0] for split in (train, val, test)}
    scaler = StandardScaler().fit(features["train"])
    inputs = {name: scaler.transform(x) for name, x in features.items()}
    annotated = train.observed == 1
    fitted = [k for k in range(annotated.shape[1]) if annotated[:, k].any() and not annotated[:, k].all()]
    results = []
    for c in ANCHOR_C:
        scores = {name: np.zeros((len(x), annotated.shape[1])) for name, x in inputs.items() if name != "train"}
        for k in fitted:
            classifier = LogisticRegression(C=c, max_iter=2000).fit(inputs["train"], annotated[:, k])
            for name in scores:
                scores[name][:, k] = classifier.decision_function(inputs[name])
        results.append({"C": c, "val_map": mean_average_precision(scores["val"], val.labels, scorable_only=True),
                        "test_map": mean_average_precision(scores["test"], test.labels, scorable_only=True)})
    best = max(results, key=lambda row: row["val_map"])
    return {"chosen": best, "grid": results, "feature_size": feature_size, "classes_fitted": len(fitted)}


def multilabel_figures(model: LoadedModel, splits: list[Split], sizes: list[int], batch_size: int,
                       workers: int) -> dict[str, Any]:
    """A checkpoint's mAP on each split at each size, over the classes with a positive and a negative."""
    figures: dict[str, Any] = {"trained_at": model.training.get("image_size", model.image_size)}
    for split in splits:
        for size in sizes:
            loader = _loader(split, size, model.network, batch_size, workers, model.resize)
            scores, labels = predict(model.network, loader, torch.device("cpu"))
            figures[f"{split.name}_map_{size}"] = mean_average_precision(scores, labels, scorable_only=True)
    return figures


def run_figures(run: Path) -> dict[str, Any]:
    """Minutes, images/s and (CALR) the rule's rejection precision by epoch, from a run's metrics.csv."""
    path = run / "metrics.csv"
    if not path.is_file():
        return {}
    rows = list(csv.DictReader(path.open()))
    seconds = sum(float(row["seconds"]) for row in rows)
    images_per_s = [float(row["images_per_s"]) for row in rows]
    precision = [None if not row.get("rejection_precision") else float(row["rejection_precision"]) for row in rows]
    return {"epochs": len(rows), "train_minutes": seconds / 60, "images_per_s": float(np.median(images_per_s)),
            "val_map_by_epoch": [float(row["val_map"]) for row in rows], "rejection_precision_by_epoch": precision,
            "rejected_by_epoch": [int(row["rejected"]) for row in rows if row.get("rejected")]}


def add_bench_photos_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="data/photos", help="a data set made by `train prepare photos`, or a "
                        "multi-label set with single positives (`train prepare coco`: checkpoints' val and test mAP "
                        "and the anchor fitted on the single positives, one logistic regression a class)")
    parser.add_argument("--checkpoints", nargs="*", default=[],
                        help="checkpoints to score (a run's best/ or an export)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448], help="input sizes for the scenes")
    parser.add_argument("--no-anchor", action="store_true", help="skip the logistic-regression anchor")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-photos.json"))
    parser.set_defaults(func=run_bench_photos)


def _result(args: argparse.Namespace, **counts: Any) -> dict[str, Any]:
    """The start of a bench-photos result: the data set, what it holds, the sizes, the machine."""
    return {"data": str(args.data), **counts, "sizes": args.sizes,
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "torch_threads": torch.get_num_threads()}, "checkpoints": {}}


def _checkpoints(args: argparse.Namespace, classes: list[str]) -> Iterator[tuple[str, LoadedModel, Path]]:
    """Each ``--checkpoints`` source, its model (of ``classes``, or a ValueError naming it) and its run folder."""
    for source in args.checkpoints:
        model = load_model(source)
        if model.classes != classes:
            raise ValueError(f"{source}: its classes differ from those of {args.data}")
        yield source, model, Path(source).parent if Path(source).name == "best" else Path(source)


def run_bench_multilabel(args: argparse.Namespace) -> dict[str, Any]:
    """bench-photos on a multi-label set of real photos with single positives (``train prepare coco``):
    each checkpoint's val and test mAP at every size, and the single-positive anchor."""
    dataset = load_dataset(args.data)
    splits = [dataset.split(name) for name in ("val", "test") if name in dataset.splits]
    result = _result(args, kind="multi-label photos, single positives",
                     **{f"{s.name}_photos": len(s.images) for s in splits})
    for source, model, run in _checkpoints(args, dataset.classes):
        result["checkpoints"][source] = {"loss": model.training.get("loss"),
                                         **multilabel_figures(model, splits, args.sizes, args.batch_size, args.workers),
                                         **run_figures(run)}
        print(json.dumps({source: result["checkpoints"][source]}), flush=True)
    if not args.no_anchor:
        result["anchor"] = single_positive_anchor(dataset.split("train"), *splits, feature_size=max(args.sizes),
                                                  batch_size=args.batch_size, workers=args.workers)
        print(json.dumps({"anchor": result["anchor"]}), flush=True)
    return result


def run_bench_photos(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    # Without single photos beside it, the data set is a multi-label set of photos (COCO's kind).
    scenes = (Path(args.data) / "photos" / "classes.txt").is_file()
    result = run_bench_scenes(args) if scenes else run_bench_multilabel(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def run_bench_scenes(args: argparse.Namespace) -> dict[str, Any]:
    """bench-photos on scenes of photos (``train prepare photos``): see the module's docstring."""
    scenes_set, photos_set = load_dataset(args.data), load_dataset(Path(args.data) / "photos")
    scenes, photos_val = scenes_set.split("val"), photos_set.split("val")
    result = _result(args, val_scenes=len(scenes.images), val_photos=len(photos_val.images))
    for source, model, run in _checkpoints(args, scenes_set.classes):
        figures = checkpoint_figures(model, scenes, photos_val, args.sizes, args.batch_size, args.workers)
        result["checkpoints"][source] = {"loss": model.training.get("loss"), **figures, **run_figures(run)}
        print(json.dumps({source: {k: v for k, v in result["checkpoints"][source].items() if k != "photo_errors"}}),
              flush=True)
    if not args.no_anchor:
        result["anchor"] = anchor_figures(scenes, photos_set.split("train"), photos_val, args.sizes,
                                          args.batch_size, args.workers)
        print(json.dumps({"anchor": result["anchor"]}), flush=True)
    return result
