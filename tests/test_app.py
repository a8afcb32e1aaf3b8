"""The app: its callbacks as plain functions, then the launched app through gradio_client."""

from __future__ import annotations

import base64
import copy
import json
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from conftest import PHOTO_CLASSES, app_key, served_app
from PIL import Image

from spml import analyze
from spml.app import audit as app_audit
from spml.app import common
from spml.app import inspect as app_inspect
from spml.app import registry as app_registry
from spml.app.outputs import OutputFiles
from spml.app.workspace import AuditWorkspace
from spml.audit import suspect_evidence
from spml.checkpoint import load_model
from spml.data.sample_photos import load_photo
from spml.data.synthetic import SYNTHETIC_CLASSES
from spml.inference import fold_batchnorm, optimize_for_inference
from spml.model import create_model

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")  # pandas deprecations inside gradio
ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "checkpoints" / "demo"
needs_demo = pytest.mark.skipif(not (DEMO / "config.json").is_file(), reason="checkpoints/demo not trained yet")


@pytest.fixture(scope="module")
def controller(app_checkpoint, tmp_path_factory) -> app_inspect.InspectController:
    registry = app_registry.CheckpointRegistry(str(app_checkpoint), base_dir=ROOT, device="cpu")
    examples = app_inspect.ExampleCache(tmp_path_factory.mktemp("examples"), count=3)
    return app_inspect.InspectController(registry, examples)


# ------------------------------------------------------------------------------------ inference


def _randomise_batchnorm(network: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(size, generator=generator) - 0.5)


# EfficientNet-Lite0 keeps the 5 BatchNorms behind its strided depthwise convolutions (timm's Conv2dSame,
# which pads in its forward); the other 44 fold, their ReLU6 kept.
@pytest.mark.parametrize("arch, size, unfolded", [("compact", 64, 0), ("resnet18", 64, 0),
                                                  ("efficientnet_lite0", 64, 5)])
def test_optimize_for_inference_keeps_logits_and_maps(arch, size, unfolded):
    network = create_model(arch, 5).eval()
    _randomise_batchnorm(network)
    optimized = optimize_for_inference(copy.deepcopy(network))
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in optimized.modules()) == unfolded
    images = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        plain, fast = network(images), optimized(images)
        classes = torch.tensor([1, 3])
        maps, fast_maps = network.class_maps(plain, classes), optimized.class_maps(fast, classes)
    torch.testing.assert_close(fast.logits, plain.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast_maps, maps, rtol=1e-4, atol=1e-3)


def test_fold_leaves_a_shared_convolution_alone():
    class Branches(torch.nn.Module):  # the conv output feeds a BatchNorm AND something else: not foldable
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    module = Branches().eval()
    assert fold_batchnorm(module) == 0 and isinstance(module.bn, torch.nn.BatchNorm2d)


def test_fold_leaves_reused_modules_and_untraceable_ones_alone():
    class Reused(torch.nn.Module):  # one BatchNorm after two convolutions: folding it into either is wrong
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(3, 4, 1)
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.a(x)) + self.bn(self.b(x))

    class Branching(torch.nn.Module):  # data-dependent control flow: symbolic tracing fails
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    assert fold_batchnorm(Reused().eval()) == 0 and fold_batchnorm(Branching().eval()) == 0


# ------------------------------------------------------------------------------------ callbacks


def test_analyze_callback_outputs_at_the_image_size(controller, app_inputs):
    view = controller.analyze(str(app_inputs["scene"].path))
    labels, overlay, masked, crop, table, summary, world, gallery, gallery_classes = view.outputs()
    assert view.names()[:6] == ("labels", "overlay", "masked", "crop", "table", "summary")
    assert world == "", "a checkpoint without image statistics never says 'another world'"
    assert gallery_classes == [name for name in labels if labels[name] >= 0.5][:8] or [next(iter(labels))]
    assert [caption.split()[0] for _, caption in gallery] == gallery_classes
    assert all(image.shape == (128, 128, 3) for image, _ in gallery)
    assert list(labels) == sorted(labels, key=lambda name: -labels[name]) and set(labels) == set(SYNTHETIC_CLASSES)
    assert overlay.shape == masked.shape == (128, 128, 3)
    assert crop is not None and crop.shape[0] <= 128 and crop.shape[2] == 3
    top = next(iter(labels))
    assert f"`{top}` (the top prediction" in summary
    rows = table["data"]
    assert table["headers"] == app_inspect.TABLE_HEADERS and len(rows) == len(SYNTHETIC_CLASSES) - 1
    assert top not in [row[0] for row in rows]
    flags = [row[-1] for row in rows]
    assert flags == sorted(flags, key=lambda flag: flag != "yes"), "rejected rows come first"
    assert "yes" in flags, "the fixture's low thresholds reject something"


