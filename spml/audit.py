"""Audit a whole data set for missing labels, with the CAM evidence of every suspect.

For every image of a split and every class not annotated on it (``observed == 0``: neither the
annotated positive nor a known negative), the audit runs the checkpoint the way CALR's training does:
one forward pass gives the logits z and the annotated positive's CAM; the image masked to that CAM's
region gives the masked logits z^M; the rule of :mod:`spml.rejection` gives its decision.

The score of a candidate (image i, class c) is

    score = sigmoid(z_ic) * sigmoid((z_ic - z^M_ic) / T_gap)

- ``sigmoid(z)`` is how sure the model is that c is in the image: the probability alone is the
  baseline (cleanlab's self-confidence of the assumed-negative label ranks by it, and the large-loss
  ranking ranks by the assume-negative loss -log(1 - p), a monotone function of it).
- ``sigmoid((z - z^M) / T_gap)`` is how much of that evidence lies OUTSIDE the annotated positive's
  region. A missing label is a second object elsewhere in the image: masking the image down to the
  positive's region removes it and its logit drops (factor towards 1). A class the model predicts
  because of the positive's own region (a confusable class, a part of the positive) keeps its logit
  in the masked image (factor 0.5), and one that masking makes more likely is pushed below 0.5.
  The drop is signed, unlike the rule's |z - z^M|, because only a drop is evidence of an object
  elsewhere; it is measured in units of T_gap, the checkpoint's running average of the gap of
  annotated positives, so the same score works for checkpoints whose logits have different scales
  (1 logit unit where the checkpoint holds no thresholds).
- An image without an annotated positive gets an all-ones mask (as in the method): z^M = z and the
  factor is 0.5 for every class, so such an image is ranked by its probabilities, at half weight,
  since it brings no evidence.
The product keeps both halves necessary: a drop in a class the model does not believe in, or a
confident class that stays in the positive's region, is not a likely missing label.
Measured on the synthetic world's test split (600 images the demo checkpoint never trained on, single
positives by the protocol, 883 hidden positives among 5,400 candidates): average precision 0.981
against 0.964 for the probability (and the identical large-loss ranking), AUROC 0.995 against 0.989,
precision at k = 883 0.933 against 0.891. The formula was chosen on a separately trained model before
the demo checkpoint existed.

The report (one row per candidate, best first): rank, image, class, score, rejected (the rule's
decision, 0/1; always 0 for a checkpoint without thresholds), positive, probability, logit,
masked_logit, gap (|z - z^M|, the rule's), truth (1/0 where the data set knows more labels than the
annotated one, else empty), line (of the data set CSV), decision (empty: for a review by hand).

CAM normalisation is per image whatever the checkpoint says: in the batch-wise modes (``calr``,
``ignore``) an image's mask depends on the other images of its batch, and an audit must give an
image the same verdict whatever batch or shard it lands in (:func:`spml.inspect.analyze` does the
same with its batch of one).

Scale: images stream through a DataLoader in batches; the candidate rows of each batch are appended
to a part file and forgotten, so memory does not grow with the data set. A sidecar state file records
the batches done (with the part file's length), so a killed audit continues where it stopped. The
final report is sorted on disk (sorted runs, then a merge) and evaluated in the same pass. Under
torchrun each rank audits the images i with i % world == rank into its own part file; rank 0 merges
them once all are done (ranks on machines that do not share its disk send their part over the
process group) and every rank returns the summary.

Bad data: rows the data set reader rejects and images that cannot be decoded are reported (file,
line, reason) and skipped; the count is in the summary.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import io
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from tqdm import tqdm

from spml.cam import apply_masks, positive_masks
from spml.checkpoint import LoadedModel
from spml.data.dataset import ImageDataset
from spml.data.generic import Split, load_dataset
from spml.data.images import ImageLoadError
from spml.data.transforms import eval_transform
from spml.metrics import StreamingRanking
from spml.rejection import logit_gap, rejection_mask
from spml.runtime import atomic_path, atomic_write_text, close_distributed, init_distributed

SCORE_VERSION = 1
SCORE_FORMULA = "sigmoid(logit) * sigmoid((logit - masked_logit) / T_gap)"
REPORT_COLUMNS = ("rank", "image", "class", "score", "rejected", "positive", "probability", "logit",
                  "masked_logit", "gap", "truth", "line", "decision")
# A part file holds the report's rows without rank and decision, in this order.
_PART_COLUMNS = REPORT_COLUMNS[1:-1]
_SCORE, _LOGIT, _TRUTH, _CLASS, _IMAGE = (_PART_COLUMNS.index(name)
                                          for name in ("score", "logit", "truth", "class", "image"))
RUN_ROWS = 100_000  # rows per sorted run on disk: bounds the memory of the final sort
TOP_K = 100  # the fixed k of precision/recall@k, beside k = number of hidden positives
RANKINGS = ("audit", "probability", "large_loss")
_SEND_BYTES = 16 << 20  # chunk of a part file sent to rank 0 where it cannot read it


@dataclass
class AuditReport:
    """What an audit produced: plain paths, counts and the summary (also in ``json_path``)."""

    csv_path: Path
    json_path: Path
    summary: dict[str, Any]
    images: int  # images audited
    candidates: int  # (image, class) pairs scored
    skipped: int  # bad rows and unreadable images
    skipped_messages: list[str] = field(default_factory=list)


def missing_label_score(logits: torch.Tensor, masked_logits: torch.Tensor, gap_scale: float) -> torch.Tensor:
    """The audit score (see the module documentation): probability times evidence outside the
    positive's region, ``sigmoid(z) * sigmoid((z - z^M) / gap_scale)``."""
    return torch.sigmoid(logits) * torch.sigmoid((logits - masked_logits) / gap_scale)


