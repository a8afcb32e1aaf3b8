"""The Audit tab: a data set audited (from a zip or, where allowed, a server folder), its ranking and
evidence, and the review of its suspects with decisions that persist."""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from spml.app.common import UserError, View, gpu
from spml.app.registry import DEMO_CHECKPOINT, CheckpointRegistry, is_synthetic
from spml.app.workspace import AuditRun, AuditWorkspace
from spml.audit import (
    ReviewError,
    audit_dataset,
    dataset_root,
    export_corrected_dataset,
    load_decisions,
    record_decision,
    resolve_server_dataset,
    safe_extract_zip,
    suspect_evidence,
)
from spml.checkpoint import CheckpointError, LoadedModel
from spml.data.generic import DatasetError, load_dataset
from spml.data.images import ImageLoadError
from spml.data.importers import ConvertError, convert_any
from spml.data.synthetic import make_synthetic_dataset
from spml.runtime import atomic_directory, atomic_write_text

EXAMPLE_AUDIT_SEED = 7  # not the demo's training seed: scenes the model never saw
EXAMPLE_AUDIT_IMAGES = 80  # train.csv rows; the audit reads its protocol 80% (64 scenes)
AUDIT_TABLE_ROWS = 200  # rows of the report shown in the page (the CSV download has them all)
REVIEW_ROWS = 100  # suspects offered for review, best-ranked first
DECISION_LABELS = {"confirm": "confirmed (the label is missing)", "dismiss": "dismissed (the class is absent)"}


def audit_summary_markdown(summary: dict[str, Any]) -> str:
    lines = [f"**Audited** {summary['images']} images of `{summary['split']}`: {summary['candidates']} "
             f"(image, class) candidates scored in {summary['seconds']:.1f} s; the report ranks them by "
             f"`{summary['score']}`."]
    if summary.get("rule_available"):
        lines.append(f"**The rule** (gap > T_gap = {summary['gap_threshold']:.3f} and logit > A_c) rejects "
                     f"{summary['rejected']} of them.")
    evaluation = summary.get("evaluation")
    if evaluation:
        rankings = evaluation["rankings"]
        scores = ", ".join(f"{name} {ranking['overall']['average_precision']:.3f}"
                           for name, ranking in rankings.items() if ranking["overall"]["average_precision"] is not None)
        lines.append(f"**Hidden labels known** ({evaluation['hidden_positives']} missing positives): average "
                     f"precision of each ranking: {scores}.")
    if summary.get("skipped"):
        shown = "; ".join(summary["skipped_messages"][:5])
        lines.append(f"**Skipped** {summary['skipped']} bad rows or images: {shown}"
                     + (" ..." if summary["skipped"] > 5 else ""))
    return "  \n".join(lines)


def audit_curve(summary: dict[str, Any]) -> gr.LinePlot:
    """The precision-recall curves of the audit's ranking and of the class probability against the hidden
    labels (the audit's evaluation); hidden where the data set carries none to score against."""
    evaluation = summary.get("evaluation")
    if not evaluation:
        return gr.LinePlot(value=None, visible=False)
    points = [{"recall": recall, "precision": precision, "ranking": name}
              for name in ("audit", "probability")
              for recall, precision in zip(evaluation["rankings"][name]["curve"]["recall"],
                                           evaluation["rankings"][name]["curve"]["precision"], strict=True)]
    return gr.LinePlot(value=pd.DataFrame(points), visible=True)


def audit_table(rows: list[dict[str, str]]) -> dict[str, list]:
    headers = ["rank", "image", "class", "score", "probability", "gap", "rejected", "positive"]
    has_truth = any(row.get("truth") not in (None, "") for row in rows)
    data = [[int(row["rank"]), row["image"], row["class"], round(float(row["score"]), 4),
             round(float(row["probability"]), 3), round(float(row["gap"]), 3),
             "yes" if row["rejected"] == "1" else "no", row["positive"]] + ([row["truth"]] if has_truth else [])
            for row in rows]
    return {"headers": headers + (["truth"] if has_truth else []), "data": data}


@gpu(duration=120)
def run_audit_job(model: LoadedModel, dataset: Path, split: str, report: Path, top: int,
                  progress: Callable[[int, int], None]) -> None:
    audit_dataset(model, dataset, split, report, batch_size=16, top=top, progress=progress,
                  show_progress_bar=False)


@gpu
def run_evidence(model: LoadedModel, dataset: Path, row: dict[str, str]) -> dict[str, Any]:
    return suspect_evidence(model, dataset, row)


