"""The audit's report: part files sorted on disk into one CSV, best first, evaluated in the same pass.

The report (one row per candidate, best first): rank, image, class, score, rejected (the rule's
decision, 0/1; always 0 for a checkpoint without thresholds), positive, probability, logit,
masked_logit, gap (|z - z^M|, the rule's), truth (1/0 where the data set knows more labels than the
annotated ones, else empty), line (of the data set CSV), suspect_box (the box of the suspected class's
own CAM region, "x0 y0 x1 y1" in the image's own pixels), positive_box (the box of the annotated
positive's region, the mask of the masked pass), fold (the cross-fitted model that scored the row,
empty for a single checkpoint), decision (empty: for a review by hand).

The sort never holds more than RUN_ROWS rows: sorted runs on disk, then a heap merge; the rankings are
evaluated (average precision, AUROC, precision and recall at k) while the merge streams.
"""

from __future__ import annotations

import csv
import heapq
import math
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from spml.audit.where import Box, WhereCheck
from spml.metrics import StreamingRanking, sigmoid
from spml.runtime import atomic_path

REPORT_COLUMNS = ("rank", "image", "class", "score", "rejected", "positive", "probability", "logit",
                  "masked_logit", "gap", "truth", "line", "suspect_box", "positive_box", "fold", "decision")
# A part file holds the report's rows without rank and decision, in this order.
PART_COLUMNS = REPORT_COLUMNS[1:-1]
_SCORE, _LOGIT, _TRUTH, _CLASS, _IMAGE, _REJECTED, _SUSPECT = (
    PART_COLUMNS.index(name) for name in ("score", "logit", "truth", "class", "image", "rejected", "suspect_box"))
RUN_ROWS = 100_000  # rows per sorted run on disk: bounds the memory of the final sort
TOP_K = 100  # the fixed k of precision/recall@k, beside k = number of hidden positives
CURVE_POINTS = 100  # points of each ranking's precision-recall curve in the evaluation
RANKINGS = ("audit", "probability", "large_loss")


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

    def __init__(self, positives: dict[str, int], candidates: int):
        # The ranks at which the precision-recall curve is read: spread over the whole ranking.
        self.curve_ks = np.unique(np.linspace(1, max(candidates, 1), num=min(CURVE_POINTS, max(candidates, 1)))
                                  .round().astype(int)).tolist()
        self.overall = StreamingRanking(sorted({TOP_K, sum(positives.values()), *self.curve_ks}))
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
        raw = self.overall.result()
        curve = {"recall": [raw[f"recall_at_{k}"] for k in self.curve_ks],
                 "precision": [raw[f"precision_at_{k}"] for k in self.curve_ks]}
        return {"overall": _metrics(raw, total), "curve": curve,
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


def merge_report(parts: list[Path], work: Path, out: Path, top: int | None, has_truth: bool,
                 classes: list[str], boxes: dict[tuple[str, str], list[Box]] | None = None
                 ) -> tuple[int, int, dict[str, Any] | None]:
    """Write the sorted report (its ``top`` first rows, or all) and evaluate the rankings where the
    truth is known (and, with the data set's drawn ``boxes``, where the audit looks: :mod:`spml.audit.where`);
    returns (rows written, candidates the rule rejects, evaluation or None)."""
    runs_folder = work / "runs"
    shutil.rmtree(runs_folder, ignore_errors=True)
    runs_folder.mkdir(parents=True)
    positives = dict.fromkeys(classes, 0)
    rule = {"rejected": 0, "rejected_hidden": 0, "candidates": 0}

    def by_score(row: list[str]) -> tuple[float, str, str]:
        return -float(row[_SCORE]), row[_IMAGE], row[_CLASS]

    def counted(rows: Iterable[list[str]]) -> Iterator[list[str]]:
        for row in rows:
            rule["candidates"] += 1
            rejected = row[_REJECTED] == "1"
            rule["rejected"] += rejected
            if has_truth and row[_TRUTH] == "1":
                positives[row[_CLASS]] += 1
                rule["rejected_hidden"] += rejected
            yield row

    score_runs = _sorted_runs(counted(_read_parts(parts)), by_score, runs_folder, "score")
    evaluations = {name: _Evaluation(positives, rule["candidates"]) for name in RANKINGS} if has_truth else {}
    # The counts are complete once the runs are sorted: the top N of the check is known before the merge.
    where = WhereCheck(boxes, sum(positives.values())) if has_truth and boxes is not None else None
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
                if where is not None:
                    where.add(rank, row[_IMAGE], row[_CLASS], row[_TRUTH] == "1", row[_SUSPECT])
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
        evaluations["probability"].add(sigmoid(logit), truth, row[_CLASS])
        evaluations["large_loss"].add(max(logit, 0.0) + math.log1p(math.exp(-abs(logit))), truth, row[_CLASS])
    total = sum(positives.values())
    return written, rule["rejected"], {
        "hidden_positives": total,
        "rankings": {name: evaluation.result() for name, evaluation in evaluations.items()},
        "rule": {"precision": rule["rejected_hidden"] / rule["rejected"] if rule["rejected"] else None,
                 "recall": rule["rejected_hidden"] / total if total else None},
        "where": None if where is None else where.result(),
    }


def report_json_path(out: str | Path) -> Path:
    """Where the summary of the report ``out`` goes: ``out`` with a .json suffix."""
    return Path(out).with_suffix(".json")
