"""Everything the app does apart from its layout: the checkpoints on offer, the callbacks of the page's
events (plain functions, testable without a browser), the display formatting of an analysis, the
example images and their lazy cache. The model logic itself is ``spml.inspect.analyze``.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from spml.audit import (
    ReviewError,
    audit_dataset,
    export_corrected_dataset,
    load_decisions,
    record_decision,
    report_json_path,
    resolve_server_dataset,
    safe_extract_zip,
    suspect_evidence,
)
from spml.checkpoint import CheckpointError, LoadedModel, load_model, read_config
from spml.data.generic import DatasetError, load_dataset
from spml.data.images import DOWNSCALED_KEY, MAX_SIDE, ImageLoadError, load_image
from spml.data.synthetic import SYNTHETIC_CLASSES, render_scene
from spml.inference import optimize_for_inference
from spml.inspect import AnalysisResult, analyze
from spml.runtime import resolve_device

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "checkpoints/demo"
EXAMPLE_SEED = 0  # the seed `train prepare synthetic` defaults to: examples are the demo's own test scenes
EXAMPLE_COUNT = 8
NORM_LABELS = {"image": "per image (paper)", "calr": "CALR code (batch-wise)", "ignore": "IGNORE code (batch-wise)"}
TABLE_HEADERS = ["class", "probability", "logit", "masked logit", "gap", "T_gap", "A_c", "rejected"]
_GRAY_MODES = {"1", "L", "P"}
_DEEP_MODES = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32, "F": 32}


def gpu(function: Callable | None = None, *, duration: int = 60) -> Callable:
    """ZeroGPU: ``spaces.GPU`` lends a GPU for each call (at most ``duration`` seconds) when the
    ``spaces`` package is installed (a no-op outside ZeroGPU hardware); without it, nothing changes.
    Use as ``@gpu`` or ``@gpu(duration=...)``."""
    if function is None:
        return lambda inner: gpu(inner, duration=duration)
    try:
        import spaces
    except ImportError:
        return function
    return spaces.GPU(function, duration=duration)


def default_device() -> str:
    # On ZeroGPU, CUDA placement at load time is deferred by `spaces` until a decorated call runs.
    zero_gpu = bool(os.environ.get("SPACES_ZERO_GPU"))
    return "cuda" if zero_gpu else str(resolve_device("auto"))


class UserError(gr.Error):
    """A problem with what the user sent (not a bug): shown in the page, without a traceback in the log."""

    def __init__(self, message: str, title: str = "Cannot analyse this input"):
        super().__init__(message, duration=None, title=title, print_exception=False)


# --------------------------------------------------------------------------------------- checkpoints


class CheckpointRegistry:
    """The checkpoints the page offers (the configured one and those found under ``search_dir``) and
    the models loaded from them, shared by every session and thread.

    A model is only ever read after loading (eval mode, inference mode, no hooks), so threads share it
    safely; loading happens once per checkpoint, under a lock of its own.
    """

    def __init__(self, configured: str, base_dir: Path, search_dir: Path | None = None,
                 device: str | None = None, max_loaded: int = 3):
        self.configured = configured
        self.base_dir = Path(base_dir)
        self.search_dir = Path(search_dir) if search_dir is not None else self.base_dir / "checkpoints"
        self.device = device or default_device()
        self.max_loaded = max(1, max_loaded)
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def _local(self, key: str) -> Path | None:
        if key.startswith("hf://"):
            return None
        path = Path(key)
        return (path if path.is_absolute() else self.base_dir / path).resolve()

    def keys(self) -> list[str]:
        """The configured checkpoint first, then every checkpoint directory under ``search_dir``
        (three levels deep at most, e.g. ``checkpoints/run/best``), each once."""
        keys = [self.configured]
        seen = {self._local(self.configured)}
        if self.search_dir.is_dir():
            found = [p.parent for depth in ("*", "*/*", "*/*/*") for p in self.search_dir.glob(f"{depth}/config.json")]
            for directory in sorted(found):
                resolved = directory.resolve()
                if resolved in seen:
                    continue
                try:
                    read_config(directory)
                except CheckpointError:
                    continue  # a config.json of something else: not offered
                seen.add(resolved)
                try:
                    keys.append(str(resolved.relative_to(self.base_dir.resolve())))
                except ValueError:
                    keys.append(str(resolved))
        return keys

    def get(self, key: str | None = None) -> LoadedModel:
        """The model of ``key`` (default: the configured checkpoint), loaded and optimised on first use."""
        key = key or self.configured
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loading = self._loading.setdefault(key, threading.Lock())
        if key != self.configured and key not in self.keys():
            # Only listed checkpoints: the key comes from the browser and must not name arbitrary paths.
            raise UserError(f"unknown checkpoint {key!r}", title="Cannot load this checkpoint")
        with loading:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            local = self._local(key)
            model = load_model(local if local is not None else key, device=self.device)
            optimize_for_inference(model.network)
            model.source = key
            with self._lock:
                self._models[key] = model
                while len(self._models) > self.max_loaded:
                    oldest = next(k for k in self._models if k != self.configured)
                    del self._models[oldest]
            return model


def _first(mapping: dict[str, Any], *names: str) -> Any:
    return next((mapping[name] for name in names if mapping.get(name) not in (None, "")), None)


def is_synthetic(model: LoadedModel) -> bool:
    return list(model.classes) == list(SYNTHETIC_CLASSES)


def describe_checkpoint(key: str, model: LoadedModel) -> str:
    """Markdown: which checkpoint is loaded, what it was trained on and how well it does."""
    training = model.training
    arch = model.network.arch_config().get("arch", "?")
    dataset = _first(training, "dataset", "data", "data_set", "dataset_name")
    if dataset is None and is_synthetic(model):
        dataset = "synthetic"
    world = " (the synthetic world: coloured shapes, each class a shape in a hue band of its own)" \
        if is_synthetic(model) else ""
    scores = []
    for label, names in (("test", ("test_map",)), ("validation", ("best_val_map", "val_map"))):
        value = _first(training, *names)
        if value is not None:
            scores.append(f"{label} mAP **{float(value):.1f}**")
    loss = _first(training, "loss")
    epochs = _first(training, "epochs")
    trained = f"`{Path(str(dataset)).name if dataset else 'an unrecorded data set'}`{world}"
    recipe = ", ".join(part for part in (f"loss `{loss}`" if loss else "",
                                         f"{epochs} epoch{'' if str(epochs) == '1' else 's'}" if epochs else "")
                       if part)
    return (
        f"**Loaded:** `{key}` — {arch}, {len(model.classes)} classes, {model.image_size} px input.  \n"
        f"**Trained on** {trained}{f' ({recipe})' if recipe else ''}.  \n"
        f"**Measured:** {', '.join(scores) if scores else 'no mAP recorded in this checkpoint'}."
    )


# ------------------------------------------------------------------------------------ display formatting


@dataclass(frozen=True)
class AnalysisView:
    """One analysis as the Inspect view's components take it."""

    labels: dict[str, float]
    overlay: np.ndarray
    masked: np.ndarray
    crop: np.ndarray | None
    table: dict[str, list]
    summary: str

    def outputs(self) -> tuple:
        return self.labels, self.overlay, self.masked, self.crop, self.table, self.summary