@dataclass(frozen=True)
class AuditView(View):
    """A finished audit as the Audit tab shows it (``/audit`` returns these but the id, which stays private)."""

    audit_summary: str
    audit_table: dict[str, list]
    gallery: Any  # [(image, caption), ...], or gr.skip() to leave the gallery as it is
    report: str
    audit_curve: gr.LinePlot  # precision-recall against the hidden labels; hidden when there are none
    audit_id: str


@dataclass(frozen=True)
class ReviewView(View):
    """One suspect under review: its position among the best-ranked rows, the question, the evidence."""

    position: int
    question: str
    review_cam: Any  # the suspected class's own CAM: where the model sees the missing object (shown first)
    review_positive: Any  # the annotated positive's CAM (None: no positive annotated)
    review_masked: Any
    review_crop: Any
    status: str


@dataclass(frozen=True)
class ExportView(View):
    """The corrected CSV to download, and what it holds."""

    exported: gr.File
    export_message: str


def _audit_view(run: AuditRun, audit_id: str, rows: list[dict[str, str]], gallery: Any) -> AuditView:
    """A finished audit as the tab shows it: its summary, its first rows (of ``rows``), ``gallery``."""
    return AuditView(audit_summary=audit_summary_markdown(run.summary),
                     audit_table=audit_table(rows[:AUDIT_TABLE_ROWS]), gallery=gallery, report=str(run.report),
                     audit_curve=audit_curve(run.summary), audit_id=audit_id)


