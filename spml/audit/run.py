"""Audit a whole data set for missing labels: the resumable, sharded run.

Scale: images stream through a DataLoader in batches; the candidate rows of each batch are appended
to a part file and forgotten, so memory does not grow with the data set. A sidecar state file records
the batches done (with the part file's length), so a killed audit continues where it stopped. The
final report is sorted on disk and evaluated in the same pass (:mod:`spml.audit.report`). Under
torchrun each rank audits the images i with i % world == rank into its own part file; rank 0 merges
them once all are done (ranks on machines that do not share its disk send their part over the
process group) and every rank returns the summary.

A cross-fitted run (:mod:`spml.audit.folds`) is audited the same way: each batch is split by fold and
every image is scored by the model that never trained on it, so the sharding and the streaming are
unchanged.

Bad data: rows the data set reader rejects and images that cannot be decoded are reported (file,
line, reason) and skipped; the count is in the summary.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from spml.audit.folds import FoldModels
from spml.audit.report import merge_report, report_json_path
from spml.audit.scoring import SCORE_FORMULA, SCORE_VERSION, batch_evidence, candidate_values, format_box, gap_scale
from spml.audit.where import read_boxes
from spml.checkpoint import LoadedModel
from spml.data.dataset import ImageDataset, SkipBrokenImages, collate_skipping_broken
from spml.data.generic import SEPARATOR, Split, load_dataset
from spml.runtime import atomic_write_text, close_distributed, init_distributed

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


def _models(model: LoadedModel | FoldModels) -> list[LoadedModel]:
    return model.models if isinstance(model, FoldModels) else [model]


def _gap_thresholds(model: LoadedModel | FoldModels) -> list[float | None]:
    return [None if m.thresholds is None else m.thresholds.gap_threshold for m in _models(model)]


def _fingerprint(model: LoadedModel | FoldModels, split: Split, batch_size: int, world: int) -> str:
    """What a part file depends on: a resumed audit with another model, data or sharding starts over."""
    digest = hashlib.sha256()
    folds = sorted(model.folds.items()) if isinstance(model, FoldModels) else None
    digest.update(json.dumps([[m.config() for m in _models(model)], folds, str(split.source), split.name, len(split),
                              batch_size, world, SCORE_VERSION], sort_keys=True, default=str).encode())
    stat = split.source.stat()
    digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(split.observed.tobytes())  # the same file read with or without --single-positive differs
    for loaded in _models(model):
        for name, tensor in loaded.network.state_dict().items():
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
                evidence: Any, fold: int | None) -> tuple[str, int]:
    """The part-file rows of the candidates of one batch, as CSV text, and their count. ``observed``
    and ``labels`` (None: the truth is unknown) are (B, C) in the model's class order; every number
    comes from :func:`spml.audit.scoring.candidate_values`, as the review's do."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    count = 0
    for row, (image, line) in enumerate(zip(images, lines, strict=True)):
        positive = SEPARATOR.join(names[c] for c in np.flatnonzero(observed[row] == 1))
        for c in np.flatnonzero(observed[row] == 0):
            values = candidate_values(evidence, row, int(c))
            writer.writerow([
                image, names[c], _number(values["score"]), values["rejected"], positive,
                _number(values["probability"]), _number(values["logit"]), _number(values["masked_logit"]),
                _number(values["gap"]), "" if labels is None else int(labels[row, c]), line,
                format_box(values["suspect_box"]), format_box(values["positive_box"]), "" if fold is None else fold,
            ])
            count += 1
    return buffer.getvalue(), count


def _audit_shard(model: LoadedModel | FoldModels, split: Split, shard: _Shard, rank: int, world: int,
                 batch_size: int, workers: int, permutation: np.ndarray, relative: list[str],
                 progress: Callable[[int, int], None] | None, show_progress_bar: bool) -> None:
    indices = list(range(rank, len(split), world))
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    done = shard.state["batches_done"]
    images_done = sum(len(batch) for batch in batches[:done])
    items = SkipBrokenImages(ImageDataset(split, model.input_transform()))
    loader = DataLoader(items, batch_sampler=batches[done:], num_workers=workers, collate_fn=collate_skipping_broken)
    device = model.device
    bar = tqdm(total=len(indices), initial=images_done, unit="img", desc=f"audit {split.name}",
               disable=not show_progress_bar or rank != 0)
    with bar:
        for batch, broken in loader:
            skipped = [f"{split.source}, line {split.rows[item.index]}: {item.message}" for item in broken]
            rows, candidates, good = "", 0, 0
            if batch is not None:
                good = len(batch["index"])
                observed = split.observed[batch["index"].numpy()][:, permutation]  # data set order -> model order
                labels = split.labels[batch["index"].numpy()][:, permutation] if split.has_hidden_labels else None
                folds = (np.array([model.fold_of(relative[i]) for i in batch["index"].tolist()])
                         if isinstance(model, FoldModels) else np.zeros(good, dtype=int))
                for fold in np.unique(folds):  # each image with the model that never trained on it
                    chosen = np.flatnonzero(folds == fold)
                    evidence = batch_evidence(_models(model)[fold], batch["image"][chosen].to(device),
                                              torch.from_numpy(observed[chosen]).to(device), batch["size"][chosen])
                    text, count = _batch_rows(model.classes, [relative[int(batch["index"][i])] for i in chosen],
                                              [split.rows[int(batch["index"][i])] for i in chosen], observed[chosen],
                                              None if labels is None else labels[chosen], evidence,
                                              int(fold) if isinstance(model, FoldModels) else None)
                    rows, candidates = rows + text, candidates + count
            shard.commit(rows, good, candidates, skipped)
            images_done += good + len(broken)
            bar.update(good + len(broken))
            if progress is not None:
                progress(images_done, len(indices))


def audit_dataset(
    model: LoadedModel | FoldModels,
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
    """Audit ``split`` of the data set folder ``dataset`` with ``model`` (a checkpoint, or the models of
    a cross-fitted run: :func:`spml.audit.folds.load_audit_model`); write the report CSV ``out``
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
        written, rejected, evaluation = merge_report(parts, work, out, top, part.has_hidden_labels, model.classes,
                                                     read_boxes(data.root))
        skipped = list(part.skipped) + [message for state in states for message in state["skipped"]]
        summary = {
            "dataset": str(data.root),
            "split": split,
            "checkpoint": model.source,
            "folds": len(model.models) if isinstance(model, FoldModels) else None,
            "report": str(out),
            "images": sum(state["images"] for state in states),
            "candidates": sum(state["candidates"] for state in states),
            "rows_written": written,
            "skipped": len(skipped),
            "skipped_messages": skipped,
            "score": SCORE_FORMULA,
            "score_version": SCORE_VERSION,
            # Those of the (first) model; a cross-fitted run lists every fold's in fold_gap_thresholds.
            "gap_scale": gap_scale(_models(model)[0]),
            "gap_threshold": _gap_thresholds(model)[0],
            "fold_gap_thresholds": _gap_thresholds(model) if isinstance(model, FoldModels) else None,
            "cam_threshold": _models(model)[0].cam_threshold,
            "cam_normalization": "image",
            "rule_available": all(m.thresholds is not None for m in _models(model)),
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