def test_given_positive_controls_and_payload_forms(controller, app_inputs):
    path = app_inputs["scene"].path
    payload = {"path": str(path), "orig_name": "mine.png", "meta": {"_type": "gradio.FileData"}}
    summary = controller.analyze(payload, "star", 0.9, "calr").summary
    assert "`star` (as given" in summary and "CALR code (batch-wise) normalisation, threshold 0.90" in summary
    data_url = {"path": None, "url": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()}
    assert controller.analyze(data_url).overlay.shape == (128, 128, 3)


@pytest.mark.parametrize("kind", ["scene", "grayscale", "rgba", "16-bit", "cmyk", "exif-rotated", "animated",
                                  "huge-wide", "bomb", "truncated", "not-an-image"])
def test_every_input_kind_gives_a_result_or_a_clear_message(controller, app_inputs, kind):
    case = app_inputs[kind]
    payload = {"path": str(case.path), "orig_name": case.path.name}
    if case.error:
        with pytest.raises(gr.Error) as caught:
            controller.analyze(payload)
        assert case.error in caught.value.message and case.path.name in caught.value.message
        assert str(case.path.parent) not in caught.value.message, "no server path in messages"
    else:
        view = controller.analyze(payload)
        assert view.overlay.shape[:2] == view.masked.shape[:2] == case.size
        assert case.note is None or case.note in view.summary
    # whatever came before, the next request works
    assert controller.analyze(str(app_inputs["scene"].path)).overlay.shape == (128, 128, 3)


@pytest.mark.parametrize("arguments, message", [
    ((None,), "Upload, paste or capture an image first"),
    (("SCENE", "unicorn"), "Unknown class 'unicorn'"),
    (("SCENE", "", 1.5), "CAM threshold must be in [0, 1)"),
    (("SCENE", "", 0.5, "batch"), "Unknown CAM normalisation"),
])
def test_bad_controls_are_refused_clearly(controller, app_inputs, arguments, message):
    arguments = tuple(str(app_inputs["scene"].path) if a == "SCENE" else a for a in arguments)
    with pytest.raises(gr.Error) as caught:
        controller.analyze(*arguments)
    assert message in caught.value.message


def test_examples_are_rendered_and_analysed_lazily(controller):
    defaults = controller.checkpoint_defaults()
    assert len(defaults["examples"]) == 3 and all(Path(p).is_file() for [p] in defaults["examples"])
    assert "own world" in defaults["examples_label"]
    path, first = controller.example(1, None)
    assert path == defaults["examples"][1][0] and "true labels" in first.summary
    _, again = controller.example(1, None)
    assert again is first, "the second click is served from the cache"
    with pytest.raises(gr.Error):
        controller.example(7, None)


def test_examples_of_a_model_of_real_things_are_photographs_read_from_scikit_image(photo_classes_checkpoint,
                                                                                     tmp_path):
    registry = app_registry.CheckpointRegistry(str(photo_classes_checkpoint), base_dir=ROOT, device="cpu")
    photos = app_inspect.InspectController(registry, app_inspect.ExampleCache(tmp_path / "examples"))
    defaults = photos.checkpoint_defaults()
    assert defaults["examples_label"] == ("Example photographs shipped with scikit-image, left to right: a cat "
                                          "(chelsea); a face, the astronaut Eileen Collins (astronaut); a motorbike "
                                          "(stereo_motorcycle, left view)")
    assert [Path(path).name for [path] in defaults["examples"]] == ["chelsea.png", "astronaut.png",
                                                                    "motorcycle_left.png"]
    assert all(Path(path).is_relative_to(tmp_path / "examples") for [path] in defaults["examples"]), \
        "written at run time where the app serves from, never into the repository"
    path, view = photos.example(0, None)
    assert Image.open(path).size == (451, 300) and "Example photograph: a cat (chelsea); it shows a `cat`" \
        in view.summary
    assert set(view.labels) == set(PHOTO_CLASSES)


