"""The Inspect tab: one image analysed, formatted for the page; the examples of a checkpoint's world."""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from spml.app.common import UserError, View, gpu
from spml.app.registry import (
    DEFAULT_CHECKPOINT,
    CheckpointRegistry,
    class_list,
    describe_checkpoint,
    is_synthetic,
)
from spml.cam import heatmap_overlay, upsample_maps
from spml.checkpoint import CheckpointError, LoadedModel
from spml.data.images import DOWNSCALED_KEY, MAX_SIDE, ImageLoadError, load_image
from spml.data.sample_photos import EXAMPLE_PHOTOS, load_photo
from spml.data.synthetic import render_scene
from spml.inspect import AnalysisResult, analyze

log = logging.getLogger(__name__)

EXAMPLE_SEED = 0  # the seed `train prepare synthetic` defaults to: examples are the demo's own test scenes
EXAMPLE_COUNT = 8  # at most, of either kind
NORM_LABELS = {"image": "per image (paper)", "calr": "CALR code (batch-wise)", "ignore": "IGNORE code (batch-wise)"}
TABLE_HEADERS = ["class", "probability", "logit", "masked logit", "gap", "T_gap", "A_c", "rejected"]
GALLERY_SIZE = 8  # CAMs of the predicted labels shown at most ...
GALLERY_PROBABILITY = 0.5  # ... those at or above this probability (at least the top prediction)
THUMBNAIL_SIDE = 192  # the gallery's images, longer side in pixels
_GRAY_MODES = {"1", "L", "P"}
_DEEP_MODES = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32, "F": 32}


# ------------------------------------------------------------------------------------ display formatting