def _number(value: float | None) -> float | str:
    return "—" if value is None else round(float(value), 3)


def table_data(result: AnalysisResult) -> dict[str, list]:
    """Every class but the positive; the rejected ones first (``AnalysisResult.table``'s order)."""
    rows = [
        [row["class"], _number(row["probability"]), _number(row["logit"]), _number(row["masked_logit"]),
         _number(row["gap"]), _number(row["gap_threshold"]), _number(row["class_average"]),
         "yes" if row["rejected"] else "no"]
        for row in result.table()
    ]
    return {"headers": TABLE_HEADERS, "data": rows}


def summary_markdown(result: AnalysisResult, notes: list[str]) -> str:
    height, width = result.image.shape[:2]
    how = "as given" if result.positive_given else "the top prediction"
    lines = [
        f"**Positive:** `{result.positive}` ({how}, p = {result.probabilities[result.positive]:.3f}). "
        f"**CAM:** {NORM_LABELS.get(result.cam_norm, result.cam_norm)} normalisation, threshold "
        f"{result.cam_threshold:.2f}."
    ]
    if result.box is None:
        lines.append("**Mask:** empty at this threshold (no pixel of the CAM is above it): lower the threshold.")
    else:
        left, top, right, bottom = result.box
        share = 100.0 * float(result.mask.mean())
        lines.append(f"**Mask:** {share:.0f}% of the image; bounding box ({left}, {top})–({right}, {bottom}).")
    if result.gap_threshold is None:
        lines.append("**Rule:** this checkpoint stores no running thresholds, so nothing can be rejected.")
    elif result.rejected:
        lines.append(f"**Rejected as likely false negatives:** {', '.join(f'`{c}`' for c in result.rejected)} "
                     f"(gap > T_gap = {result.gap_threshold:.3f} and logit > A_c).")
    else:
        lines.append(f"**Rejected:** none (T_gap = {result.gap_threshold:.3f}).")
    lines.append(f"**Analysed at** {width}×{height} px." + "".join(f" {note}" for note in notes))
    return "  \n".join(lines)