def test_default_checkpoint_is_the_photos_model_with_the_demo_in_the_selector(app_checkpoint, tmp_path):
    def embed(name: str) -> None:
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        for file in ("config.json", "model.safetensors"):
            (tmp_path / "checkpoints" / name / file).write_bytes((app_checkpoint / file).read_bytes())

    embed("demo")
    assert app_registry.default_checkpoint(tmp_path) == "checkpoints/demo", "a checkout without the photos model"
    embed("photos")
    default = app_registry.default_checkpoint(tmp_path)
    assert default == app_registry.DEFAULT_CHECKPOINT == "checkpoints/photos"
    registry = app_registry.CheckpointRegistry(default, base_dir=tmp_path, device="cpu")
    assert registry.keys() == ["checkpoints/photos", "checkpoints/demo"], "both embedded models in the selector"


def test_the_notice_on_the_demo_points_to_the_photos_model(calibrated_checkpoint):
    model = load_model(calibrated_checkpoint)
    result = analyze(model, np.full((64, 64, 3), 128, dtype=np.uint8))
    assert result.in_distribution is False
    notice = app_inspect.world_notice(result, model)
    assert "pick `checkpoints/photos`" in notice and "hf://OWNER/NAME" in notice
    other = replace(model, classes=list(PHOTO_CLASSES))
    assert "images of another kind" in app_inspect.world_notice(result, other)


def test_checkpoint_registry_lists_and_guards(app_checkpoint, tmp_path):
    search = tmp_path / "checkpoints"
    (search / "run" / "best").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (search / "run" / "best" / name).write_bytes((app_checkpoint / name).read_bytes())
    (search / "other").mkdir()
    (search / "other" / "config.json").write_text("{}")  # not a checkpoint: not offered
    registry = app_registry.CheckpointRegistry(str(app_checkpoint), base_dir=tmp_path, device="cpu")
    assert registry.keys() == [str(app_checkpoint), "checkpoints/run/best"]
    model = registry.get("checkpoints/run/best")
    assert registry.get("checkpoints/run/best") is model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.network.modules()), "optimised on load"
    with pytest.raises(gr.Error, match="unknown checkpoint"):
        registry.get("/etc")


def test_checkpoint_field_loads_from_the_hub_cache_and_refuses_clearly(controller, offline_hub_checkpoint,
                                                                      app_checkpoint, tmp_path, monkeypatch):
    def load(source):
        return controller.load_checkpoint(source, progress=lambda *args, **kwargs: None)

    view = load(offline_hub_checkpoint)
    assert view.selector.value == offline_hub_checkpoint
    assert (offline_hub_checkpoint, offline_hub_checkpoint) in view.selector.choices
    card = controller.select_checkpoint(offline_hub_checkpoint).description
    assert "https://huggingface.co/owner/shapes" in card and "circle, square" in card
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "model.pt").write_bytes(b"not read")
    alien = tmp_path / "alien"
    alien.mkdir()
    config = json.loads((app_checkpoint / "config.json").read_text())
    (alien / "config.json").write_text(json.dumps({**config, "architecture": {"arch": "vit-huge", "num_classes": 10}}))
    (alien / "model.safetensors").write_bytes((app_checkpoint / "model.safetensors").read_bytes())
    cases = [
        ("", "Type hf://OWNER/NAME"),
        ("hf://owner", "not of the form hf://OWNER/NAME"),
        ("hf://owner/missing", "not in this server's Hub cache"),
        (str(app_checkpoint), "Loading a folder on the server is off"),
        ("ALLOW", None),
        (str(pickled), "has no config.json"),
        (str(pickled), "model.pt there is never unpickled"),
        (str(alien), "unknown architecture 'vit-huge'"),
        (str(tmp_path / "nowhere"), "does not exist"),
    ]
    for source, message in cases:
        if source == "ALLOW":
            monkeypatch.setenv("SPML_ALLOW_SERVER_PATHS", "1")
            continue
        with pytest.raises(gr.Error) as caught:
            load(source)
        assert message in caught.value.message, caught.value.message
    assert load(str(app_checkpoint)).selector.value == str(app_checkpoint.resolve())