class AuditController:
    """The Audit view's callbacks: run an audit on an upload, show its ranking and evidence, review it."""

    def __init__(self, registry: CheckpointRegistry, workspace: AuditWorkspace, max_evidence: int = 256):
        self.registry = registry
        self.workspace = workspace
        self.max_evidence = max_evidence
        self._evidence: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def _run(self, audit_id: str | None) -> AuditRun:
        run = self.workspace.open(audit_id)
        if run is None:
            raise UserError("No finished audit to review: run an audit first.", title="No audit")
        return run

    def _source(self, zip_file: Any, server_path: str | None) -> Path:
        if server_path and str(server_path).strip():
            try:
                return resolve_server_dataset(str(server_path).strip())
            except (PermissionError, ReviewError) as error:
                raise UserError(str(error), title="Cannot read this folder") from None
        if not zip_file:
            raise UserError("Upload a zip of a data set: images with classes.txt and a CSV in the data set format.",
                            title="No data set")
        path = zip_file.get("path") if isinstance(zip_file, dict) else zip_file
        return Path(str(path))

    def _prepare(self, source: Path, folder: Path, progress: gr.Progress) -> Path:
        """The data set root inside ``folder``: extracted from the zip (to a scratch folder first, so a
        crash never leaves a half-extracted data set behind; a COCO, VOC, YOLO or imagefolder layout
        converted to the data set format) or the server folder itself."""
        if source.is_dir():
            return source
        data = folder / "data"
        if not data.is_dir():
            progress(0.0, desc="extracting the zip")
            try:
                with atomic_directory(data) as scratch:
                    safe_extract_zip(source, scratch)
            except ReviewError as error:
                raise UserError(str(error).replace(str(source), source.name), title="Cannot use this zip") from None
        try:
            # Our own format is read as it is; COCO, VOC, YOLO and imagefolder are converted into the
            # extraction folder itself, whose CSVs then name the images where they lie (no link, which
            # the review would refuse as leaving the data set folder). The next call finds our format.
            return convert_any(dataset_root(data), data, skip_bad=True)
        except (ConvertError, FileExistsError, ReviewError) as error:
            raise UserError(str(error).replace(str(data), source.name), title="Cannot read this data set") from None

    def audit(self, zip_file: Any, split: str = "train", top: float = 500, gallery_size: float = 12,
              server_path: str = "", checkpoint: str | None = None,
              progress: gr.Progress = gr.Progress()) -> AuditView:
        """``/audit``: summary, ranked table, gallery of the top suspects' evidence, report CSV, audit id."""
        source = self._source(zip_file, server_path)
        return self._audit(source, checkpoint or self.registry.configured, (split or "train").strip(),
                           max(1, int(top or 500)), max(0, min(int(gallery_size or 0), 48)), progress)

    def _example_checkpoint(self, selected: str) -> tuple[str, LoadedModel, str]:
        """The checkpoint that audits the example world (drawn from the synthetic one): the selected one when
        it is a model of that world, else the demo; and a sentence saying so when it is not the selected one."""
        model = self.registry.get(selected)
        if is_synthetic(model):
            return selected, model, ""
        try:
            demo = self.registry.get(DEMO_CHECKPOINT)
        except (UserError, CheckpointError):
            demo = None
        if demo is None or not is_synthetic(demo):
            raise UserError("The example world is the synthetic one (coloured shapes), and this server has no model "
                            f"of it ({DEMO_CHECKPOINT}) to audit it with. Upload a zip of your own data set instead.",
                            title="No example for this checkpoint")
        return DEMO_CHECKPOINT, demo, (f"**Audited with `{DEMO_CHECKPOINT}`**, not the selected `{selected}`: the "
                                       "example world is the synthetic one of coloured shapes, which only a model of "
                                       "that world knows. To audit with the selected model, upload a data set of "
                                       "its classes.  \n")

    def example(self, checkpoint: str | None = None, progress: gr.Progress = gr.Progress()) -> AuditView:
        """The one-click example: a small synthetic world made on the spot with its missing labels known,
        audited (by the selected checkpoint when it is a model of that world, else by the demo, and the summary
        says so); the summary ends with how many of the missing labels the first suspects found."""
        key, model, substitute = self._example_checkpoint(checkpoint or self.registry.configured)
        folder = self.workspace.directory / "examples" / f"synthetic-{model.image_size}"
        with self.workspace.lock(str(folder)):
            if not (folder / "train.csv").is_file():
                progress(0.0, desc="drawing the example world")
                with atomic_directory(folder) as scratch:
                    make_synthetic_dataset(scratch, seed=EXAMPLE_AUDIT_SEED, train=EXAMPLE_AUDIT_IMAGES, val=0,
                                           test=0, image_size=model.image_size, progress=False)
        view = self._audit(folder, key, "train", 500, 12, progress)
        run = self._run(view.audit_id)
        summary = run.summary  # read from report.json on each access
        evaluation = summary.get("evaluation") or {}
        hidden = int(evaluation.get("hidden_positives") or 0)
        found = sum(row.get("truth") == "1" for row in run.rows(hidden))
        note = (f"  \n**Example world:** {summary['images']} scenes drawn on the spot, each annotated with one "
                f"of its shapes; {hidden} labels are missing. **The first {hidden} suspects found {found} of them** "
                f"({100.0 * found / max(hidden, 1):.0f}%). Review them below: C confirms, D dismisses.")
        return replace(view, audit_summary=substitute + view.audit_summary + note)

    def _audit(self, source: Path, key: str, split: str, top: int, gallery_size: int,
               progress: gr.Progress) -> AuditView:
        audit_id = self.workspace.audit_id(source, key, split)
        folder = self.workspace.directory / audit_id
        with self.workspace.lock(audit_id):
            if self.workspace.open(audit_id) is None:
                model = self.registry.get(key)
                folder.mkdir(parents=True, exist_ok=True)
                dataset = self._prepare(source, folder, progress)
                try:
                    split_csv = load_dataset(dataset, skip_bad=True).split(split).source.name
                    run_audit_job(model, dataset, split, folder / "report.csv", top,
                                  lambda done, total: progress(done / max(total, 1),
                                                               desc=f"auditing: {done} of {total} images"))
                except (DatasetError, ValueError) as error:
                    message = str(error)
                    if source.is_file():  # the server's folders mean nothing to users: name their zip
                        for folder_name in {str(dataset.resolve()), str(dataset)}:
                            message = message.replace(folder_name, source.name)
                    raise UserError(message, title="Cannot audit this data set") from None
                meta = {"checkpoint": key, "split": split, "split_csv": split_csv,
                        "dataset": os.path.relpath(dataset, folder), "source": source.name}
                atomic_write_text(folder / "meta.json", json.dumps(meta, indent=1))
        run = self._run(audit_id)
        rows = run.rows(max(AUDIT_TABLE_ROWS, gallery_size))
        gallery = []
        for row in progress.tqdm(rows[:gallery_size], desc="evidence of the top suspects"):
            evidence = self._evidence_of(run, audit_id, row)
            gallery.append((evidence["suspect_overlay"], f"#{row['rank']} {row['class']}? {row['image']} "
                                                 f"(score {float(row['score']):.3f}, positive {row['positive']})"))
        return _audit_view(run, audit_id, rows, gallery)

    def _evidence_of(self, run: AuditRun, audit_id: str, row: dict[str, str]) -> dict[str, Any]:
        cache_key = (audit_id, int(row["rank"]))
        with self._lock:
            if cache_key in self._evidence:
                self._evidence.move_to_end(cache_key)
                return self._evidence[cache_key]
        model = self.registry.get(run.meta["checkpoint"])
        try:
            evidence = run_evidence(model, run.dataset, row)
        except (ImageLoadError, ReviewError) as error:
            raise UserError(str(error), title="Cannot show this suspect") from None
        with self._lock:
            self._evidence[cache_key] = evidence
            while len(self._evidence) > self.max_evidence:
                self._evidence.popitem(last=False)
        return evidence

    # ---- review: position is the index of the suspect shown, among the report's best REVIEW_ROWS rows

    def _review_view(self, audit_id: str, position: int | None) -> ReviewView:
        """The suspect at ``position``; None: the best-ranked undecided one."""
        run = self._run(audit_id)
        rows = run.rows(REVIEW_ROWS)
        if not rows:
            return ReviewView(0, "The report holds no suspect.", None, None, None, None, "")
        decisions = load_decisions(run.report)
        if position is None:
            position = next((i for i, row in enumerate(rows) if row["class"] not in decisions.get(row["image"], {})), 0)
        position = min(max(int(position), 0), len(rows) - 1)
        row = rows[position]
        evidence = self._evidence_of(run, audit_id, row)
        decision = decisions.get(row["image"], {}).get(row["class"])
        made = [d for d in (decisions.get(r["image"], {}).get(r["class"]) for r in rows) if d is not None]
        positive = (f"the annotated positive `{evidence['positive']}`'s region" if evidence["positive_given"]
                    else "no annotated positive: the masked pass saw the whole image")
        rule = "rejected by the rule" if evidence["rejected"] else "not rejected by the rule"
        question = (
            f"**Suspect {position + 1} of {len(rows)}** · `{row['image']}`  \n"
            f"Is there a **{row['class']}** in this image? First: where the model sees a {row['class']} (its own "
            f"CAM); then {positive}.  \n"
            f"Score {float(row['score']):.3f} · probability {evidence['probability']:.3f} · logit "
            f"{evidence['logit']:.2f} → {evidence['masked_logit']:.2f} masked (gap {evidence['gap']:.2f}, {rule}).  \n"
            f"Decision: **{DECISION_LABELS.get(decision, 'undecided')}**"
        )
        status = (f"Decided {len(made)} of {len(rows)}: {made.count('confirm')} confirmed, {made.count('dismiss')} "
                  "dismissed. Keys: **C** confirm · **D** dismiss · **←/→** or **P/N** previous/next · **U** undo.")
        return ReviewView(position=position, question=question, review_cam=evidence["suspect_overlay"],
                          review_positive=evidence["positive_overlay"], review_masked=evidence["masked_image"],
                          review_crop=evidence["crop"], status=status)

    def review_open(self, audit_id: str | None) -> ReviewView:
        """Open the review at the best-ranked undecided suspect."""
        return self._review_view(audit_id, None)

    def review_move(self, audit_id: str | None, position: int, step: int) -> ReviewView:
        return self._review_view(audit_id, int(position or 0) + step)

    def review_decide(self, audit_id: str | None, position: int, decision: str | None) -> ReviewView:
        """Record ``decision`` (None withdraws it) on the suspect shown; a decision moves on to the next."""
        run = self._run(audit_id)
        rows = run.rows(REVIEW_ROWS)
        position = min(max(int(position or 0), 0), max(len(rows) - 1, 0))
        if rows:
            row = rows[position]
            try:
                record_decision(run.report, row["image"], row["class"], decision)
            except ReviewError as error:
                raise UserError(str(error), title="Cannot record this decision") from None
        return self._review_view(audit_id, position + (decision is not None))

    def review_export(self, audit_id: str | None) -> ExportView:
        """The audited split's CSV with the decisions applied, to download (the file box appears)."""
        run = self._run(audit_id)
        out = run.folder / "corrected" / run.meta["split_csv"]
        try:
            result = export_corrected_dataset(run.dataset, run.meta["split_csv"], load_decisions(run.report), out)
        except (ReviewError, OSError) as error:
            raise UserError(str(error), title="Cannot export") from None
        message = (f"Wrote `{run.meta['split_csv']}` with {result['confirmed']} labels added and "
                   f"{result['dismissed']} classes marked absent (`negatives` column).")
        if result["problems"]:
            message += " Not applied: " + "; ".join(result["problems"][:5])
        return ExportView(exported=gr.File(value=str(out), visible=True), export_message=message)

    def restore(self, audit_id: str | None) -> tuple[AuditView, ReviewView] | tuple:
        """On page load: the session's last audit (its id kept by the browser), or nothing to show."""
        run = self.workspace.open(audit_id)
        if run is None:
            return (*AuditView.unchanged(), *ReviewView.unchanged())
        return _audit_view(run, audit_id, run.rows(AUDIT_TABLE_ROWS), gr.skip()), self.review_open(audit_id)