@dataclass(frozen=True)
class AnalysisView(View):
    """One analysis as the Inspect view's components take it (``/analyze`` returns these, in this order)."""

    labels: dict[str, float]
    overlay: np.ndarray
    masked: np.ndarray
    crop: np.ndarray | None
    table: dict[str, list]
    summary: str
    world: str  # the notice when the image does not look like the checkpoint's world; "" otherwise
    cam_gallery: list[tuple[np.ndarray, str]]  # the predicted labels' CAMs, captioned "class p"
    gallery_classes: list[str]  # the gallery's classes in its order: a click picks the positive by index


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
    positives = result.positives
    named = ", ".join(f"`{name}` ({how}, p = {result.probabilities[name]:.3f})" for name in positives)
    union = " (the union of their regions is the mask)" if len(positives) > 1 else ""
    lines = [
        f"**Positive{'s' if len(positives) > 1 else ''}:** {named}{union}. "
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


def gallery_classes(result: AnalysisResult) -> list[str]:
    """The predicted labels, most probable first: those at or above GALLERY_PROBABILITY (at least the top
    one), GALLERY_SIZE at most."""
    ranked = sorted(result.classes, key=lambda name: -result.probabilities[name])
    chosen = [name for name in ranked if result.probabilities[name] >= GALLERY_PROBABILITY] or ranked[:1]
    return chosen[:GALLERY_SIZE]


def cam_gallery(result: AnalysisResult, classes: list[str]) -> list[tuple[np.ndarray, str]]:
    """Each class's CAM (from the analysis's one forward pass) over a thumbnail of the image."""
    if result.class_maps is None or not classes:
        return []
    height, width = result.image.shape[:2]
    scale = min(1.0, THUMBNAIL_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    thumbnail = np.asarray(Image.fromarray(result.image).resize(size, Image.Resampling.BILINEAR))
    indices = torch.tensor([result.classes.index(name) for name in classes])
    maps = upsample_maps(torch.from_numpy(result.class_maps)[indices], (size[1], size[0]),
                         result.input_window).clamp(0, 1).numpy()
    # One overlay of the maps stacked one above the other (one colour-map call, not one per class).
    stacked = heatmap_overlay(np.tile(thumbnail, (len(classes), 1, 1)), maps.reshape(-1, maps.shape[-1]))
    return [(overlay, f"{name} {result.probabilities[name]:.2f}")
            for name, overlay in zip(classes, np.split(stacked, len(classes)), strict=True)]


def world_notice(result: AnalysisResult, model: LoadedModel) -> str:
    """Markdown beside the labels when the image does not look like the checkpoint's training world."""
    if result.in_distribution is not False:
        return ""
    world = ("the synthetic world of coloured shapes" if is_synthetic(model)
             else f"the images of `{model.familiarity.get('data') or 'its training set'}`")
    # A model of the synthetic world is shown a photo, most likely: point to the embedded model of photos.
    advice = (f"To analyse photos, pick `{DEFAULT_CHECKPOINT}` (35 everyday classes) in the *Checkpoint* selector, "
              "or load a checkpoint of your own classes" if is_synthetic(model)
              else "To analyse images of another kind, load a checkpoint trained on them")
    return (f"**This image does not look like the images this model was trained on** ({world}): "
            f"{result.familiarity_reason}. It only knows "
            f"{len(model.classes)} classes ({class_list(model.classes, 12)}), so the labels and maps above say "
            f"little about this image. {advice}: type `hf://OWNER/NAME` in the *Load a checkpoint* field at the "
            "top (or start the app with `SPML_CHECKPOINT=hf://OWNER/NAME`).")


def format_analysis(result: AnalysisResult, model: LoadedModel, notes: list[str] | None = None) -> AnalysisView:
    ranked = dict(sorted(result.probabilities.items(), key=lambda item: -item[1]))
    classes = gallery_classes(result)
    return AnalysisView(
        labels=ranked,
        overlay=result.overlay,
        masked=result.masked_image,
        crop=result.crop if result.box is not None else None,
        table=table_data(result),
        summary=summary_markdown(result, notes or []),
        world=world_notice(result, model),
        cam_gallery=cam_gallery(result, classes),
        gallery_classes=classes,
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


@dataclass(frozen=True)
class Example:
    """One example image of a checkpoint, written where the page can serve it."""

    path: Path
    caption: str  # what it shows
    note: str  # the line the analysis's summary opens with


def examples_label(model: LoadedModel, examples: list[Example]) -> str:
    """The examples' heading: what they are, and for photographs what each shows, left to right."""
    if is_synthetic(model):
        return "Examples from the checkpoint's own world (test scenes it never saw)"
    return "Example photographs shipped with scikit-image, left to right: " + "; ".join(
        example.caption for example in examples)


class ExampleCache:
    """Example images of a checkpoint, written on first request, and their analyses, computed on first click
    and then served from memory (least recently used dropped first). A model of the synthetic world gets
    scenes of its world; any other model scikit-image's photographs of a cat, a face and a motorbike, read from
    the installed package at run time."""

    def __init__(self, directory: Path, count: int = EXAMPLE_COUNT, max_views: int = 128):
        self.directory = Path(directory)
        self.count = count
        self.max_views = max_views
        self._images: dict[str, list[Example]] = {}
        self._views: OrderedDict[tuple, AnalysisView] = OrderedDict()
        self._lock = threading.Lock()

    def images(self, key: str, model: LoadedModel) -> list[Example]:
        """The checkpoint's examples; none where they cannot be made (scikit-image missing)."""
        with self._lock:
            if key not in self._images:
                folder = self.directory / hashlib.sha1(f"{key}|{model.image_size}".encode()).hexdigest()[:16]
                folder.mkdir(parents=True, exist_ok=True)
                self._images[key] = self._render(folder, model) if is_synthetic(model) else self._photos(folder)
            return self._images[key]

    def _render(self, folder: Path, model: LoadedModel) -> list[Example]:
        examples = []
        for index in range(self.count):
            image, labels, _ = render_scene(EXAMPLE_SEED, "test", index, model.image_size)
            path = folder / f"scene-{index:02d}.png"
            image.save(path)
            shows = ", ".join(labels)
            examples.append(Example(path, shows, f"Example scene; its true labels: {shows}."))
        return examples

    def _photos(self, folder: Path) -> list[Example]:
        examples = []
        for photo in EXAMPLE_PHOTOS[: self.count]:
            path = folder / f"{photo.name}.png"
            try:
                if not path.is_file():
                    load_photo(photo.name).save(path)
            except (ImportError, OSError) as error:  # examples are a courtesy: the page works without them
                log.warning("no example photo %s: %s", photo.name, error)
                continue
            examples.append(Example(path, photo.caption, f"Example photograph: {photo.caption}; it shows a "
                                                         f"`{photo.label}`."))
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


@dataclass(frozen=True)
class CheckpointView(View):
    """What changes on the page when another checkpoint is selected."""

    session_checkpoint: str
    description: str
    positive: gr.Dropdown
    threshold: gr.Slider
    norm: gr.Radio
    examples: gr.Dataset


@dataclass(frozen=True)
class LoadView(View):
    """A checkpoint loaded through the page's field: the selector, now offering it and set to it."""

    selector: gr.Dropdown
    load_status: str


class InspectController:
    """The Inspect tab's callbacks, bound to the shared checkpoints and example cache."""

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
        return format_analysis(result, model, notes)

    def analyze(self, image: Any, positive: str | None = "", cam_threshold: float | None = None,
                cam_norm: str | None = None, checkpoint: str | None = None) -> AnalysisView:
        """``/analyze``: labels, CAM overlay, masked image, crop, table of the other classes, summary."""
        source, name = _image_path(image)
        return self._view(self._model(checkpoint), source, name, positive, cam_threshold, cam_norm)

    def load_checkpoint(self, source: str, progress: gr.Progress = gr.Progress()) -> LoadView:
        """The *Load a checkpoint* field: validate, load and offer the checkpoint; selecting it follows."""
        key = self.registry.add(source, lambda done, what: progress(done, desc=what))
        return LoadView(selector=gr.Dropdown(choices=self.registry.keys(), value=key),
                        load_status=f"Loaded `{key}`: it is selected, and offered in the selector to every visitor "
                                    "of this server until it restarts.")

    @staticmethod
    def pick_positive(classes: list[str], selected: gr.SelectData) -> str:
        """A click on the CAM gallery: the clicked label becomes the positive."""
        if not classes or not 0 <= selected.index < len(classes):
            raise UserError("That label is no longer shown: analyse again.", title="No such label")
        return classes[selected.index]

    def example(self, index: int, checkpoint: str | None, positive: str | None = "",
                cam_threshold: float | None = None, cam_norm: str | None = None) -> tuple[str, AnalysisView]:
        """A click on example ``index``: the example into the image input, and its analysis (cached)."""
        key = checkpoint or self.registry.configured
        model = self._model(key)
        images = self.examples.images(key, model)
        if not 0 <= int(index) < len(images):
            raise UserError(f"No example {index}.", title="No such example")
        chosen = images[int(index)]
        cache_key = (key, int(index), (positive or "").strip(), cam_threshold, cam_norm)
        view = self.examples.view(cache_key, lambda: self._view(model, str(chosen.path), chosen.path.name, positive,
                                                                 cam_threshold, cam_norm, [chosen.note]))
        return str(chosen.path), view

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
            "examples": [[str(example.path)] for example in examples],
            "examples_label": examples_label(model, examples),
        }

    def select_checkpoint(self, key: str) -> CheckpointView:
        """The checkpoint selector changed: the session's checkpoint and every control that depends on it."""
        defaults = self.checkpoint_defaults(key)
        return CheckpointView(
            session_checkpoint=defaults["key"],
            description=defaults["description"],
            positive=gr.Dropdown(choices=defaults["classes"], value=""),
            threshold=gr.Slider(value=defaults["cam_threshold"]),
            norm=gr.Radio(value=defaults["cam_norm"]),
            examples=gr.Dataset(samples=defaults["examples"], label=defaults["examples_label"],
                                visible=bool(defaults["examples"])),
        )