def test_gpu_decorator_uses_spaces_when_present(monkeypatch):
    def work(x):
        return x + 1

    assert common.gpu(work) is work, "without the spaces package nothing changes"
    lent = []
    fake = types.SimpleNamespace(GPU=lambda fn, duration: lent.append(duration) or (lambda *a: fn(*a) * 10))
    monkeypatch.setitem(sys.modules, "spaces", fake)
    assert common.gpu(work)(1) == 20 and common.gpu(duration=120)(work)(2) == 30 and lent == [60, 120]


def test_unreachable_hub_checkpoint_is_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    registry = app_registry.CheckpointRegistry("hf://nobody/no-such-model@main", base_dir=tmp_path, device="cpu")
    controller = app_inspect.InspectController(registry, app_inspect.ExampleCache(tmp_path))
    with pytest.raises(gr.Error, match="could not fetch hf://nobody/no-such-model@main"):
        controller.checkpoint_defaults()


def test_select_checkpoint_and_description(controller, app_checkpoint):
    view = controller.select_checkpoint(str(app_checkpoint))
    assert view.session_checkpoint == str(app_checkpoint)
    assert "test mAP **42.5**" in view.description and "`synthetic`" in view.description
    assert "compact" in view.description
    assert view.positive.choices[0] == ("top prediction", "") and len(view.positive.choices) == 11
    assert view.threshold.value == 0.5 and view.norm.value == "image" and view.examples.visible


@needs_demo
def test_demo_checkpoint_page_text_and_examples(tmp_path):
    model = load_model(DEMO)
    text = app_registry.describe_checkpoint("checkpoints/demo", model)
    assert "mAP **" in text and "synthetic" in text
    registry = app_registry.CheckpointRegistry("checkpoints/demo", base_dir=ROOT, device="cpu")
    demo = app_inspect.InspectController(registry, app_inspect.ExampleCache(tmp_path, count=4))
    hits = 0
    for index in range(4):
        _, view = demo.example(index, None)
        truth = view.summary.split("true labels: ")[1].split(".")[0].split(", ")
        hits += next(iter(view.labels)) in truth
    assert hits >= 3, "the demo's top prediction is a true label on most of its own scenes"


# ---------------------------------------------------------------------------------- launched app


@pytest.fixture(scope="module")
def served(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def test_api_exposes_analyze_with_defaults(served):
    parameters = served.view_api(print_info=False, return_format="dict")["named_endpoints"]["/analyze"]["parameters"]
    assert [p["parameter_name"] for p in parameters] == ["image", "positive", "cam_threshold", "cam_norm"]
    assert [p["parameter_has_default"] for p in parameters] == [False, True, True, True]


def test_api_analyze_on_every_input_kind(served, app_inputs):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    for kind, case in app_inputs.items():
        if case.error:
            with pytest.raises(AppError, match=case.error):
                served.predict(handle_file(str(case.path)), api_name="/analyze")
            continue
        labels, overlay, masked, crop, table, summary, world, gallery = served.predict(
            handle_file(str(case.path)), api_name="/analyze")
        assert world == "" and len(gallery) >= 1
        assert len(labels["confidences"]) == len(SYNTHETIC_CLASSES), kind
        assert np.asarray(Image.open(overlay)).shape[:2] == case.size, kind
        assert Path(masked).is_file() and len(table["data"]) == len(SYNTHETIC_CLASSES) - 1, kind
        assert case.note is None or case.note in summary, kind
    with pytest.raises(AppError, match="Unknown class 'unicorn'"):
        served.predict(handle_file(str(app_inputs["scene"].path)), "unicorn", api_name="/analyze")
    result = served.predict(handle_file(str(app_inputs["scene"].path)), "ring", api_name="/analyze")
    assert "`ring` (as given" in result[5], "the app still serves after every refusal"


def test_api_serves_concurrent_users(served, app_inputs):
    from gradio_client import handle_file

    paths = [app_inputs[kind].path for kind in ("scene", "grayscale", "rgba", "cmyk", "scene", "animated")]
    jobs = [served.submit(handle_file(str(path)), api_name="/analyze") for path in paths]
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: job.result(timeout=120), jobs))
    assert all(len(result) == 8 and result[0]["label"] in SYNTHETIC_CLASSES for result in results)