def format_analysis(result: AnalysisResult, notes: list[str] | None = None) -> AnalysisView:
    ranked = dict(sorted(result.probabilities.items(), key=lambda item: -item[1]))
    return AnalysisView(
        labels=ranked,
        overlay=result.overlay,
        masked=result.masked_image,
        crop=result.crop if result.box is not None else None,
        table=table_data(result),
        summary=summary_markdown(result, notes or []),
    )


def input_notes(path: str | Path | None, picture: Image.Image) -> list[str]:
    """What was done to make the input analysable: one short sentence per conversion."""
    notes = []
    if path is not None:
        try:
            with Image.open(path) as header:  # header only: the pixels were decoded by load_image
                mode, frames, kind = header.mode, getattr(header, "n_frames", 1), header.format or "image"
                orientation = int(header.getexif().get(0x0112, 1))
        except Exception:  # noqa: BLE001 - notes are a courtesy; load_image already accepted the file
            mode, frames, kind, orientation = "RGB", 1, "image", 1
        if frames > 1:
            notes.append(f"Animated {kind} of {frames} frames: the first frame is analysed.")
        if mode in _DEEP_MODES:
            notes.append(f"{_DEEP_MODES[mode]}-bit image scaled to 8 bits.")
        elif mode == "CMYK":
            notes.append("CMYK converted to RGB.")
        elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in picture.info):
            notes.append("Transparent areas composited on white.")
        elif mode in _GRAY_MODES:
            notes.append("Grayscale or palette image converted to RGB.")
        if orientation != 1:
            notes.append(f"Turned upright by its EXIF orientation ({orientation}).")
    if DOWNSCALED_KEY in picture.info:
        width, height = picture.info[DOWNSCALED_KEY]
        notes.append(f"Downscaled from {width}×{height} (the longer side is capped at {MAX_SIDE} px).")
    return notes


# ------------------------------------------------------------------------------------------- examples


