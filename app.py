"""The Gradio app: layout and wiring only (the callbacks are in spml.app, the model logic in spml.inspect
and spml.audit). Components are wired to callbacks by name: each callback returns view objects
(spml.app.common.View) whose field names are the names of the components below.

``python app.py`` serves on 127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT as usual) with the
embedded model of real photos (checkpoints/photos; checkpoints/demo, the synthetic world's, where it is
missing), or the one named by SPML_CHECKPOINT (a directory or hf://OWNER/NAME[@REVISION]).
Audits and their review decisions go to SPML_AUDIT_DIR (default: a folder in the system's temp dir).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import gradio as gr
import torch

from spml.app import assets
from spml.app.audit import AuditController, AuditView, ExportView, ReviewView
from spml.app.common import as_outputs, fix_malloc_threshold
from spml.app.inspect import (
    NORM_LABELS,
    AnalysisView,
    CheckpointView,
    ExampleCache,
    InspectController,
    LoadView,
)
from spml.app.outputs import OutputFiles
from spml.app.registry import DEMO_CHECKPOINT, CheckpointRegistry, default_checkpoint
from spml.app.workspace import AuditWorkspace
from spml.cam import CAM_NORMS

HERE = Path(__file__).resolve().parent
# Requests running the model at once; more wait in the queue. Two fit a 2-core CPU Space.
MODEL_CONCURRENCY = int(os.environ.get("SPML_CONCURRENCY", "2"))
# Each model request gets its share of the cores. More torch threads than free cores make every parallel
# region wait for a descheduled thread: measured 4x (ResNet-50) to 60x (demo) slower on a busy 2-core box.
TORCH_THREADS = int(os.environ.get("SPML_TORCH_THREADS") or max(1, (os.cpu_count() or 1) // MODEL_CONCURRENCY))
QUEUE_SIZE = int(os.environ.get("SPML_QUEUE_SIZE", "64"))
MAX_UPLOAD = os.environ.get("SPML_MAX_UPLOAD", "200mb")
IMAGE_HEIGHT = 320
# Output images fill their frame (less its label), so a 128 px scene is shown large, its pixels sharp.
CSS = f"""
.spml-summary p {{ margin: 0.2em 0; }}
#world-notice:not(:empty) {{ border-left: 4px solid #d97706; background: #fffbeb; padding: 0.4em 0.8em; }}
.spml-fit img {{ width: 100%; height: {IMAGE_HEIGHT - 56}px !important; object-fit: contain;
                 image-rendering: pixelated; }}
{assets.CAM_GALLERY_CSS}"""


def audit_dir() -> Path:
    return Path(os.environ.get("SPML_AUDIT_DIR") or Path(tempfile.gettempdir()) / "spml-audits")


def build_app(checkpoint: str | None = None, audits: Path | None = None) -> gr.Blocks:
    registry = CheckpointRegistry(checkpoint or os.environ.get("SPML_CHECKPOINT") or default_checkpoint(HERE),
                                  base_dir=HERE)
    inspector = InspectController(registry, ExampleCache(Path(tempfile.gettempdir()) / "spml-examples"))
    workspace = AuditWorkspace(audits or audit_dir())
    audit = AuditController(registry, workspace)
    # Output images are written by the app, each request's to a folder of its own (spml.app.outputs says why).
    files = OutputFiles(Path(tempfile.gettempdir()) / "spml-outputs")
    defaults = inspector.checkpoint_defaults()  # loads the configured checkpoint: a bad one fails at start
    server_paths = os.environ.get("SPML_ALLOW_SERVER_PATHS") == "1"
    model_event = {"concurrency_limit": MODEL_CONCURRENCY, "concurrency_id": "model"}
    private = {"api_visibility": "private"}

    # delete_cache: Gradio's copies of served files older than an hour are removed every half hour.
    with gr.Blocks(title="CALR: single-positive labels, inspected", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(assets.INTRO)
        gr.HTML(assets.method_figure(), elem_id="method-figure")
        session_checkpoint = gr.State(registry.configured)
        audit_id = gr.State(None)
        position = gr.State(0)  # the suspect shown in the review
        # The audit id, kept in the browser so that a reload (or a restart) reopens the review. Outside the
        # tabs: a component in a tab not yet opened is not mounted, and would not read its stored value.
        remembered = gr.BrowserState(None, storage_key="spml-audit", secret=workspace.browser_secret())
        with gr.Row(equal_height=True):
            with gr.Column(scale=1):
                selector = gr.Dropdown(choices=registry.keys(), value=registry.configured, label="Checkpoint",
                                       elem_id="checkpoint")
                with gr.Row():
                    source = gr.Textbox(label="Load a checkpoint", scale=3, elem_id="checkpoint-source",
                                        placeholder="hf://OWNER/NAME[@REVISION]"
                                        + (" or a folder on the server" if server_paths else ""))
                    load = gr.Button("Load", scale=1, elem_id="checkpoint-load")
                load_status = gr.Markdown(elem_id="checkpoint-status")
            description = gr.Markdown(defaults["description"], elem_id="checkpoint-info")

        with gr.Tab("Inspect", elem_id="inspect-tab"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = gr.Image(label="Image (upload, paste or webcam)", type="filepath",
                                     sources=["upload", "clipboard", "webcam"], elem_id="input-image")
                    positive = gr.Dropdown(choices=defaults["classes"], value="", allow_custom_value=True,
                                           label="Positive: the one label an annotator gave",
                                           info="default: the top prediction", elem_id="positive")
                    with gr.Row():
                        threshold = gr.Slider(0.0, 0.99, value=defaults["cam_threshold"], step=0.01,
                                              label="CAM threshold", elem_id="cam-threshold")
                        norm = gr.Radio([(NORM_LABELS[n], n) for n in CAM_NORMS], value=defaults["cam_norm"],
                                        label="CAM normalisation", elem_id="cam-norm")
                    run = gr.Button("Analyse", variant="primary", elem_id="analyse")
                    # The label names what the examples show, left to right (a gallery of thumbnails has no
                    # captions; a table of them would push the results below the fold).
                    examples = gr.Dataset(components=["image"], samples=defaults["examples"], type="index",
                                          label=defaults["examples_label"], elem_id="examples",
                                          visible=bool(defaults["examples"]))
                with gr.Column(scale=1):
                    labels = gr.Label(label="Predicted labels", num_top_classes=10, elem_id="labels")
                    world = gr.Markdown(elem_id="world-notice")
                    summary = gr.Markdown(label="Summary", elem_classes="spml-summary", elem_id="summary")
                    cam_gallery = gr.Gallery(label="CAM of every predicted label: click one to make it the positive",
                                             columns=4, height="auto", allow_preview=False, elem_id="cam-gallery")
                    gallery_classes = gr.State([])
            with gr.Row():
                overlay = gr.Image(label="CAM of the positive", format="jpeg", interactive=False,
                                   height=IMAGE_HEIGHT, elem_classes="spml-fit", elem_id="cam")
                masked = gr.Image(label="Highlighted region: the mask applied", format="jpeg",
                                  interactive=False, height=IMAGE_HEIGHT, elem_classes="spml-fit", elem_id="masked")
                crop = gr.Image(label="Crop of the mask's bounding box", format="jpeg", interactive=False,
                                height=IMAGE_HEIGHT, elem_classes="spml-fit", elem_id="crop")
            table = gr.Dataframe(label="Every other class: the rejection rule's inputs (rejected first)",
                                 interactive=False, wrap=True, elem_id="table")

        with gr.Tab("Audit", elem_id="audit-tab"):
            gr.Markdown("Upload a data set as a zip (images, `classes.txt` and a CSV in the data set format, or a "
                        "COCO, VOC, YOLO or imagefolder layout): "
                        "every class not annotated on an image is scored as a possible missing label, the way "
                        "the rule sees it. Then review the best-ranked suspects and export the corrected CSV.")
            with gr.Row():
                zip_file = gr.File(label="Data set zip", file_types=[".zip"], elem_id="audit-zip")
                with gr.Column():
                    split = gr.Dropdown(["train", "val", "test"], value="train", allow_custom_value=True,
                                        label="Split", elem_id="audit-split")
                    top = gr.Number(500, precision=0, minimum=1, label="Rows in the report", elem_id="audit-top")
                    gallery_size = gr.Slider(0, 48, value=12, step=1, label="Suspects in the gallery")
                    server_path = gr.Textbox("", label="...or a data set folder on the server",
                                             visible=server_paths)
            with gr.Row():
                start = gr.Button("Audit", variant="primary", elem_id="audit-run")
                try_example = gr.Button("No data set at hand? Audit an example world in one click",
                                        elem_id="audit-example")
            gr.Markdown("The example world is drawn on the spot from the synthetic world of coloured shapes, its "
                        "missing labels known. A model of that world audits it: the selected checkpoint when it is "
                        f"one, else `{DEMO_CHECKPOINT}` (with the model of real photos selected, say), and the summary "
                        "says which.", elem_id="audit-example-info")
            audit_summary = gr.Markdown(elem_id="audit-summary")
            audit_curve = gr.LinePlot(x="recall", y="precision", color="ranking", visible=False, height=300,
                                      title="Where the data set knows its missing labels: precision and recall of "
                                            "the audit's ranking and of the class probability",
                                      x_lim=[0, 1], y_lim=[0, 1], elem_id="audit-curve")
            with gr.Group(elem_id="review"):
                question = gr.Markdown("Run an audit to review its suspects.", elem_id="review-question")
                with gr.Row():
                    review_cam = gr.Image(label="CAM of the suspected class: where the model sees it", format="jpeg",
                                          interactive=False, height=IMAGE_HEIGHT, elem_classes="spml-fit",
                                          elem_id="review-cam")
                    review_positive = gr.Image(label="CAM of the annotated positive", format="jpeg",
                                               interactive=False, height=IMAGE_HEIGHT, elem_classes="spml-fit",
                                               elem_id="review-positive")
                    review_masked = gr.Image(label="Masked image", format="jpeg", interactive=False,
                                             height=IMAGE_HEIGHT, elem_classes="spml-fit", elem_id="review-masked")
                    review_crop = gr.Image(label="Crop of the region", format="jpeg", interactive=False,
                                           height=IMAGE_HEIGHT, elem_classes="spml-fit", elem_id="review-crop")
                with gr.Row():
                    previous = gr.Button("← Previous (P)", elem_id="review-prev")
                    confirm = gr.Button("Confirm: label missing (C)", variant="primary", elem_id="review-confirm")
                    dismiss = gr.Button("Dismiss: class absent (D)", variant="stop", elem_id="review-dismiss")
                    undo = gr.Button("Undo decision (U)", elem_id="review-undo")
                    following = gr.Button("Next (N) →", elem_id="review-next")
                status = gr.Markdown(elem_id="review-status")
                with gr.Row():
                    with gr.Column(scale=1):
                        export = gr.Button("Export the corrected CSV", elem_id="review-export")
                        export_message = gr.Markdown(elem_id="review-export-message")
                    exported = gr.File(label="Corrected CSV", visible=False, elem_id="review-file", scale=2)
            gallery = gr.Gallery(label="Top suspects: each suspected class's own CAM", columns=6,
                                 height="auto", elem_id="audit-gallery")
            audit_table = gr.Dataframe(label="Ranked suspects (the report's best rows)", interactive=False,
                                       elem_id="audit-table")
            report = gr.File(label="Report CSV (every row)", elem_id="audit-report")

        # Every component a callback writes, by the name its view gives it.
        page = {"session_checkpoint": session_checkpoint, "description": description, "positive": positive,
                "threshold": threshold, "norm": norm, "examples": examples, "labels": labels, "overlay": overlay,
                "masked": masked, "crop": crop, "table": table, "summary": summary, "world": world,
                "cam_gallery": cam_gallery, "gallery_classes": gallery_classes, "audit_summary": audit_summary,
                "audit_table": audit_table, "gallery": gallery, "report": report, "audit_curve": audit_curve,
                "audit_id": audit_id,
                "position": position, "question": question, "review_cam": review_cam,
                "review_positive": review_positive, "review_masked": review_masked, "review_crop": review_crop,
                "status": status,
                "exported": exported, "export_message": export_message, "selector": selector,
                "load_status": load_status}
        analysis = AnalysisView.wire(page)
        # preprocess=False: the callback reads the uploaded file itself, so a file that is no image, or
        # one too large to decode safely, gets spml's clear message instead of a decoder crash.
        analyse = {"fn": as_outputs(inspector.analyze, files), "inputs": [image, positive, threshold, norm,
                                                                          session_checkpoint],
                   "outputs": analysis, "preprocess": False, **model_event}
        run.click(**analyse, api_name="analyze")
        # A click on a label's CAM makes that label the positive, and analyses again.
        cam_gallery.select(inspector.pick_positive, inputs=gallery_classes, outputs=positive, **private).success(
            **analyse, **private)
        examples.click(as_outputs(inspector.example, files),
                       inputs=[examples, session_checkpoint, positive, threshold, norm],
                       outputs=[image, *analysis], **private, **model_event)
        # A checkpoint loaded through the field is selected, and the selector's change does the rest.
        for trigger in (load.click, source.submit):
            trigger(as_outputs(inspector.load_checkpoint), inputs=source, outputs=LoadView.wire(page), **private,
                    **model_event)
        selector.change(as_outputs(inspector.select_checkpoint), inputs=selector,
                        outputs=CheckpointView.wire(page), **private, **model_event)

        review = ReviewView.wire(page)
        review_open = as_outputs(audit.review_open, files)
        audited = start.click(as_outputs(audit.audit, files),
                              inputs=[zip_file, split, top, gallery_size, server_path, session_checkpoint],
                              outputs=AuditView.wire(page), api_name="audit", **model_event)
        example_audited = try_example.click(as_outputs(audit.example, files), inputs=session_checkpoint,
                                            outputs=AuditView.wire(page), **private, **model_event)
        for finished in (audited, example_audited):  # the browser remembers the audit; its review opens
            finished.success(lambda value: value, inputs=audit_id, outputs=remembered, **private).success(
                review_open, inputs=audit_id, outputs=review, **private, **model_event)
        for button, decision in ((confirm, "confirm"), (dismiss, "dismiss"), (undo, None)):
            button.click(as_outputs(lambda key, at, decision=decision: audit.review_decide(key, at, decision), files),
                         inputs=[audit_id, position], outputs=review, **private, **model_event)
        for button, step in ((previous, -1), (following, 1)):
            button.click(as_outputs(lambda key, at, step=step: audit.review_move(key, at, step), files),
                         inputs=[audit_id, position], outputs=review, **private, **model_event)
        export.click(as_outputs(audit.review_export), inputs=audit_id, outputs=ExportView.wire(page), **private)

        # On every page load: checkpoints added since the start, the review left off, the review's keys.
        demo.load(lambda: gr.Dropdown(choices=registry.keys()), outputs=selector, **private)
        demo.load(as_outputs(audit.restore, files), inputs=remembered, outputs=AuditView.wire(page) + review, **private,
                  **model_event)
        demo.load(None, js=assets.REVIEW_KEYS_JS)

    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=MODEL_CONCURRENCY)
    return demo


if __name__ == "__main__":
    fix_malloc_threshold()  # before any image is decoded: keeps the server's memory level (spml.app.common)
    torch.set_num_threads(TORCH_THREADS)
    build_app().launch(max_file_size=MAX_UPLOAD, css=CSS, allowed_paths=[str(audit_dir())])