def test_api_concurrent_identical_requests_get_complete_files(app_url, app_inputs, tmp_path):
    """Many visitors on the same photo at once: each answer's images arrive whole and identical. Gradio
    alone would write identical results to one cache path and rewrite it while serving it (short downloads)."""
    from gradio_client import Client, handle_file

    photo = tmp_path / "photo.png"  # large outputs: a long window in which a rewrite would cut a download
    Image.open(app_inputs["scene"].path).resize((1600, 1600), Image.Resampling.BILINEAR).save(photo)
    clients = [Client(app_url, verbose=False) for _ in range(6)]
    jobs = [clients[index % 6].submit(handle_file(str(photo)), api_name="/analyze") for index in range(24)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: job.result(timeout=300), jobs))
    first = None
    for _, overlay, masked, crop, *_ in results:
        pixels = []
        for path in (overlay, masked, crop):
            with Image.open(path) as image:
                image.load()  # a file cut short raises here
                pixels.append(np.asarray(image))
        first = first or pixels
        assert all(np.array_equal(a, b) for a, b in zip(pixels, first, strict=True))
    assert first[0].shape == (1600, 1600, 3)


@pytest.fixture(scope="module")
def photos_url(photos_checkpoint, tmp_path_factory):
    """The app launched on the model of real photos, as it opens by default."""
    with served_app(app_key(photos_checkpoint), tmp_path_factory.mktemp("photos-audits")) as url:
        yield url


def test_api_analyze_a_photo_of_a_cat_on_the_photos_model(photos_url, photos_checkpoint, tmp_path):
    """scikit-image's chelsea through /analyze: the photos model's top label is `cat`, with its CAM, mask and
    crop at the photo's size, and the photo is not taken for another world."""
    from gradio_client import Client, handle_file

    photo = tmp_path / "chelsea.png"
    load_photo("chelsea").save(photo)
    labels, overlay, masked, crop, table, summary, world, gallery = Client(photos_url, verbose=False).predict(
        handle_file(str(photo)), api_name="/analyze")
    assert labels["label"] == "cat", labels["confidences"][:3]
    assert "`cat` (the top prediction" in summary and gallery[0]["caption"].startswith("cat ")
    assert np.asarray(Image.open(overlay)).shape[:2] == np.asarray(Image.open(masked)).shape[:2] == (300, 451)
    assert Path(crop).is_file() and len(table["data"]) == len(load_model(photos_checkpoint).classes) - 1
    assert world == "", "a real photo under the model of real photos: no other-world notice"


def test_output_files_are_unique_and_pruned(tmp_path):
    files = OutputFiles(tmp_path, max_age=0.0, prune_every=0.0)
    image = np.full((4, 6, 3), 200, dtype=np.uint8)
    view = app_inspect.AnalysisView(labels={"a": 1.0}, overlay=image, masked=image, crop=None, table={},
                                    summary="s", world="", cam_gallery=[], gallery_classes=[]).written(files)
    again = app_inspect.AnalysisView(labels={}, overlay=image, masked=image, crop=None, table={}, summary="s",
                                     world="", cam_gallery=[(image, "a 1.00")], gallery_classes=["a"]).written(files)
    assert Path(view.overlay).parent != Path(again.overlay).parent, "a folder per request"
    assert np.asarray(Image.open(again.overlay)).shape == (4, 6, 3) and again.crop is None
    assert Path(again.cam_gallery[0][0]).parent == Path(again.overlay).parent
    assert not Path(view.overlay).exists(), "folders older than max_age are removed"
    gallery = app_audit.AuditView("s", {}, [(image, "first"), (image, "second")], "r", None, "x").written(files)
    assert [caption for _, caption in gallery.gallery] == ["first", "second"]
    assert all(Path(path).is_file() for path, _ in gallery.gallery)


# ------------------------------------------------------------------------------------------ audit


@pytest.fixture(scope="module")
def auditor(app_checkpoint, tmp_path_factory) -> app_audit.AuditController:
    registry = app_registry.CheckpointRegistry(str(app_checkpoint), base_dir=ROOT, device="cpu")
    return app_audit.AuditController(registry, AuditWorkspace(tmp_path_factory.mktemp("audits")))