class ExampleCache:
    """Example images of a checkpoint's own world, written on first request, and their analyses,
    computed on first click and then served from memory (least recently used dropped first)."""

    def __init__(self, directory: Path, count: int = EXAMPLE_COUNT, max_views: int = 128):
        self.directory = Path(directory)
        self.count = count
        self.max_views = max_views
        self._images: dict[str, list[tuple[Path, str]]] = {}
        self._views: OrderedDict[tuple, AnalysisView] = OrderedDict()
        self._lock = threading.Lock()

    def images(self, key: str, model: LoadedModel) -> list[tuple[Path, str]]:
        """(file, caption) pairs; none for a checkpoint whose world this app cannot draw from."""
        with self._lock:
            if key not in self._images:
                self._images[key] = self._render(key, model) if is_synthetic(model) else []
            return self._images[key]

    def _render(self, key: str, model: LoadedModel) -> list[tuple[Path, str]]:
        folder = self.directory / hashlib.sha1(f"{key}|{model.image_size}".encode()).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        examples = []
        for index in range(self.count):
            image, labels, _ = render_scene(EXAMPLE_SEED, "test", index, model.image_size)
            path = folder / f"scene-{index:02d}.png"
            image.save(path)
            examples.append((path, ", ".join(labels)))
        return examples

    def view(self, cache_key: tuple, compute: Callable[[], AnalysisView]) -> AnalysisView:
        with self._lock:
            if cache_key in self._views:
                self._views.move_to_end(cache_key)
                return self._views[cache_key]
        view = compute()  # outside the lock: other examples stay servable meanwhile
        with self._lock:
            self._views[cache_key] = view
            while len(self._views) > self.max_views:
                self._views.popitem(last=False)
        return view


# ------------------------------------------------------------------------------------------ callbacks


def _image_path(image: Any) -> tuple[str | bytes, str | None]:
    """The file (or bytes) behind what the Image input sent: a Gradio file payload, a data URL or a path.
    Returns it with the name to show in messages."""
    if image is None or image == "":
        raise UserError("Upload, paste or capture an image first.", title="No image")
    if isinstance(image, dict):
        url, path = image.get("url") or "", image.get("path")
        if path is None and url.startswith("data:"):
            try:
                return base64.b64decode(url.split(",", 1)[1], validate=False), "pasted image"
            except (ValueError, IndexError):
                raise UserError("The pasted image data could not be decoded.") from None
        if path is None:
            raise UserError("No image file was received.", title="No image")
        return str(path), image.get("orig_name") or Path(str(path)).name
    return str(image), Path(str(image)).name


@gpu
def run_analysis(model: LoadedModel, picture: Image.Image, positive: str, cam_threshold: float | None,
                 cam_norm: str | None) -> AnalysisResult:
    """The GPU work of one request (decorated at import, as ZeroGPU requires); returns CPU data only."""
    return analyze(model, picture, positive=positive or None, cam_threshold=cam_threshold, cam_norm=cam_norm)


