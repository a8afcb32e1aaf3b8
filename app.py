"""The Gradio app: layout and wiring only (the callbacks are in spml.ui, the model logic in spml.inspect).

``python app.py`` serves on 127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT as usual) with the
embedded checkpoint, or the one named by SPML_CHECKPOINT (a directory or hf://OWNER/NAME[@REVISION]).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import gradio as gr

from spml import ui
from spml.cam import CAM_NORMS

HERE = Path(__file__).resolve().parent
# Requests running the model at once; more wait in the queue. Two fit a 2-core CPU Space.
MODEL_CONCURRENCY = int(os.environ.get("SPML_CONCURRENCY", "2"))
QUEUE_SIZE = int(os.environ.get("SPML_QUEUE_SIZE", "64"))
MAX_UPLOAD = os.environ.get("SPML_MAX_UPLOAD", "50mb")
CSS = ".spml-summary p { margin: 0.2em 0; }"


def build_app(checkpoint: str | None = None) -> gr.Blocks:
    registry = ui.CheckpointRegistry(checkpoint or os.environ.get("SPML_CHECKPOINT") or ui.DEFAULT_CHECKPOINT,
                                  base_dir=HERE)
    controller = ui.Controller(registry, ui.ExampleCache(Path(tempfile.gettempdir()) / "spml-examples"))
    defaults = controller.checkpoint_defaults()  # loads the configured checkpoint: a bad one fails at start
    model_event = {"concurrency_limit": MODEL_CONCURRENCY, "concurrency_id": "model"}

    with gr.Blocks(title="CALR: single-positive labels, inspected") as demo:
        gr.Markdown(ui.INTRO)
        gr.HTML(ui.method_figure(), elem_id="method-figure")
        session_checkpoint = gr.State(registry.configured)
        with gr.Row(equal_height=True):
            selector = gr.Dropdown(choices=registry.keys(), value=registry.configured, label="Checkpoint",
                                   scale=1, elem_id="checkpoint")
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
                        norm = gr.Radio([(ui.NORM_LABELS[n], n) for n in CAM_NORMS], value=defaults["cam_norm"],
                                        label="CAM normalisation", elem_id="cam-norm")
                    run = gr.Button("Analyse", variant="primary", elem_id="analyse")
                    examples = gr.Dataset(components=["image"], samples=defaults["examples"],
                                          type="index",
                                          label="Examples from the checkpoint's own world", elem_id="examples",
                                          visible=bool(defaults["examples"]))
                with gr.Column(scale=1):
                    labels = gr.Label(label="Predicted labels", num_top_classes=10, elem_id="labels")
                    summary = gr.Markdown(label="Summary", elem_classes="spml-summary", elem_id="summary")
            with gr.Row():
                overlay = gr.Image(label="CAM of the positive", format="jpeg", interactive=False,
                                   elem_id="cam")
                masked = gr.Image(label="Highlighted region: the mask applied", format="jpeg",
                                  interactive=False, elem_id="masked")
                crop = gr.Image(label="Crop of the mask's bounding box", format="jpeg", interactive=False,
                                elem_id="crop")
            table = gr.Dataframe(label="Every other class: the rejection rule's inputs (rejected first)",
                                 interactive=False, wrap=True, elem_id="table")

        analysis = [labels, overlay, masked, crop, table, summary]
        # preprocess=False: the callback reads the uploaded file itself, so a file that is no image, or
        # one too large to decode safely, gets spml's clear message instead of a decoder crash.
        run.click(controller.analyze, inputs=[image, positive, threshold, norm, session_checkpoint],
                  outputs=analysis, api_name="analyze", preprocess=False, **model_event)
        examples.click(controller.example, inputs=[examples, session_checkpoint, positive, threshold, norm],
                       outputs=[image, *analysis], api_visibility="private", **model_event)
        selector.change(controller.select_checkpoint, inputs=selector,
                        outputs=[session_checkpoint, description, positive, threshold, norm, examples],
                        api_visibility="private", **model_event)
        # Checkpoints added under checkpoints/ since the start show up on the next page load.
        demo.load(lambda: gr.Dropdown(choices=registry.keys()), outputs=selector, api_visibility="private")

    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=MODEL_CONCURRENCY)
    return demo


if __name__ == "__main__":
    build_app().launch(max_file_size=MAX_UPLOAD, css=CSS)