def test_audit_callback_ranks_shows_evidence_and_finds_the_audit_again(auditor, audit_zips):
    view = auditor.audit(str(audit_zips["good"]), gallery_size=3)
    summary, table, gallery, report, curve, audit_id = view.outputs()
    assert "images of `train`" in summary and "Hidden labels known" in summary and curve.visible
    assert table["headers"][:3] == ["rank", "image", "class"] and table["data"][0][0] == 1
    scores = [row[3] for row in table["data"]]
    assert scores == sorted(scores, reverse=True)
    assert len(gallery) == 3 and gallery[0][0].ndim == 3 and gallery[0][1].startswith("#1 ")
    assert Path(report).read_text().startswith("rank,image,class,score")
    again = auditor.audit({"path": str(audit_zips["good"]), "orig_name": "shapes.zip"}, gallery_size=0)
    assert again.audit_id == audit_id and again.gallery == [], "the same upload reopens the finished audit"


def test_review_decisions_persist_undo_and_export(auditor, audit_zips):
    audit_id = auditor.audit(str(audit_zips["good"]), gallery_size=0).audit_id
    position, question, overlay, positive, masked, crop, status = auditor.review_open(audit_id).outputs()
    run = auditor.workspace.open(audit_id)
    evidence = suspect_evidence(auditor.registry.get(), run.dataset, run.rows(1)[0])
    assert np.array_equal(overlay, evidence["suspect_overlay"]), "the suspected class's own CAM comes first"
    assert np.array_equal(positive, evidence["positive_overlay"])
    assert position == 0 and "Suspect 1 of" in question and "undecided" in question and overlay.ndim == 3
    first = auditor.workspace.open(audit_id).rows(2)
    shown = auditor.review_decide(audit_id, position, "confirm")
    assert shown.position == 1 and "Decided 1" in shown.status and "1 confirmed" in shown.status
    shown = auditor.review_decide(audit_id, shown.position, "dismiss")
    assert shown.position == 2 and "1 dismissed" in shown.status
    # A restart: new controller and workspace objects, same folder. The review resumes where it was.
    restarted = app_audit.AuditController(auditor.registry, AuditWorkspace(auditor.workspace.directory))
    restored_audit, restored_review = restarted.restore(audit_id)
    assert restored_audit.audit_id == audit_id and restored_review.position == 2
    assert "Decided 2" in restored_review.status
    shown = restarted.review_move(audit_id, 2, -1)
    assert shown.position == 1 and "dismissed" in shown.question
    assert "Decided 1 " in restarted.review_decide(audit_id, shown.position, None).status
    exported, message = restarted.review_export(audit_id).outputs()
    assert "1 labels added and 0 classes" in message and exported.visible
    rows = {line.split(",")[0]: line for line in Path(exported.value["path"]).read_text().splitlines()[1:]}
    assert first[0]["class"] in rows[first[0]["image"]]
    nothing = (gr.skip(),) * 13  # the audit view and the review view, each component left as it is
    assert restarted.restore("f" * 24) == nothing and restarted.restore("../etc") == nothing


def test_example_audit_counts_the_missing_labels_its_first_suspects_found(auditor):
    view = auditor.example()
    run = auditor.workspace.open(view.audit_id)
    hidden = run.summary["evaluation"]["hidden_positives"]
    found = sum(row["truth"] == "1" for row in run.rows(hidden))
    assert hidden > 0 and f"**The first {hidden} suspects found {found} of them**" in view.audit_summary
    assert run.summary["images"] == 64 and len(view.gallery) == 12
    assert auditor.example().audit_id == view.audit_id, "the example world is drawn and audited once"
    assert "Suspect 1 of" in auditor.review_open(view.audit_id).question