class Controller:
    """The page's callbacks, bound to the shared checkpoints and example cache."""

    def __init__(self, registry: CheckpointRegistry, examples: ExampleCache):
        self.registry = registry
        self.examples = examples

    def _model(self, checkpoint: str | None) -> LoadedModel:
        try:
            return self.registry.get(checkpoint)
        except CheckpointError as error:
            raise UserError(str(error), title="Cannot load this checkpoint") from None

    def _view(self, model: LoadedModel, source: str | bytes, name: str | None, positive: str | None,
              cam_threshold: float | None, cam_norm: str | None, notes: list[str] | None = None) -> AnalysisView:
        try:
            threshold = None if cam_threshold in (None, "") else float(cam_threshold)
        except (TypeError, ValueError):
            raise UserError(f"The CAM threshold must be a number, got {cam_threshold!r}.") from None
        try:
            picture = load_image(source)
        except ImageLoadError as error:
            message = str(error)
            if isinstance(source, str) and name:
                message = message.replace(source, name)  # the server's temporary path means nothing to users
            raise UserError(message) from None
        notes = [*(notes or []), *input_notes(source if isinstance(source, str) else None, picture)]
        try:
            result = run_analysis(model, picture, (positive or "").strip(), threshold, cam_norm or None)
        except ValueError as error:  # analyze's own checks: unknown class, threshold, normalisation
            raise UserError(str(error)) from None
        except Exception as error:  # noqa: BLE001 - any failure must leave the app serving the next request
            log.exception("analysis failed")
            raise gr.Error(f"The analysis failed ({type(error).__name__}: {error}).") from None
        return format_analysis(result, notes)

    def analyze(self, image: Any, positive: str | None = "", cam_threshold: float | None = None,
                cam_norm: str | None = None, checkpoint: str | None = None) -> tuple:
        """``/analyze``: labels, CAM overlay, masked image, crop, table of the other classes, summary."""
        source, name = _image_path(image)
        return self._view(self._model(checkpoint), source, name, positive, cam_threshold, cam_norm).outputs()

    def example(self, index: int, checkpoint: str | None, positive: str | None = "",
                cam_threshold: float | None = None, cam_norm: str | None = None) -> tuple:
        """A click on example ``index``: the example into the image input, and its analysis (cached)."""
        key = checkpoint or self.registry.configured
        model = self._model(key)
        images = self.examples.images(key, model)
        if not 0 <= int(index) < len(images):
            raise UserError(f"No example {index}.", title="No such example")
        path, caption = images[int(index)]
        notes = [f"Example scene; its true labels: {caption}."]
        cache_key = (key, int(index), (positive or "").strip(), cam_threshold, cam_norm)
        view = self.examples.view(cache_key, lambda: self._view(model, str(path), path.name, positive,
                                                                 cam_threshold, cam_norm, notes))
        return (str(path), *view.outputs())

    def checkpoint_defaults(self, key: str | None = None) -> dict[str, Any]:
        """What the page shows for a checkpoint: description, class choices, CAM defaults, examples."""
        key = key or self.registry.configured
        model = self._model(key)
        examples = self.examples.images(key, model)
        return {
            "key": key,
            "description": describe_checkpoint(key, model),
            "classes": [("top prediction", "")] + [(name, name) for name in model.classes],
            "cam_threshold": model.cam_threshold,
            "cam_norm": model.cam_norm,
            "examples": [[str(path)] for path, _ in examples],
        }

    def select_checkpoint(self, key: str) -> tuple:
        """The checkpoint selector changed: the session's checkpoint and every control that depends on it."""
        defaults = self.checkpoint_defaults(key)
        return (
            defaults["key"],
            defaults["description"],
            gr.Dropdown(choices=defaults["classes"], value=""),
            gr.Slider(value=defaults["cam_threshold"]),
            gr.Radio(value=defaults["cam_norm"]),
            gr.Dataset(samples=defaults["examples"], visible=bool(defaults["examples"])),
        )


# --------------------------------------------------------------------------------------------- audit

AUDIT_TABLE_ROWS = 200  # rows of the report shown in the page (the CSV download has them all)
REVIEW_ROWS = 100  # suspects offered for review, best-ranked first
DECISION_LABELS = {"confirm": "confirmed (the label is missing)", "dismiss": "dismissed (the class is absent)"}
_AUDIT_ID = re.compile(r"^[0-9a-f]{24}$")
REVIEW_KEYS_JS = """() => {
  if (window.spmlReviewKeys) return;
  window.spmlReviewKeys = true;
  const keys = {c: "review-confirm", d: "review-dismiss", u: "review-undo", n: "review-next", p: "review-prev",
                ArrowRight: "review-next", ArrowLeft: "review-prev"};
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))) return;
    const button = document.getElementById(keys[event.key] || keys[event.key.toLowerCase()] || "");
    if (!button || button.offsetParent === null) return;  // the review is not on screen
    event.preventDefault();
    button.click();
  });
}"""


