"""Shared fixtures. App: a small checkpoint made on the spot, so the app tests never need a trained one."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import sys
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spml.checkpoint import LoadedModel, save_checkpoint
from spml.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_dataset, render_scene
from spml.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from spml.model import create_model
from spml.rejection import RunningThresholds
from spml.runtime import free_local_port

ROOT = Path(__file__).resolve().parents[1]
# The real photos (one folder a class) beside the checkout: read at run time, never committed. CI has them.
SHARED_PHOTOS = ROOT.parent / "shared" / "photos" / "train"
needs_shared_photos = pytest.mark.skipif(not SHARED_PHOTOS.is_dir(),
                                         reason=f"the real photos are not at {SHARED_PHOTOS} on this machine")
# Real multi-label photos (COCO, every object a box) beside the checkout: read at run time. CI has them.
SHARED_COCO = ROOT.parent / "shared" / "coco"
needs_shared_coco = pytest.mark.skipif(not (SHARED_COCO / "instances.json").is_file(),
                                       reason=f"the COCO photos are not at {SHARED_COCO} on this machine")
COCO_CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 7, "name": "dining table"},
                   {"id": 90, "name": "toothbrush"}]  # COCO's own ids, with its gaps


def make_coco_set(root: Path, photos: int = 20) -> dict:
    """A COCO-format set in ``root`` (instances.json, images/*.jpg): ``photos`` real JPEGs, photo k holding
    person (always) and, in turn, car (k even), dining table (k % 3 == 0) and toothbrush (k % 5 == 0), each
    as a box; returns the instances."""
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for k in range(photos):
        name = f"{1000 + k:012d}.jpg"
        Image.new("RGB", (32, 24), (10 * k, 40, 90)).save(root / "images" / name, format="JPEG")
        images.append({"id": 1000 + k, "file_name": name, "width": 32, "height": 24})
        for category in [1, *[c for c, every in ((3, 2), (7, 3), (90, 5)) if k % every == 0]]:
            annotations.append({"id": len(annotations) + 1, "image_id": 1000 + k, "category_id": category,
                                "bbox": [k % 4, 1.5, 10, 8.25], "area": 82.5, "iscrowd": 0})
    data = {"images": images, "annotations": annotations, "categories": COCO_CATEGORIES}
    (root / "instances.json").write_text(json.dumps(data))
    return data


# The app's default: the model of real photos, trained by `train fit --config train/configs/photos_calr.yaml`.
PHOTOS_CHECKPOINT = ROOT / "checkpoints" / "photos"
# COCO's 80 classes, trained by `train fit --config train/configs/coco_calr.yaml --data data/coco`.
COCO_CHECKPOINT = ROOT / "checkpoints" / "coco"
# A few classes of real things: a checkpoint whose world is not the synthetic one (the photos model's kind).
PHOTO_CLASSES = ["airplane", "bird", "car", "cat", "chair", "church", "dog", "face", "motorbike", "tulip"]
# The app's tests import gradio; a machine without it (the stock GPU machine of scripts/gpu_check.sh)
# runs everything else.
collect_ignore = [] if importlib.util.find_spec("gradio") else ["test_app.py", "test_app_browser.py",
                                                            "test_app_photos_browser.py", "test_app_coco_browser.py"]
# Nor has it tensorboard (train fit's events) or matplotlib (the benchmarks' pictures).
collect_ignore += [] if importlib.util.find_spec("tensorboard") else ["test_board.py"]
collect_ignore += [] if importlib.util.find_spec("matplotlib") else ["test_plots.py"]


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU here"))])
def any_device(request) -> torch.device:
    """Core tests run on the CPU and, where there is one, on CUDA (scripts/gpu_check.sh runs them there)."""
    return torch.device(request.param)


def make_spread_model(image_size: int = 128, gap_threshold: float = 0.2, class_average: float = -5.0,
                      training: dict | None = None) -> LoadedModel:
    """An untrained compact network with the synthetic world's classes, amplified so that its logits and
    gaps spread, and thresholds low enough that the rule rejects something."""
    classes = list(SYNTHETIC_CLASSES)
    torch.manual_seed(0)
    network = create_model("compact", len(classes), width=8).eval()
    with torch.no_grad():  # untrained activations fade layer by layer: amplify so that logits and gaps spread
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.8)
        network.head.weight.mul_(30.0)
    thresholds = RunningThresholds(len(classes))
    thresholds.load_state_dict({**thresholds.state_dict(), "raw_gap": gap_threshold,
                                "raw_class_average": [class_average] * len(classes)})
    return LoadedModel(network=network, classes=classes, image_size=image_size, mean=IMAGENET_MEAN,
                       std=IMAGENET_STD, cam_norm="image", cam_threshold=0.5, thresholds=thresholds,
                       training=training or {}, source="spread")


def make_app_checkpoint(directory: Path) -> Path:
    """The spread model written as a real checkpoint, with a training summary for the page to show."""
    training = {"dataset": "data/synthetic", "loss": "calr", "test_map": 42.5, "best_val_map": 43.0, "epochs": 1}
    return save_checkpoint(make_spread_model(training=training), directory)


@pytest.fixture(scope="session")
def app_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_app_checkpoint(tmp_path_factory.mktemp("app-checkpoint") / "fixture")


@pytest.fixture(scope="session")
def photo_classes_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The spread model under the names of real classes: the app's behaviour for a model of another world
    than the synthetic one (examples, the example audit), without a trained model."""
    training = {"dataset": "data/photos", "loss": "calr", "epochs": 1}
    model = replace(make_spread_model(training=training), classes=list(PHOTO_CLASSES))
    return save_checkpoint(model, tmp_path_factory.mktemp("photo-classes") / "fixture")


@pytest.fixture(scope="session")
def coco_checkpoint() -> Path:
    """checkpoints/coco (committed; a test that needs it fails loudly if it is missing)."""
    assert (COCO_CHECKPOINT / "config.json").is_file(), f"{COCO_CHECKPOINT} is missing"
    return COCO_CHECKPOINT


@pytest.fixture(scope="session")
def shared_coco_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small COCO-format upload cut from ../shared/coco at test time (never committed): the first 16
    photos with two or more classes, their boxes and COCO's categories, zipped as someone would upload it."""
    if not (SHARED_COCO / "instances.json").is_file():
        pytest.skip(f"the COCO photos are not at {SHARED_COCO} on this machine")
    data = json.loads((SHARED_COCO / "instances.json").read_text())
    classes_of: dict[int, set[int]] = {}
    for annotation in data["annotations"]:
        classes_of.setdefault(annotation["image_id"], set()).add(annotation["category_id"])
    images = [image for image in sorted(data["images"], key=lambda i: i["id"])
              if len(classes_of.get(image["id"], ())) >= 2][:16]
    chosen = {image["id"] for image in images}
    subset = {"images": images, "categories": data["categories"],
              "annotations": [a for a in data["annotations"] if a["image_id"] in chosen]}
    archive_path = tmp_path_factory.mktemp("coco-upload") / "street-coco.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.writestr("street/annotations/instances_train.json", json.dumps(subset))
        for image in images:
            archive.write(SHARED_COCO / "images" / image["file_name"], f"street/train/{image['file_name']}")
    return archive_path


@pytest.fixture(scope="session")
def photos_checkpoint() -> Path:
    """checkpoints/photos (committed; a test that needs it fails loudly if it is missing)."""
    assert (PHOTOS_CHECKPOINT / "config.json").is_file(), f"{PHOTOS_CHECKPOINT} is missing"
    return PHOTOS_CHECKPOINT


def app_key(checkpoint: Path) -> str:
    """A checkpoint as the app names its own: relative to the repository when it lies in it."""
    return str(checkpoint.relative_to(ROOT)) if checkpoint.is_relative_to(ROOT) else str(checkpoint)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height but carries (almost) no pixel data: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@dataclass(frozen=True)
class AppInput:
    """A file of one awkward kind and what the app must do with it."""

    path: Path
    error: str | None = None  # a piece of the message shown, for inputs that must be refused
    note: str | None = None  # a piece of the summary, for inputs that are converted
    size: tuple[int, int] | None = None  # (height, width) analysed


@pytest.fixture(scope="session")
def app_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, AppInput]:
    """Real files of every kind the app must survive: accepted ones (converted) and refused ones."""
    folder = tmp_path_factory.mktemp("app-inputs")
    scene, _, _ = render_scene(0, "test", 1, 128)
    scene.save(folder / "scene.png")
    Image.new("L", (90, 60), 120).save(folder / "gray.png")
    Image.new("RGBA", (64, 48), (200, 30, 30, 90)).save(folder / "rgba.png")
    Image.fromarray(np.linspace(0, 65535, 80 * 50, dtype=np.uint16).reshape(50, 80)).save(folder / "deep.png")
    Image.new("CMYK", (70, 40), (0, 200, 200, 0)).save(folder / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape 60x40, displayed portrait 40x60
    scene.resize((60, 40)).save(folder / "rotated.jpg", exif=exif)
    frames = [Image.new("RGB", (50, 50), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    scene.resize((6000, 300)).save(folder / "wide.jpg", quality=80)
    _png_header_only(folder / "bomb.png", 100_000, 100_000)
    scene.save(folder / "full.jpg", quality=90)
    (folder / "truncated.jpg").write_bytes((folder / "full.jpg").read_bytes()[:1500])
    (folder / "text.png").write_text("this is not an image\n")
    return {
        "scene": AppInput(folder / "scene.png", size=(128, 128)),
        "grayscale": AppInput(folder / "gray.png", note="Grayscale", size=(60, 90)),
        "rgba": AppInput(folder / "rgba.png", note="Transparent areas", size=(48, 64)),
        "16-bit": AppInput(folder / "deep.png", note="16-bit", size=(50, 80)),
        "cmyk": AppInput(folder / "cmyk.jpg", note="CMYK", size=(40, 70)),
        "exif-rotated": AppInput(folder / "rotated.jpg", note="EXIF orientation (6)", size=(60, 40)),
        "animated": AppInput(folder / "animated.gif", note="Animated GIF of 3 frames", size=(50, 50)),
        "huge-wide": AppInput(folder / "wide.jpg", note="Downscaled from 6000×300", size=(205, 4096)),
        "bomb": AppInput(folder / "bomb.png", error="decompression bomb"),
        "truncated": AppInput(folder / "truncated.jpg", error="truncated"),
        "not-an-image": AppInput(folder / "text.png", error="not an image"),
    }


def load_app_module():
    """app.py by path: it is a script at the repository root, not part of the package."""
    if "spml_app" not in sys.modules:
        spec = importlib.util.spec_from_file_location("spml_app", ROOT / "app.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["spml_app"] = module
    return sys.modules["spml_app"]


@pytest.fixture(scope="module")
def app_audits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The audit folder of one test module's app: audits and decisions start from nothing."""
    return tmp_path_factory.mktemp("audits")


@contextmanager
def served_app(checkpoint: str, audits: Path) -> Iterator[str]:
    """The app of app.py on ``checkpoint``, launched on a free local port; yields its URL, closes after."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    port = free_local_port()
    app = load_app_module()
    demo = app.build_app(checkpoint, audits=audits)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=app.CSS)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def app_url(app_checkpoint: Path, app_audits: Path) -> Iterator[str]:
    """The app on the fixture checkpoint, for one test module."""
    with served_app(str(app_checkpoint), app_audits) as url:
        yield url


@pytest.fixture(scope="session")
def audit_zips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small synthetic data set zipped as a user would upload it, and two zips that must be refused."""
    folder = tmp_path_factory.mktemp("audit-zips")
    root = make_synthetic_dataset(folder / "shapes", train=12, val=0, test=0, image_size=64, progress=False)
    good = folder / "shapes.zip"
    with zipfile.ZipFile(good, "w") as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, Path("shapes") / path.relative_to(root))
    evil = folder / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../outside.csv", "image,labels\n")
    broken = folder / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 this is not really a zip")
    return {"good": good, "evil": evil, "broken": broken}


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread: the tests' tensors are tiny, and on a shared 2-core machine torch's spinning
    worker threads made a millisecond step take seconds."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="session")
def calibrated_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The app's fixture checkpoint with the image statistics of a small synthetic world (64 px scenes)."""
    from spml.checkpoint import load_model
    from spml.familiarity import calibrate_checkpoint

    folder = tmp_path_factory.mktemp("calibrated")
    data = make_synthetic_dataset(folder / "world", train=100, val=0, test=0, image_size=64, progress=False)
    checkpoint = make_app_checkpoint(folder / "checkpoint")
    calibrate_checkpoint(checkpoint, load_model(checkpoint), data, "train", progress=False, log=lambda _: None)
    return checkpoint


@pytest.fixture
def offline_hub_checkpoint(calibrated_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The calibrated fixture checkpoint in a hand-built Hub cache as owner/shapes (ref main), the Hub
    offline; returns its key."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--owner--shapes" / "snapshots" / HUB_COMMIT
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((calibrated_checkpoint / name).read_bytes())
    (cache / "models--owner--shapes" / "refs").mkdir()
    (cache / "models--owner--shapes" / "refs" / "main").write_text(HUB_COMMIT)
    # huggingface_hub reads its environment at import time: point the already-imported constants here.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return "hf://owner/shapes"


@pytest.fixture(scope="session")
def coco_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic world laid out as COCO (annotations/instances_train.json, train/*.png), zipped as
    someone would upload it: the importers turn it into the data set format."""
    import csv

    folder = tmp_path_factory.mktemp("coco-zip")
    root = make_synthetic_dataset(folder / "world", train=12, val=0, test=0, image_size=64, progress=False)
    with (root / "train.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    images, annotations = [], []
    for index, row in enumerate(rows):
        images.append({"id": index + 1, "file_name": Path(row["image"]).name, "width": 64, "height": 64})
        for name in row["labels"].split(";"):
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                                "category_id": SYNTHETIC_CLASSES.index(name) + 1, "bbox": [0, 0, 8, 8]})
    categories = [{"id": index + 1, "name": name} for index, name in enumerate(SYNTHETIC_CLASSES)]
    archive_path = folder / "shapes-coco.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.writestr("shapes/annotations/instances_train.json",
                         json.dumps({"images": images, "annotations": annotations, "categories": categories}))
        for row in rows:
            archive.write(root / row["image"], f"shapes/train/{Path(row['image']).name}")
    return archive_path