@needs_demo
def test_example_audit_with_a_model_of_real_things_is_the_demos_and_says_so(photo_classes_checkpoint, tmp_path):
    registry = app_registry.CheckpointRegistry(str(photo_classes_checkpoint), base_dir=ROOT, device="cpu")
    auditor = app_audit.AuditController(registry, AuditWorkspace(tmp_path / "audits"))
    view = auditor.example()
    assert view.audit_summary.startswith(f"**Audited with `checkpoints/demo`**, not the selected "
                                         f"`{photo_classes_checkpoint}`")
    run = auditor.workspace.open(view.audit_id)
    assert run.meta["checkpoint"] == "checkpoints/demo" and run.summary["images"] == 64
    assert "suspects found" in view.audit_summary
    assert "Suspect 1 of" in auditor.review_open(view.audit_id).question, "the review reads the demo's evidence"


def test_example_audit_without_a_model_of_the_synthetic_world_says_what_to_do(photo_classes_checkpoint, tmp_path):
    registry = app_registry.CheckpointRegistry(str(photo_classes_checkpoint), base_dir=tmp_path, device="cpu")
    auditor = app_audit.AuditController(registry, AuditWorkspace(tmp_path / "audits"))
    with pytest.raises(gr.Error, match="Upload a zip of your own data set"):
        auditor.example()


def test_audit_reads_a_coco_zip_and_reviews_it(auditor, coco_zip):
    view = auditor.audit(str(coco_zip), gallery_size=2)
    assert "images of `train`" in view.audit_summary and len(view.gallery) == 2
    run = auditor.workspace.open(view.audit_id)
    rows = (run.dataset / "train.csv").read_text().splitlines()[1:]
    assert len(rows) == 12 and rows[0].startswith("shapes/train/"), "every image of the COCO file, where it lies"
    assert run.summary["images"] == 10, "the train part of the protocol's 80/20 split (no val.csv)"
    shown = auditor.review_open(view.audit_id)
    assert "Suspect 1 of" in shown.question and shown.review_cam.ndim == 3


def test_audit_refuses_bad_uploads_clearly(auditor, audit_zips, monkeypatch):
    cases = [
        ((str(audit_zips["evil"]),), "leaves the extraction folder"),
        ((str(audit_zips["broken"]),), "not a readable zip"),
        ((None,), "Upload a zip"),
        ((None, "train", 10, 0, "/etc"), "reading folders on the server is off"),
        ((str(audit_zips["good"]), "holdout"), "no split 'holdout'"),
    ]
    for arguments, message in cases:
        with pytest.raises(gr.Error) as caught:
            auditor.audit(*arguments)
        assert message in caught.value.message and "/tmp" not in caught.value.message, caught.value.message
    monkeypatch.setenv("SPML_ALLOW_SERVER_PATHS", "1")
    with pytest.raises(gr.Error, match="not a data set folder"):
        auditor.audit(None, "train", 10, 0, "/etc")
    with pytest.raises(gr.Error, match="No finished audit"):
        auditor.review_open("0" * 24)


def test_api_audit_endpoint(served, audit_zips):
    from gradio_client import handle_file

    parameters = served.view_api(print_info=False, return_format="dict")["named_endpoints"]["/audit"]["parameters"]
    assert parameters[0]["parameter_name"] == "zip_file" and not parameters[0]["parameter_has_default"]
    assert all(p["parameter_has_default"] for p in parameters[1:])
    summary, table, gallery, report, curve = served.predict(handle_file(str(audit_zips["good"])), api_name="/audit")
    assert "images of `train`" in summary and table["data"][0][0] == 1 and len(gallery) == 12
    # The data set knows its missing labels: the precision-recall curves of both rankings, each to recall 1.
    assert curve["visible"] and curve["value"]["columns"] == ["recall", "precision", "ranking"]
    series = {name: [row for row in curve["value"]["data"] if row[2] == name] for name in ("audit", "probability")}
    assert all(0 < len(rows) <= 100 and rows[-1][0] == 1.0 for rows in series.values())
    assert len(curve["value"]["data"]) == sum(len(rows) for rows in series.values())
    assert Path(report).read_text().startswith("rank,image,class,score")


def test_audit_curve_is_hidden_without_hidden_labels():
    from spml.app.audit import audit_curve

    assert audit_curve({"evaluation": None}).visible is False
    shown = audit_curve({"evaluation": {"rankings": {
        "audit": {"curve": {"recall": [0.5, 1.0], "precision": [1.0, 0.5]}},
        "probability": {"curve": {"recall": [0.0, 1.0], "precision": [0.0, 0.5]}}}}})
    assert shown.visible is True