@dataclass(frozen=True)
class AuditRun:
    """An audit's folder: ``data/`` (the extracted data set), ``report.csv`` and its summary
    ``report.json``, the review's ``report.decisions.json``, and ``meta.json`` (how it was made)."""

    folder: Path
    meta: dict[str, Any]

    @property
    def report(self) -> Path:
        return self.folder / "report.csv"

    @property
    def dataset(self) -> Path:
        return self.folder / self.meta["dataset"]

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads(report_json_path(self.report).read_text(encoding="utf-8"))

    def rows(self, limit: int) -> list[dict[str, str]]:
        with self.report.open(newline="", encoding="utf-8") as handle:
            return list(itertools.islice(csv.DictReader(handle), limit))


class AuditWorkspace:
    """Where audits live. An audit's id is a digest of its input (the zip's bytes or the server folder),
    checkpoint and split: the same upload finds its finished audit, and its decisions, again (after a
    page reload or a restart), and nobody can guess another's. One lock per id keeps two uploads of
    the same zip from writing the same folder at once."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def audit_id(self, source: Path, checkpoint: str, split: str) -> str:
        digest = hashlib.sha256(f"{checkpoint}\n{split}\n".encode())
        if source.is_file():
            with source.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        else:
            digest.update(str(source.resolve()).encode())
        return digest.hexdigest()[:24]

    def lock(self, audit_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(audit_id, threading.Lock())

    def open(self, audit_id: str | None) -> AuditRun | None:
        """The finished audit of ``audit_id``; None for anything else (unknown, unfinished, malformed id)."""
        if not audit_id or not _AUDIT_ID.match(str(audit_id)):
            return None
        folder = self.directory / audit_id
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        run = AuditRun(folder, meta)
        return run if run.report.is_file() and report_json_path(run.report).is_file() else None

    def browser_secret(self) -> str:
        """The key of the browser-stored audit id, kept on disk so that it outlives a restart."""
        path = self.directory / ".browser-secret"
        with self._guard:
            if not path.is_file():
                self.directory.mkdir(parents=True, exist_ok=True)
                path.write_text(secrets.token_hex(16))
            return path.read_text().strip()


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
        crash never leaves a half-extracted data set behind) or the server folder itself."""
        if source.is_dir():
            return source
        data = folder / "data"
        if not data.is_dir():
            progress(0.0, desc="extracting the zip")
            scratch = folder / "data.partial"
            shutil.rmtree(scratch, ignore_errors=True)
            try:
                safe_extract_zip(source, scratch)
            except ReviewError as error:
                shutil.rmtree(scratch, ignore_errors=True)
                raise UserError(str(error).replace(str(source), source.name), title="Cannot use this zip") from None
            os.replace(scratch, data)
        roots = sorted((p.parent for p in data.rglob("classes.txt")), key=lambda p: len(p.parts))
        return roots[0]

    def audit(self, zip_file: Any, split: str = "train", top: float = 500, gallery_size: float = 12,
              server_path: str = "", checkpoint: str | None = None,
              progress: gr.Progress = gr.Progress()) -> tuple:
        """``/audit``: summary, ranked table, gallery of the top suspects' evidence, report CSV, audit id."""
        key = checkpoint or self.registry.configured
        split = (split or "train").strip()
        top, gallery_size = max(1, int(top or 500)), max(0, min(int(gallery_size or 0), 48))
        source = self._source(zip_file, server_path)
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
                (folder / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        run = self._run(audit_id)
        rows = run.rows(max(AUDIT_TABLE_ROWS, gallery_size))
        gallery = []
        for row in progress.tqdm(rows[:gallery_size], desc="evidence of the top suspects"):
            evidence = self._evidence_of(run, audit_id, row)
            gallery.append((evidence["overlay"], f"#{row['rank']} {row['class']}? {row['image']} "
                                                 f"(score {float(row['score']):.3f}, positive {row['positive']})"))
        return (audit_summary_markdown(run.summary), audit_table(rows[:AUDIT_TABLE_ROWS]), gallery, str(run.report),
                audit_id)

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

    def _review_view(self, audit_id: str, position: int) -> tuple:
        run = self._run(audit_id)
        rows = run.rows(REVIEW_ROWS)
        if not rows:
            return 0, "The report holds no suspect.", None, None, None, ""
        position = min(max(int(position), 0), len(rows) - 1)
        row = rows[position]
        evidence = self._evidence_of(run, audit_id, row)
        decisions = load_decisions(run.report)
        decision = decisions.get(row["image"], {}).get(row["class"])
        made = [d for d in (decisions.get(r["image"], {}).get(r["class"]) for r in rows) if d is not None]
        given = "annotated positive" if evidence["positive_given"] else "no annotated positive; top prediction"
        rule = "rejected by the rule" if evidence["rejected"] else "not rejected by the rule"
        question = (
            f"**Suspect {position + 1} of {len(rows)}** · `{row['image']}`  \n"
            f"Is there a **{row['class']}** in this image? The CAM is that of `{evidence['positive']}` ({given}).  \n"
            f"Score {float(row['score']):.3f} · probability {evidence['probability']:.3f} · logit "
            f"{evidence['logit']:.2f} → {evidence['masked_logit']:.2f} masked (gap {evidence['gap']:.2f}, {rule}).  \n"
            f"Decision: **{DECISION_LABELS.get(decision, 'undecided')}**"
        )
        status = (f"Decided {len(made)} of {len(rows)}: {made.count('confirm')} confirmed, {made.count('dismiss')} "
                  "dismissed. Keys: **C** confirm · **D** dismiss · **←/→** or **P/N** previous/next · **U** undo.")
        crop = evidence["crop"] if evidence["box"] is not None else None
        return position, question, evidence["overlay"], evidence["masked_image"], crop, status

    def review_open(self, audit_id: str | None) -> tuple:
        """Open the review at the best-ranked undecided suspect."""
        run = self._run(audit_id)
        decisions = load_decisions(run.report)
        rows = run.rows(REVIEW_ROWS)
        first = next((i for i, row in enumerate(rows) if row["class"] not in decisions.get(row["image"], {})), 0)
        return self._review_view(audit_id, first)

    def review_move(self, audit_id: str | None, position: int, step: int) -> tuple:
        return self._review_view(audit_id, int(position or 0) + step)

    def review_decide(self, audit_id: str | None, position: int, decision: str | None) -> tuple:
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

    def review_export(self, audit_id: str | None) -> tuple[gr.File, str]:
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
        return gr.File(value=str(out), visible=True), message

    def restore(self, audit_id: str | None) -> tuple:
        """On page load: the session's last audit (its id kept by the browser), or nothing to show."""
        run = self.workspace.open(audit_id)
        if run is None:
            return (gr.skip(),) * 11
        rows = run.rows(AUDIT_TABLE_ROWS)
        return (audit_summary_markdown(run.summary), audit_table(rows), gr.skip(), str(run.report), audit_id,
                *self.review_open(audit_id))


# ----------------------------------------------------------------------------------------- page text

INTRO = """\
# Which labels did the annotator miss?
Many multi-label data sets give each training image **a single positive label**, although several
objects may be in it. Training every other class as *absent* teaches the model false negatives.
**CAM-based loss rejection (CALR)** looks where the model sees the one annotated class (its *class
activation map*, CAM), blanks out the rest of the image, and asks the model again. A class whose score
**drops a lot** once the rest of the image is gone (its logit gap is above the running threshold
T_gap) and that the model **was confident about** (its logit is above its running average A_c) was
probably present elsewhere in the image: its loss term is dropped instead of being trained as absent.
The *Inspect* view shows every step of this on an image of yours.
"""


def method_figure() -> str:
    """An inline SVG of the four steps on a toy scene (a circle annotated, a star not)."""
    mean = "#7c7468"  # the ImageNet mean colour: what the masked-out pixels become
    panel = '<rect x="{x}" y="30" width="140" height="140" rx="6" fill="{fill}" stroke="#888"/>'
    circle = '<circle cx="{x}" cy="75" r="26" fill="#e0302a"/>'
    star = ('<polygon transform="translate({x},130) scale(24)" fill="#8fd400" points="0,-1 0.24,-0.33 0.95,-0.31 '
            '0.38,0.12 0.59,0.81 0,0.4 -0.59,0.81 -0.38,0.12 -0.95,-0.31 -0.24,-0.33"/>')
    arrow = '<path d="M{x} 100 h18" stroke="#555" stroke-width="2" marker-end="url(#arrow)"/>'
    caption = '<text x="{x}" y="190" text-anchor="middle" font-size="12">{text}</text>'
    title = '<text x="{x}" y="20" text-anchor="middle" font-size="13" font-weight="bold">{text}</text>'
    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 800 205" role="img" '
        'aria-label="The CALR method in four steps" style="max-width:800px;width:100%;font-family:sans-serif">',
        '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="6" refY="4" orient="auto">'
        '<path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker>'
        '<radialGradient id="heat"><stop offset="0" stop-color="#d7191c"/><stop offset="0.45" stop-color="#fdae61"/>'
        '<stop offset="0.8" stop-color="#abd9e9" stop-opacity="0.6"/><stop offset="1" stop-color="#2c7bb6" '
        'stop-opacity="0"/></radialGradient></defs>',
        # 1: the image and its one label
        title.format(x=80, text="1. Image, one label"),
        panel.format(x=10, fill="#d9d4c7"), circle.format(x=55), star.format(x=110),
        caption.format(x=80, text="label: circle (star missed)"),
        arrow.format(x=155),
        # 2: the CAM of the positive
        title.format(x=255, text="2. CAM of the circle"),
        panel.format(x=185, fill="#2c7bb6"), '<circle cx="230" cy="75" r="52" fill="url(#heat)"/>',
        caption.format(x=255, text="where the model sees it"),
        arrow.format(x=330),
        # 3: the masked image
        title.format(x=430, text="3. Masked image"),
        panel.format(x=360, fill=mean), '<rect x="370" y="40" width="72" height="72" fill="#d9d4c7"/>',
        circle.format(x=405), '<rect x="370" y="40" width="72" height="72" fill="none" stroke="#fff" '
        'stroke-dasharray="4 3"/>',
        caption.format(x=430, text="CAM > threshold kept"),
        arrow.format(x=505),
        # 4: logits before and after
        title.format(x=660, text="4. Logits: image → masked"),
        '<line x1="540" y1="100" x2="790" y2="100" stroke="#888"/>',
        '<text x="620" y="48" text-anchor="middle" font-size="11">image</text>'
        '<text x="685" y="48" text-anchor="middle" font-size="11">masked</text>',
        '<text x="545" y="60" font-size="12">star</text>',
        '<rect x="590" y="55" width="60" height="45" fill="#8fd400"/><rect x="655" y="100" width="60" height="30" '
        'fill="#8fd400" opacity="0.45"/>',
        '<text x="720" y="70" font-size="11">big gap,</text><text x="720" y="84" font-size="11">confident:</text>',
        '<text x="720" y="98" font-size="11" font-weight="bold" fill="#c00">rejected</text>',
        '<text x="545" y="150" font-size="12">ring</text>',
        '<rect x="590" y="100" width="60" height="42" fill="#3aa"/><rect x="655" y="100" width="60" height="44" '
        'fill="#3aa" opacity="0.45"/>',
        '<text x="720" y="130" font-size="11">no gap:</text><text x="720" y="144" font-size="11">stays negative</text>',
        caption.format(x=660, text="rejected = not trained as absent"),
        "</svg>",
    ]
    return "".join(parts)
