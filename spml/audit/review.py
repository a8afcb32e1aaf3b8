"""Review of an audit: the decisions on suspects, their store, and the corrected data set.

A reviewer confirms a suspect (the label is missing: add it to ``labels``) or dismisses it (the class
is absent: list it in ``negatives``, which training treats as a known negative, never rejected).

Decisions live in a store beside the report, ``<report stem>.decisions.json``, rewritten atomically
at every decision, so they survive a page reload or a restart of the app. The report CSV itself can
carry decisions too: its ``decision`` column, filled by hand, accepts (case-insensitive)
``confirm``/``confirmed``/``yes``/``y``/``true``/``1`` and ``dismiss``/``dismissed``/``no``/``n``/
``false``/``0``; an empty cell is undecided. Where both speak about the same suspect the store wins
(it holds the later, explicit clicks, including "undecided" to withdraw a hand-filled decision).

Decisions are plain data: ``{image: {class: "confirm" | "dismiss"}}``, with ``image`` the path as the
data set CSV writes it.

The evidence a reviewer sees comes from :func:`spml.audit.scoring.suspect_evidence`; uploads are
handled by :mod:`spml.audit.uploads`.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from pathlib import Path, PurePosixPath
from typing import Any

from spml.data.generic import SEPARATOR, read_classes, split_names
from spml.runtime import atomic_write_text

DECISIONS = ("confirm", "dismiss")
_CONFIRM_WORDS = {"confirm", "confirmed", "yes", "y", "true", "1"}
_DISMISS_WORDS = {"dismiss", "dismissed", "no", "n", "false", "0"}
_STORE_FORMAT = "spml-review-decisions"
_store_lock = threading.Lock()  # the app may record two clicks at once; the rename makes each write atomic



class ReviewError(ValueError):
    """A decision, a report or an upload that cannot be used; the message says why."""


def decisions_path(report: str | Path) -> Path:
    """The decision store of ``report``: ``audit.csv`` -> ``audit.decisions.json``."""
    return Path(report).with_suffix(".decisions.json")


def parse_decision(text: str | None) -> str | None:
    """``confirm``, ``dismiss`` or None (undecided) from a hand-filled cell; ReviewError otherwise."""
    word = (text or "").strip().lower()
    if not word:
        return None
    if word in _CONFIRM_WORDS:
        return "confirm"
    if word in _DISMISS_WORDS:
        return "dismiss"
    raise ReviewError(f"unknown decision {text!r}: write confirm/yes/1, dismiss/no/0, or leave it empty")


def _report_decisions(report: Path) -> dict[str, dict[str, str]]:
    """The hand-filled ``decision`` column of a report CSV (none when the column is absent)."""
    decisions: dict[str, dict[str, str]] = {}
    if not report.is_file():
        return decisions
    with report.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"image", "class", "decision"} <= set(reader.fieldnames):
            return decisions
        for row in reader:
            try:
                decision = parse_decision(row["decision"])
            except ReviewError as error:
                raise ReviewError(f"{report}, line {reader.line_num}: {error}") from None
            if decision is not None:
                decisions.setdefault(row["image"], {})[row["class"]] = decision
    return decisions


def _read_store(report: Path) -> dict[str, dict[str, str | None]]:
    path = decisions_path(report)
    if not path.is_file():
        return {}
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReviewError(f"{path} is not a decision store ({error})") from None
    if not isinstance(payload, dict) or payload.get("format") != _STORE_FORMAT:
        raise ReviewError(f"{path} is not a decision store (format != {_STORE_FORMAT!r})")
    return payload["decisions"]


def load_decisions(report: str | Path) -> dict[str, dict[str, str]]:
    """Every decision on ``report``: its hand-filled ``decision`` column, then the store on top."""
    report = Path(report)
    decisions = _report_decisions(report)
    for image, classes in _read_store(report).items():
        for name, decision in classes.items():
            decisions.setdefault(image, {})[name] = decision
            if decision is None:  # withdrawn in the app: undecided even where the CSV says otherwise
                del decisions[image][name]
        if not decisions.get(image, True):
            del decisions[image]
    return decisions


def record_decision(report: str | Path, image: str, class_name: str, decision: str | None) -> dict[str, dict[str, str]]:
    """Record ``decision`` ("confirm", "dismiss" or None to withdraw) on the suspect (image, class)
    and return every decision on ``report`` (as :func:`load_decisions`). The pair is not looked up in
    the report (that would read it whole at every click); the export reports pairs it cannot apply."""
    if decision is not None and decision not in DECISIONS:
        raise ReviewError(f"decision must be one of {DECISIONS} or None, got {decision!r}")
    if not image or not class_name:
        raise ReviewError("a decision needs an image and a class")
    report = Path(report)
    path = decisions_path(report)
    with _store_lock:
        store = _read_store(report)
        store.setdefault(image, {})[class_name] = decision
        payload = {"format": _STORE_FORMAT, "version": 1, "report": report.name, "decisions": store}
        atomic_write_text(path, json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return load_decisions(report)


def export_corrected_dataset(
    dataset_root: str | Path,
    split_csv_name: str,
    decisions: dict[str, dict[str, str]],
    out_csv: str | Path,
) -> dict[str, Any]:
    """Write the data set CSV ``split_csv_name`` of ``dataset_root`` to ``out_csv`` with the decisions
    applied: confirmed classes added to ``labels``, dismissed ones to ``negatives`` (a column added
    where missing). A dismissed class leaves ``labels`` and a confirmed one leaves ``negatives``: the
    reviewer's word wins over the file. Every other column, row and value stays as it was.

    The annotated positives (the ``positive`` column, or every label of a file without one) cannot be
    dismissed. A confirmed class becomes annotated: in a file with a ``positive`` column it is added
    there too (a reviewer's confirmation is an annotation, so retraining on the export observes it),
    in a file without one it is a label like the others. Returns counts and the decisions that could
    not be applied, with reasons.
    """
    root = Path(dataset_root)
    if PurePosixPath(split_csv_name).name != split_csv_name or not split_csv_name.endswith(".csv"):
        raise ReviewError(f"{split_csv_name!r} is not the name of a CSV file of the data set")
    source = root / split_csv_name
    classes = set(read_classes(root))
    with source.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        records = [(reader.line_num, record) for record in reader]
    columns = [name.strip().lower() for name in header]
    if "image" not in columns or "labels" not in columns:
        raise ReviewError(f"{source}: the header needs image and labels columns")
    image_col, labels_col = columns.index("image"), columns.index("labels")
    positive_col = columns.index("positive") if "positive" in columns else None
    negatives_col = columns.index("negatives") if "negatives" in columns else None
    wanted = {str(PurePosixPath(image)): by_class for image, by_class in decisions.items()}
    applied, problems, matched = {"confirm": 0, "dismiss": 0}, [], set()
    negatives: dict[int, list[str]] = {}  # the new negatives of the rows whose negatives changed
    for line, record in records:
        if len(record) != len(header) or not record[image_col].strip():
            continue  # a malformed row stays as it is
        image = str(PurePosixPath(record[image_col].strip()))
        if image not in wanted:
            continue
        matched.add(image)
        labels = split_names(record[labels_col])
        absent = split_names(record[negatives_col]) if negatives_col is not None else []
        new_labels, new_absent = list(labels), list(absent)
        # Without a positive column every label is annotated (the data set as its annotators left it).
        positives = split_names(record[positive_col]) if positive_col is not None else labels
        new_positives = list(positives)
        for name, decision in wanted[image].items():
            if name not in classes:
                problems.append(f"{image}: unknown class {name!r}")
            elif decision == "dismiss" and name in positives:
                problems.append(f"{image}: {name!r} is the annotated positive and cannot be dismissed")
            elif decision == "confirm":
                new_labels += [] if name in new_labels else [name]
                new_positives += [] if name in new_positives else [name]
                new_absent = [n for n in new_absent if n != name]
                applied["confirm"] += 1
            elif decision == "dismiss":
                new_labels = [n for n in new_labels if n != name]
                new_absent += [] if name in new_absent else [name]
                applied["dismiss"] += 1
            else:
                problems.append(f"{image}: unknown decision {decision!r} for {name!r}")
        if new_labels != labels:  # rewritten only where changed: every other cell keeps its text
            record[labels_col] = SEPARATOR.join(new_labels)
        if positive_col is not None and new_positives != positives:
            record[positive_col] = SEPARATOR.join(new_positives)
        if new_absent != absent:
            negatives[line] = new_absent
    problems += [f"{image}: not in {split_csv_name}" for image in sorted(set(wanted) - matched)]

    add_negatives = negatives_col is None and any(negatives.values())
    out_header = header + (["negatives"] if add_negatives else [])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(out_header)
    for line, record in records:
        well_formed = len(record) == len(header)
        if well_formed and line in negatives and negatives_col is not None:
            record[negatives_col] = SEPARATOR.join(negatives[line])
        if well_formed and add_negatives:
            record = [*record, SEPARATOR.join(negatives.get(line, []))]
        writer.writerow(record)
    out = atomic_write_text(out_csv, buffer.getvalue())
    return {"out": str(out), "rows": len(records), "confirmed": applied["confirm"], "dismissed": applied["dismiss"],
            "problems": problems}
