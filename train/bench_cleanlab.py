"""``python -m train bench-cleanlab``: the audit against cleanlab's multi-label functions (a benchmark,
not a pass/fail test).

On a small synthetic world (single positives, and partial labels where the data set reader takes
several positives), on scenes of 2 to 4 real photos (``photos``: ``train prepare photos`` from
``--photos``, one protocol-drawn positive, trained as bench-method's photo worlds: the photos model's
pretrained EfficientNet-Lite0, 160 px), or on real multi-label photos (``coco``: ``train prepare coco``
of ``--coco``, one protocol-drawn positive a photo, trained as bench-method's coco world; the audit also
says where it looks against the drawn boxes), models are trained by CALR and by AN, once on the whole
training split (in-sample: the audited images are the training images) and cross-fitted with
``--folds K`` (out-of-sample: every training image scored by the model that never saw it). Every
training image's unannotated (image, class) pairs are then ranked, against the hidden labels (those
left out of ``positive``), by:

- ``audit``: the audit score (``spml audit``, CAM evidence);
- ``probability``: sigmoid(z) of the class;
- ``cleanlab ...``: cleanlab's own multi-label API on the same probabilities (``pred_probs``, the
  model's sigmoid outputs for every class, its annotated labels as ``labels``):
  ``multilabel_classification.rank.get_label_quality_scores_per_class`` with its methods
  ``self_confidence``, ``normalized_margin`` and ``confidence_weighted_entropy`` (and
  ``self_confidence`` with ``adjust_pred_probs``), ranked by lowest quality first; and
  ``multilabel_classification.filter.find_multilabel_issues_per_class`` (a set of flagged pairs:
  precision and recall, no ranking).
Per image (cleanlab's main multi-label unit: does the image have any label issue?) the image's
hidden truth is "some label was left out"; the audit and the probability rank images by their best
candidate, cleanlab by ``get_label_quality_scores`` (its default aggregation), and
``find_label_issues`` flags a set.

Metrics: average precision, AUROC and precision at k = the number of left-out labels (images).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from spml.audit import FoldModels, audit_dataset, load_audit_model
from spml.checkpoint import LoadedModel
from spml.data.dataset import ImageDataset
from spml.data.generic import load_dataset
from spml.data.scenes import make_photo_scenes
from spml.data.synthetic import make_synthetic_dataset
from spml.metrics import average_precision, precision_recall_at_k, precision_recall_curve, roc_auc
from train.bench_method.worlds import COCO_WORLDS, DEFAULT_COCO, DEFAULT_PHOTOS, PHOTO_WORLDS
from train.config import TrainConfig

WORLDS = ("single", "partial", "photos", "coco")
PHOTO_WORLD = PHOTO_WORLDS["photos-several"]
PHOTO_MIX = PHOTO_WORLD.world.mix  # scenes of 2 to 4 photos: one positive each, the others hidden
COCO_WORLD = COCO_WORLDS["coco"]  # real multi-label photos, one positive each: bench-method's budget


def add_bench_cleanlab_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", default="runs/bench-cleanlab", help="folder for the worlds, runs and reports")
    parser.add_argument("--train", type=int, default=400, help="training images of each world")
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=16, help="compact backbone width")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--keep", type=float, default=0.5,
                        help="partial-label world: each true label is kept with this probability (at least one)")
    parser.add_argument("--losses", default="calr,an")
    parser.add_argument("--worlds", default="single,partial", help=f"of {', '.join(WORLDS)}")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="the image folder of the photos world")
    parser.add_argument("--coco", type=Path, default=DEFAULT_COCO,
                        help="the COCO-format set of the coco world (instances.json and images/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the results as JSON on the last line")


def make_world(work: Path, kind: str, args: argparse.Namespace) -> Path:
    """The ``single`` or ``partial`` synthetic world, the ``photos`` world or the ``coco`` world, under ``work``
    (made once)."""
    if kind not in WORLDS:
        raise ValueError(f"unknown world {kind!r}; choose of {', '.join(WORLDS)}")
    root = work / f"world-{kind}"
    if kind == "coco" and not (root / "classes.txt").is_file():
        # The photos of --coco split by photo as `train prepare coco` splits them, one protocol positive each;
        # the training split is the one audited (--train and --val do not apply).
        from train.prepare import prepare_coco_set

        prepare_coco_set(args.coco / "instances.json", args.coco / "images", root, seed=args.seed, progress=False)
    elif kind == "photos" and not (root / "classes.txt").is_file():
        make_photo_scenes(args.photos, root, seed=args.seed, train=args.train, val=args.val,
                          image_size=PHOTO_WORLD.image_size, mix=PHOTO_MIX, progress=False)
    elif not (root / "classes.txt").is_file():
        # The synthetic world writes its positive column: the protocol's single positive, or (partial)
        # each true label kept with probability --keep, at least one.
        make_synthetic_dataset(root, seed=args.seed, train=args.train, val=args.val, test=0,
                               image_size=args.image_size, progress=False,
                               partial=None if kind == "single" else args.keep)
    return root


def _config(args: argparse.Namespace, data: Path, out: Path, loss: str, world: str) -> TrainConfig:
    loss_options = {"bias_correction": True} if loss == "calr" else {}
    if world == "photos":  # bench-method's photos-several world: the same backbone, size and budget
        return PHOTO_WORLD.train_config(loss, loss_options, args.seed, data=str(data), out=str(out),
                                        resize="letterbox", device="cpu")
    if world == "coco":  # bench-method's coco world: the same backbone, size and budget
        return COCO_WORLD.train_config(loss, loss_options, args.seed, data=str(data), out=str(out), device="cpu")
    return TrainConfig(data=str(data), out=str(out), loss=loss, arch="compact", arch_options={"width": args.width},
                       pretrained=False, epochs=args.epochs, batch_size=32, image_size=args.image_size, lr=1e-3,
                       head_lr_multiplier=1.0, warmup_epochs=min(3, args.epochs - 1), device="cpu", workers=0,
                       seed=args.seed, loss_options=loss_options).validate()


@torch.inference_mode()
def probabilities(model: LoadedModel | FoldModels, root: Path) -> np.ndarray:
    """sigmoid(z) of every training image and class (model order), each image by the model the audit
    used for it (its fold's, out of sample)."""
    split = load_dataset(root).split("train")
    relative = [path.relative_to(root.resolve()).as_posix() for path in split.images]
    models = model.models if isinstance(model, FoldModels) else [model]
    items = ImageDataset(split, model.input_transform())
    out = np.zeros((len(split), len(model.classes)))
    for batch in DataLoader(items, batch_size=64):
        indices = batch["index"].numpy()
        folds = np.array([model.fold_of(relative[i]) if isinstance(model, FoldModels) else 0 for i in indices])
        for fold in np.unique(folds):
            chosen = folds == fold
            logits = models[fold].network(batch["image"][chosen]).logits.float()
            out[indices[chosen]] = torch.sigmoid(logits).numpy()
    return out


def _ranking(scores: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    hidden = int(truth.sum())
    recall, precision = precision_recall_curve(scores, truth)
    return {"ap": average_precision(scores, truth), "auroc": roc_auc(scores, truth),
            "p_at_hidden": precision_recall_at_k(scores, truth, hidden)[0],
            "curve": {"recall": np.round(recall, 4).tolist(), "precision": np.round(precision, 4).tolist()}}


def best_cleanlab_scorer(pairs: dict[str, Any]) -> str:
    """The name of cleanlab's per-class scorer with the highest AP."""
    scorers = [name for name in pairs if name.startswith("cleanlab per-class") and "ap" in pairs[name]]
    return max(scorers, key=lambda name: pairs[name]["ap"])


def plot_results(results: list[dict[str, Any]], path: Path) -> Path:
    """The precision-recall curves of the audit, the probability and cleanlab's best per-class scorer, a
    panel for each world, loss and sample."""
    from train.plots import plot_precision_recall

    panels = {}
    for result in results:
        pairs = result["pairs"]
        names = {"audit": "audit", "probability": "probability", best_cleanlab_scorer(pairs): "cleanlab (best)"}
        panels[f"{result['world']}, {result['loss']}, {result['sample']}"] = {
            label: {**pairs[name]["curve"], "ap": pairs[name]["ap"]} for name, label in names.items()}
    return plot_precision_recall(panels, path)


def _flags(flags: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    flagged = int(flags.sum())
    hits = int((flags & (truth == 1)).sum())
    return {"flagged": flagged, "precision": hits / flagged if flagged else float("nan"),
            "recall": hits / int(truth.sum()) if truth.sum() else float("nan")}


def _per_pair(values: Any, pred_probs: np.ndarray) -> np.ndarray:
    """cleanlab 2.9's per-class results as an (N, K) array: its docstrings promise a list of K arrays of
    shape (N,), its code returns the (N, K) array; accept both."""
    array = np.asarray(values)
    return array if array.shape == pred_probs.shape else array.T


def evaluate(report: Path, root: Path, pred_probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Every ranking of the training split's candidates (and images) against the hidden labels."""
    from cleanlab.multilabel_classification.filter import find_label_issues, find_multilabel_issues_per_class
    from cleanlab.multilabel_classification.rank import get_label_quality_scores, get_label_quality_scores_per_class

    data = load_dataset(root)
    split = data.split("train")
    order = np.array([data.classes.index(name) for name in classes])  # data set order -> model order
    observed, labels = split.observed[:, order], split.labels[:, order]
    relative = {path.relative_to(root.resolve()).as_posix(): i for i, path in enumerate(split.images)}
    audit = np.full(labels.shape, np.nan)
    with report.open(newline="") as handle:
        for row in csv.DictReader(handle):
            audit[relative[row["image"]], classes.index(row["class"])] = float(row["score"])
    candidate = observed == 0
    if np.isnan(audit[candidate]).any():
        raise RuntimeError(f"{report} misses candidates of {root}")
    truth = labels[candidate].astype(int)
    given = [list(np.flatnonzero(observed[i] == 1)) for i in range(len(observed))]
    pairs: dict[str, Any] = {"audit": _ranking(audit[candidate], truth),
                             "probability": _ranking(pred_probs[candidate], truth)}
    for method in ("self_confidence", "normalized_margin", "confidence_weighted_entropy"):
        quality = _per_pair(get_label_quality_scores_per_class(given, pred_probs, method=method), pred_probs)
        pairs[f"cleanlab per-class {method}"] = _ranking(-quality[candidate], truth)
    quality = _per_pair(get_label_quality_scores_per_class(given, pred_probs, method="self_confidence",
                                                           adjust_pred_probs=True), pred_probs)
    pairs["cleanlab per-class self_confidence, adjust_pred_probs"] = _ranking(-quality[candidate], truth)
    issues = _per_pair(find_multilabel_issues_per_class(given, pred_probs), pred_probs)
    pairs["cleanlab find_multilabel_issues_per_class (flags)"] = _flags(issues[candidate], truth)

    image_truth = ((labels == 1) & candidate).any(axis=1).astype(int)
    masked_audit = np.where(candidate, audit, -np.inf).max(axis=1)
    masked_probability = np.where(candidate, pred_probs, -np.inf).max(axis=1)
    image_quality = get_label_quality_scores(given, pred_probs)
    images: dict[str, Any] = {
        "audit (best candidate)": _ranking(masked_audit, image_truth),
        "probability (best candidate)": _ranking(masked_probability, image_truth),
        "cleanlab get_label_quality_scores": _ranking(-image_quality, image_truth),
        "cleanlab find_label_issues (flags)": _flags(find_label_issues(given, pred_probs), image_truth),
    }
    return {"hidden_labels": int(truth.sum()), "candidates": int(candidate.sum()),
            "images_with_hidden": int(image_truth.sum()), "images": len(image_truth), "pairs": pairs, "images_": images}


def run_one(args: argparse.Namespace, work: Path, root: Path, world: str, loss: str) -> list[dict[str, Any]]:
    """In-sample and out-of-sample results of one world and one loss."""
    from train.engine import fit
    from train.folds import fit_folds

    results = []
    in_run, out_run = work / f"run-{world}-{loss}", work / f"folds-{world}-{loss}"
    summary = fit(_config(args, root, in_run, loss, world))
    folds = fit_folds(_config(args, root, out_run, loss, world), args.folds)["trained"]
    val_map = {"in-sample": summary["best_val_map"],  # the folds': their mean
               "out-of-sample": float(np.mean([fold["best_val_map"] for fold in folds.values()]))}
    for sample, checkpoint in (("in-sample", in_run / "best"), ("out-of-sample", out_run)):
        model = load_audit_model(checkpoint)
        report = work / f"audit-{world}-{loss}-{sample}.csv"
        audited = audit_dataset(model, root, "train", report, batch_size=32, show_progress_bar=False)
        result = evaluate(report, root, probabilities(model, root), model.classes)
        # Where the audit looks, against the drawn boxes of a world that has them (coco).
        where = (audited.summary.get("evaluation") or {}).get("where")
        results.append({"world": world, "loss": loss, "sample": sample, "val_map": val_map[sample], **result,
                        "where": where})
    return results


def _cell(value: dict[str, float]) -> str:
    return f"{value['ap']:.3f} / {value['auroc']:.3f} / {value['p_at_hidden']:.3f}"


def _table(results: list[dict[str, Any]]) -> str:
    """One line per world, loss and sample: AP / AUROC / precision at the number of left-out labels of
    each ranking of (image, class) pairs, the best of cleanlab's per-class scorers, cleanlab's flags,
    and the image-level figures."""
    lines = ["| world | loss | sample (val mAP) | audit | probability | best cleanlab per-class scorer | "
             "cleanlab per-class flags P / R | images: audit | images: cleanlab quality | "
             "images: cleanlab flags P / R |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        pairs, images = result["pairs"], result["images_"]
        best = best_cleanlab_scorer(pairs)
        flags = pairs["cleanlab find_multilabel_issues_per_class (flags)"]
        image_flags = images["cleanlab find_label_issues (flags)"]
        lines.append(
            f"| {result['world']} | {result['loss']} | {result['sample']} ({result['val_map']:.1f}) | "
            f"{_cell(pairs['audit'])} | {_cell(pairs['probability'])} | "
            f"{_cell(pairs[best])} ({best.removeprefix('cleanlab per-class ')}) | "
            f"{flags['precision']:.3f} / {flags['recall']:.3f} | {_cell(images['audit (best candidate)'])} | "
            f"{_cell(images['cleanlab get_label_quality_scores'])} | "
            f"{image_flags['precision']:.3f} / {image_flags['recall']:.3f} |")
    return "\n".join(lines)


def run_bench_cleanlab(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    jobs = [(world, loss) for world in args.worlds.split(",") for loss in args.losses.split(",")]
    roots = {world: make_world(work, world, args) for world in args.worlds.split(",")}
    for world, loss in tqdm(jobs, desc="bench-cleanlab", unit="model"):
        results.extend(run_one(args, work, roots[world], world, loss))
    machine = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
                if key != "func"}
    payload = {"results": results, "seconds": time.perf_counter() - started, "machine": machine, "settings": settings}
    (work / "results.json").write_text(json.dumps(payload, indent=1, default=float) + "\n")
    try:
        plot_results(results, work / "precision_recall.png")
    except ImportError as error:
        print(f"no picture: {error}")
    print("AP / AUROC / precision at the number of left-out labels; results.json has every ranking")
    print(_table(results))
    print(f"{payload['seconds']:.0f} s; results in {work / 'results.json'}")
    if args.json:
        print(json.dumps(payload, default=float))
    return 0