def gap_scale(model: LoadedModel) -> float:
    """T_gap of the checkpoint, or 1 logit unit where it holds none (or a T_gap of 0, before training)."""
    if model.thresholds is None or not model.thresholds.gap_threshold > 0:
        return 1.0
    return model.thresholds.gap_threshold


@torch.inference_mode()
def batch_evidence(model: LoadedModel, images: torch.Tensor, observed: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logits, masked logits, gaps, rule decisions and scores of a batch, as (B, C) tensors.

    One forward pass gives the logits and the positive's CAM; the masked pass runs only on the
    images that have an annotated positive (the others have an all-ones mask, so z^M = z).
    """
    network = model.network
    output = network(images)
    logits = output.logits.float()
    has_positive = (observed == 1).any(dim=1)
    masked_logits = logits.clone()
    if bool(has_positive.any()):
        # Per-image normalisation whatever the checkpoint says (see the module documentation). Images
        # without a positive get an all-ones mask, z^M = z: only the others need the masked pass.
        masks = positive_masks(network, output, observed, tuple(images.shape[-2:]), model.cam_threshold, "image")
        if bool(has_positive.all()):
            masked_logits = network(apply_masks(images, masks)).logits.float()
        else:
            chosen = has_positive.nonzero().flatten()
            masked_logits[chosen] = network(apply_masks(images[chosen], masks[chosen])).logits.float()
    if model.thresholds is not None:
        rejected = rejection_mask(logits, masked_logits, observed, model.thresholds.gap_threshold_tensor,
                                  model.thresholds.class_average)
    else:
        rejected = torch.zeros_like(logits, dtype=torch.bool)
    return {
        "logits": logits,
        "masked_logits": masked_logits,
        "gap": logit_gap(logits, masked_logits),
        "rejected": rejected,
        "score": missing_label_score(logits, masked_logits, gap_scale(model)),
    }


class _AuditItems(TorchDataset):
    """The split's images for the audit: a broken image becomes an error message, not an exception."""

    def __init__(self, split: Split, transform: Callable[[Any], torch.Tensor]):
        self.images = ImageDataset(split, transform)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, self.images[index]["image"], None
        except (ImageLoadError, OSError) as error:
            return index, None, str(error)


def _collate(
    items: list[tuple[int, torch.Tensor | None, str | None]],
) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """(indices of the decoded images, their stacked tensors or None, (index, message) of the others)."""
    good = [(index, image) for index, image, _ in items if image is not None]
    errors = [(index, message) for index, _, message in items if message is not None]
    images = torch.stack([image for _, image in good]) if good else None
    return [index for index, _ in good], images, errors


def _fingerprint(model: LoadedModel, split: Split, batch_size: int, world: int) -> str:
    """What a part file depends on: a resumed audit with another model, data or sharding starts over."""
    digest = hashlib.sha256()
    digest.update(json.dumps([model.config(), str(split.source), split.name, len(split), batch_size, world,
                              SCORE_VERSION], sort_keys=True, default=str).encode())
    stat = split.source.stat()
    digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(split.observed.tobytes())  # the same file read with or without --single-positive differs
    for name, tensor in model.network.state_dict().items():
        # A strided sample of every tensor tells two checkpoints apart without hashing hundreds of MB.
        flat = tensor.detach().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(flat[:: max(1, flat.numel() // 4096)].double().cpu().numpy().tobytes())
    return digest.hexdigest()


class _Shard:
    """One rank's part file and its state sidecar: rows are appended batch by batch, then the state
    records the batches done and the file's length, so a restart truncates any half-written batch."""

    def __init__(self, work: Path, rank: int, world: int, fingerprint: str, resume: bool):
        self.rows_path = work / f"rank{rank}-of-{world}.csv"
        self.state_path = work / f"rank{rank}-of-{world}.state.json"
        self.state = {"fingerprint": fingerprint, "batches_done": 0, "bytes": 0, "images": 0, "candidates": 0,
                      "skipped": []}
        if resume and self.state_path.is_file():
            saved = json.loads(self.state_path.read_text())
            # A part file shorter than the state says (lost in a crash) cannot be trusted: start over.
            if (saved.get("fingerprint") == fingerprint and self.rows_path.is_file()
                    and self.rows_path.stat().st_size >= saved["bytes"]):
                self.state = saved
        work.mkdir(parents=True, exist_ok=True)
        with self.rows_path.open("ab") as handle:
            handle.truncate(self.state["bytes"])

    def commit(self, rows: str, images: int, candidates: int, skipped: list[str]) -> None:
        with self.rows_path.open("ab") as handle:
            handle.write(rows.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
            self.state["bytes"] = handle.tell()
        self.state["batches_done"] += 1
        self.state["images"] += images
        self.state["candidates"] += candidates
        self.state["skipped"] += skipped
        atomic_write_text(self.state_path, json.dumps(self.state, indent=2, allow_nan=False) + "\n")


def _gather_parts(work: Path, rank: int, world: int, shard: _Shard) -> list[dict[str, Any]]:
    """Bring every rank's part file to rank 0 and return every rank's state (on every rank).

    On a shared disk rank 0 already sees the files (their state files match); machines without one
    send theirs over the process group, in chunks, so no rank holds a whole part in memory.
    """
    states: list[Any] = [None] * world
    dist.all_gather_object(states, shard.state)  # after every rank's last commit
    missing: list[Any] = [None]
    if rank == 0:
        missing[0] = [r for r in range(1, world) if not _sees_part(work, r, world, states[r])]
    dist.broadcast_object_list(missing, src=0)
    for source in missing[0]:
        if rank == source:
            with shard.rows_path.open("rb") as handle:
                while chunk := handle.read(_SEND_BYTES):
                    dist.send_object_list([chunk], dst=0)
            dist.send_object_list([b""], dst=0)
        elif rank == 0:
            work.mkdir(parents=True, exist_ok=True)
            with (work / f"rank{source}-of-{world}.csv").open("wb") as handle:
                box: list[Any] = [b""]
                dist.recv_object_list(box, src=source)
                while box[0]:  # an empty chunk ends the file
                    handle.write(box[0])
                    dist.recv_object_list(box, src=source)
    return states


def _sees_part(work: Path, rank: int, world: int, state: dict[str, Any]) -> bool:
    state_path = work / f"rank{rank}-of-{world}.state.json"
    return state_path.is_file() and json.loads(state_path.read_text()) == state


def _number(value: float) -> str:
    return f"{value:.7g}"


def _batch_rows(names: list[str], images: list[str], lines: list[int], observed: np.ndarray, labels: np.ndarray | None,
                evidence: dict[str, torch.Tensor]) -> tuple[str, int]:
    """The part-file rows of the candidates of one batch, as CSV text, and their count. ``observed``
    and ``labels`` (None: the truth is unknown) are (B, C) in the model's class order."""
    values = {key: tensor.cpu().numpy() for key, tensor in evidence.items()}
    probability = 1.0 / (1.0 + np.exp(-values["logits"].astype(np.float64)))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    count = 0
    for row, (image, line) in enumerate(zip(images, lines, strict=True)):
        positive_index = np.flatnonzero(observed[row] == 1)
        positive = ";".join(names[i] for i in positive_index)  # every annotated positive, ';'-joined
        for c in np.flatnonzero(observed[row] == 0):
            writer.writerow([
                image, names[c], _number(values["score"][row, c]), int(values["rejected"][row, c]),
                positive, _number(probability[row, c]), _number(values["logits"][row, c]),
                _number(values["masked_logits"][row, c]), _number(values["gap"][row, c]),
                "" if labels is None else int(labels[row, c]), line,
            ])
            count += 1
    return buffer.getvalue(), count


def _audit_shard(model: LoadedModel, split: Split, shard: _Shard, rank: int, world: int, batch_size: int,
                 workers: int, permutation: np.ndarray, relative: list[str],
                 progress: Callable[[int, int], None] | None, show_progress_bar: bool) -> None:
    indices = list(range(rank, len(split), world))
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    done = shard.state["batches_done"]
    images_done = sum(len(batch) for batch in batches[:done])
    items = _AuditItems(split, eval_transform(model.image_size, model.mean, model.std))
    loader = DataLoader(items, batch_sampler=batches[done:], num_workers=workers, collate_fn=_collate)
    device = model.device
    bar = tqdm(total=len(indices), initial=images_done, unit="img", desc=f"audit {split.name}",
               disable=not show_progress_bar or rank != 0)
    with bar:
        for good, images, errors in loader:
            skipped = [f"{split.source}, line {split.rows[index]}: {message}" for index, message in errors]
            rows, candidates = "", 0
            if images is not None:
                observed = split.observed[good][:, permutation]  # data set order -> model order
                labels = split.labels[good][:, permutation] if split.has_hidden_labels else None
                evidence = batch_evidence(model, images.to(device), torch.from_numpy(observed).to(device))
                rows, candidates = _batch_rows(model.classes, [relative[i] for i in good],
                                               [split.rows[i] for i in good], observed, labels, evidence)
            shard.commit(rows, len(good), candidates, skipped)
            images_done += len(good) + len(errors)
            bar.update(len(good) + len(errors))
            if progress is not None:
                progress(images_done, len(indices))


def _sorted_runs(rows: Iterable[list[str]], key: Callable[[list[str]], Any], folder: Path, stem: str) -> list[Path]:
    """Sort ``rows`` on disk: runs of RUN_ROWS rows, each sorted by ``key``, written to ``folder``."""
    runs: list[Path] = []
    chunk: list[list[str]] = []

    def flush() -> None:
        chunk.sort(key=key)
        path = folder / f"{stem}-{len(runs):05d}.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle, lineterminator="\n").writerows(chunk)
        runs.append(path)
        chunk.clear()

    for row in rows:
        chunk.append(row)
        if len(chunk) >= RUN_ROWS:
            flush()
    if chunk:
        flush()
    return runs


def _merged(runs: list[Path], key: Callable[[list[str]], Any]) -> Iterator[list[str]]:
    handles = [path.open(newline="", encoding="utf-8") for path in runs]
    try:
        yield from heapq.merge(*(csv.reader(handle) for handle in handles), key=key)
    finally:
        for handle in handles:
            handle.close()


def _read_parts(paths: list[Path]) -> Iterator[list[str]]:
    for path in paths:
        with path.open(newline="", encoding="utf-8") as handle:
            yield from csv.reader(handle)


class _Evaluation:
    """Streaming metrics of one ranking, overall and per class, fed rows in descending key order."""

    def __init__(self, positives: dict[str, int]):
        self.overall = StreamingRanking(sorted({TOP_K, sum(positives.values())}))
        self.per_class = {name: StreamingRanking(sorted({TOP_K, count})) for name, count in positives.items()}
        self.positives = positives
        self._keys: list[float] = []
        self._truths: list[int] = []
        self._classes: list[str] = []

    def add(self, key: float, truth: int, name: str) -> None:
        self._keys.append(key)
        self._truths.append(truth)
        self._classes.append(name)
        if len(self._keys) >= 10_000:
            self.flush()

    def flush(self) -> None:
        keys, truths, classes = np.array(self._keys), np.array(self._truths), np.array(self._classes)
        self.overall.add(keys, truths)
        for name in np.unique(classes):
            chosen = classes == name
            self.per_class[str(name)].add(keys[chosen], truths[chosen])
        self._keys, self._truths, self._classes = [], [], []

    def result(self) -> dict[str, Any]:
        self.flush()
        total = sum(self.positives.values())
        return {"overall": _metrics(self.overall.result(), total),
                "per_class": {name: _metrics(ranking.result(), self.positives[name])
                              for name, ranking in self.per_class.items()}}


def _metrics(raw: dict[str, float | int], hidden: int) -> dict[str, Any]:
    """Named metrics: k = 100 and k = the number of hidden positives (NaN becomes None for JSON)."""
    named = {
        "hidden_positives": hidden,
        "candidates": raw["items"],
        "auroc": raw["auroc"],
        "average_precision": raw["average_precision"],
        f"precision_at_{TOP_K}": raw[f"precision_at_{TOP_K}"],
        f"recall_at_{TOP_K}": raw[f"recall_at_{TOP_K}"],
        "precision_at_hidden": raw[f"precision_at_{hidden}"],
        "recall_at_hidden": raw[f"recall_at_{hidden}"],
    }
    return {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in named.items()}


def _merge(parts: list[Path], work: Path, out: Path, top: int | None, has_truth: bool,
           classes: list[str]) -> tuple[int, int, dict[str, Any] | None]:
    """Write the sorted report (its ``top`` first rows, or all) and evaluate the rankings where the
    truth is known; returns (rows written, candidates the rule rejects, evaluation or None)."""
    runs_folder = work / "runs"
    shutil.rmtree(runs_folder, ignore_errors=True)
    runs_folder.mkdir(parents=True)
    positives = dict.fromkeys(classes, 0)
    rule = {"rejected": 0, "rejected_hidden": 0}

    def by_score(row: list[str]) -> tuple[float, str, str]:
        return -float(row[_SCORE]), row[_IMAGE], row[_CLASS]

    def counted(rows: Iterable[list[str]]) -> Iterator[list[str]]:
        for row in rows:
            rejected = row[_PART_COLUMNS.index("rejected")] == "1"
            rule["rejected"] += rejected
            if has_truth and row[_TRUTH] == "1":
                positives[row[_CLASS]] += 1
                rule["rejected_hidden"] += rejected
            yield row

    score_runs = _sorted_runs(counted(_read_parts(parts)), by_score, runs_folder, "score")
    evaluations = {name: _Evaluation(positives) for name in RANKINGS} if has_truth else {}
    written = 0
    with atomic_path(out) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(REPORT_COLUMNS)
        for rank, row in enumerate(_merged(score_runs, by_score), start=1):
            if top is None or rank <= top:
                writer.writerow([rank, *row, ""])
                written += 1
            if has_truth:
                evaluations["audit"].add(float(row[_SCORE]), int(row[_TRUTH]), row[_CLASS])
            elif top is not None and rank >= top:
                break
    if not has_truth:
        return written, rule["rejected"], None

    # Both baselines are monotone in the logit, so one sort by logit serves them: the probability
    # sigmoid(z) (cleanlab's self-confidence of the assumed negative) and the AN loss log(1 + e^z).
    def by_logit(row: list[str]) -> float:
        return -float(row[_LOGIT])

    for row in _merged(_sorted_runs(_read_parts(parts), by_logit, runs_folder, "logit"), by_logit):
        logit, truth = float(row[_LOGIT]), int(row[_TRUTH])
        evaluations["probability"].add(0.5 * (1.0 + math.tanh(logit / 2)), truth, row[_CLASS])  # sigmoid, no overflow
        evaluations["large_loss"].add(max(logit, 0.0) + math.log1p(math.exp(-abs(logit))), truth, row[_CLASS])
    total = sum(positives.values())
    return written, rule["rejected"], {
        "hidden_positives": total,
        "rankings": {name: evaluation.result() for name, evaluation in evaluations.items()},
        "rule": {"precision": rule["rejected_hidden"] / rule["rejected"] if rule["rejected"] else None,
                 "recall": rule["rejected_hidden"] / total if total else None},
    }


def report_json_path(out: str | Path) -> Path:
    """Where the summary of the report ``out`` goes: ``out`` with a .json suffix."""
    return Path(out).with_suffix(".json")


def audit_dataset(
    model: LoadedModel,
    dataset: str | Path,
    split: str = "train",
    out: str | Path = "audit.csv",
    *,
    batch_size: int = 32,
    top: int | None = None,
    workers: int = 0,
    resume: bool = True,
    progress: Callable[[int, int], None] | None = None,
    show_progress_bar: bool = True,
    single_positive: bool = False,
) -> AuditReport:
    """Audit ``split`` of the data set folder ``dataset`` with ``model``; write the report CSV ``out``
    (sorted by score, the ``top`` best rows or all) and its summary beside it (``out`` with .json).

    ``progress(done, total)`` is called after every batch with this rank's images. With ``resume`` an
    audit killed before the end continues from its last finished batch (same model, data, batch size
    and number of ranks); otherwise it starts over. Under torchrun every rank calls this function;
    each returns the same report once rank 0 has merged.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if top is not None and top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    out = Path(out)
    json_path = report_json_path(out)
    if json_path == out:
        raise ValueError(f"the report {out} must not be a .json file: its summary goes to {json_path}")
    started = time.perf_counter()
    data = load_dataset(dataset, skip_bad=True, single_positive=single_positive)
    part = data.split(split)
    if sorted(data.classes) != sorted(model.classes):
        raise ValueError(f"the data set's classes {data.classes} are not the model's {model.classes}")
    permutation = np.array([data.classes.index(name) for name in model.classes])
    relative = [path.relative_to(data.root).as_posix() for path in part.images]
    # The other ranks wait at a barrier while rank 0 sorts and evaluates: allow a long merge.
    info = init_distributed(model.device.type, timeout=timedelta(hours=6))
    rank, world = info.rank, info.world_size
    work = out.parent / (out.name + ".parts")
    shard = _Shard(work, rank, world, _fingerprint(model, part, batch_size, world), resume)
    resumed_batches = shard.state["batches_done"]
    _audit_shard(model, part, shard, rank, world, batch_size, workers, permutation, relative, progress,
                 show_progress_bar)
    states = _gather_parts(work, rank, world, shard) if world > 1 else [shard.state]
    summary: dict[str, Any] = {}
    if rank == 0:
        parts = [work / f"rank{r}-of-{world}.csv" for r in range(world)]
        written, rejected, evaluation = _merge(parts, work, out, top, part.has_hidden_labels, model.classes)
        skipped = list(part.skipped) + [message for state in states for message in state["skipped"]]
        summary = {
            "dataset": str(data.root),
            "split": split,
            "checkpoint": model.source,
            "report": str(out),
            "images": sum(state["images"] for state in states),
            "candidates": sum(state["candidates"] for state in states),
            "rows_written": written,
            "skipped": len(skipped),
            "skipped_messages": skipped,
            "score": SCORE_FORMULA,
            "score_version": SCORE_VERSION,
            "gap_scale": gap_scale(model),
            "gap_threshold": None if model.thresholds is None else model.thresholds.gap_threshold,
            "cam_threshold": model.cam_threshold,
            "cam_normalization": "image",
            "rule_available": model.thresholds is not None,
            "rejected": rejected,
            "batch_size": batch_size,
            "world_size": world,
            "resumed_from_batch": resumed_batches,
            "seconds": time.perf_counter() - started,
            "evaluation": evaluation,
        }
        summary["images_per_second"] = summary["images"] / summary["seconds"]
        atomic_write_text(json_path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
        shutil.rmtree(work, ignore_errors=True)
    if world > 1:
        box = [summary]
        dist.broadcast_object_list(box, src=0)  # every rank returns the report, with or without a shared disk
        summary = box[0]
        shutil.rmtree(work, ignore_errors=True)  # this rank's parts, where its disk is not rank 0's
        close_distributed(info)
    return AuditReport(csv_path=out, json_path=json_path, summary=summary, images=summary["images"],
                       candidates=summary["candidates"], skipped=summary["skipped"],
                       skipped_messages=summary["skipped_messages"])
