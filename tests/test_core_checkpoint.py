"""Checkpoints (local, Hub cache, refusal of pickles) and ``analyze`` on a tiny saved model."""

import json
import pickle
import shutil
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import spml
from spml import analyze, load_model, save_checkpoint
from spml.checkpoint import CheckpointError, LoadedModel, resolve_checkpoint
from spml.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from spml.model import create_model
from spml.rejection import RunningThresholds

CLASSES = ["cat", "dog", "traffic light"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _model(classes=CLASSES, thresholds=None, seed=0, **settings) -> LoadedModel:
    torch.manual_seed(seed)
    network = create_model("compact", len(classes), width=8)
    with torch.no_grad():
        network.head.bias.normal_()
        # Calibrated BatchNorm statistics (what training leaves): activations keep their scale in eval
        # mode, so masking an image moves the logits visibly, and the buffers are worth a round trip.
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # cumulative average
        network.train()(torch.randn(8, 3, 32, 32))
    return LoadedModel(network=network.eval(), classes=list(classes), image_size=32, mean=IMAGENET_MEAN,
                       std=IMAGENET_STD, thresholds=thresholds, training={"loss": "calr", "val_map": 12.5},
                       **settings)


def _fed_thresholds(num_classes=3) -> RunningThresholds:
    thresholds = RunningThresholds(num_classes, momentum=0.9, bias_correction=True)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        observed = torch.zeros(4, num_classes, dtype=torch.long)
        observed[:, 0] = 1
        thresholds.update(torch.randn(4, num_classes, generator=generator),
                          torch.randn(4, num_classes, generator=generator), observed)
    return thresholds


def _state(num_classes: int, gap: float, averages) -> dict:
    return {"num_classes": num_classes, "momentum": 0.999, "bias_correction": False, "raw_gap": gap,
            "raw_class_average": list(averages), "gap_steps": 1, "average_steps": 1}


# ----------------------------------------------------------------------------- local round trip


def test_save_load_round_trip(tmp_path):
    original = _model(thresholds=_fed_thresholds(), cam_norm="calr", cam_threshold=0.6)
    directory = save_checkpoint(original, tmp_path / "ckpt")
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]  # no .tmp left
    loaded = load_model(directory)
    assert not loaded.network.training
    assert loaded.classes == CLASSES
    assert loaded.image_size == 32
    assert tuple(loaded.mean) == IMAGENET_MEAN and tuple(loaded.std) == IMAGENET_STD
    assert loaded.cam_norm == "calr" and loaded.cam_threshold == 0.6
    assert loaded.thresholds.state_dict() == original.thresholds.state_dict()
    assert loaded.training["loss"] == "calr" and loaded.training["val_map"] == 12.5
    assert loaded.training["code_version"] == spml.__version__
    for name, value in original.network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[name], value), name
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.network(images).logits, original.network(images).logits)
    # saving again over the same directory replaces it cleanly
    save_checkpoint(loaded, directory)
    assert load_model(str(directory)).classes == CLASSES


def test_checkpoint_without_thresholds(tmp_path):
    save_checkpoint(_model(), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["rejection"] is None
    assert load_model(tmp_path).thresholds is None


def test_class_names_must_match_the_head(tmp_path):
    with pytest.raises(CheckpointError, match="2 class names"):
        save_checkpoint(LoadedModel(network=create_model("compact", 3, width=8), classes=["a", "b"], image_size=32,
                                    mean=IMAGENET_MEAN, std=IMAGENET_STD), tmp_path)


# ----------------------------------------------------------------------------- Hugging Face Hub cache


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """A hand-built Hub cache holding owner/name at COMMIT (ref main and tag v1), and no network at all."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub"
    repo = cache / "models--owner--name"
    snapshot = repo / "snapshots" / COMMIT
    save_checkpoint(_model(thresholds=_fed_thresholds()), snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "refs" / "v1").write_text(COMMIT)
    # huggingface_hub reads its environment at import time: point the already-imported constants here.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))

    def no_network(*args, **kwargs):
        raise AssertionError("the test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return snapshot


@pytest.mark.parametrize("source", ["hf://owner/name", f"hf://owner/name@{COMMIT}", "hf://owner/name@main",
                                    "hf://owner/name@v1"])
def test_hub_checkpoint_loads_offline_from_the_cache(offline_hub, source):
    assert resolve_checkpoint(source).resolve() == offline_hub.resolve()
    loaded = load_model(source)
    assert loaded.classes == CLASSES and loaded.source == source
    reference = load_model(offline_hub)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.network(images).logits, reference.network(images).logits)


@pytest.mark.parametrize("source", ["hf://owner/missing", "hf://owner/name@v2",
                                    "hf://owner/name@fedcba9876543210fedcba9876543210fedcba98"])
def test_hub_checkpoint_not_in_the_cache_is_a_clear_error(offline_hub, source):
    with pytest.raises(CheckpointError, match="could not fetch") as info:
        load_model(source)
    assert not isinstance(info.value.__cause__, AssertionError)  # refused by the cache, not by the socket guard


@pytest.mark.parametrize("source", ["hf://owner", "hf://owner/name/extra", "hf://"])
def test_malformed_hub_address(source):
    with pytest.raises(CheckpointError, match="hf://OWNER/NAME"):
        load_model(source)


# ----------------------------------------------------------------------------- refusals


class _Payload:
    """Unpickling this creates ``path``: proof that a file was (or was not) unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_the_pickle_payload_works(tmp_path):
    # Guards the guard: unpickling the payload does create its marker.
    marker = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Payload(marker))).close()
    assert marker.exists()


def test_pickled_file_path_is_refused_unread(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match="never loaded"):
        load_model(path)
    assert not marker.exists()


def test_pickle_named_model_safetensors_is_refused_unread(tmp_path):
    marker = tmp_path / "unpickled"
    directory = save_checkpoint(_model(), tmp_path / "ckpt")
    (directory / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_model(directory)
    assert not marker.exists()


def test_directory_with_only_pytorch_model_bin_is_refused_unread(tmp_path):
    marker = tmp_path / "unpickled"
    directory = save_checkpoint(_model(), tmp_path / "ckpt")
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match="pytorch_model.bin present but never unpickled"):
        load_model(directory)
    assert not marker.exists()


def test_config_of_another_format_is_refused(tmp_path):
    directory = save_checkpoint(_model(), tmp_path / "ckpt")
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({"model_type": "resnet", "architectures": ["ResNetForImageClassification"]}))
    with pytest.raises(CheckpointError, match="not an spml checkpoint config"):
        load_model(directory)
    config_path.write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_model(directory)
    config_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(directory)
    config_path.unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(directory)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    directory = save_checkpoint(_model(), tmp_path / "ckpt")
    other = save_checkpoint(_model(classes=["a", "b", "c", "d"]), tmp_path / "other")
    shutil.copy(other / "model.safetensors", directory / "model.safetensors")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(directory)


def test_missing_directory_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- analyze

HEIGHT, WIDTH = 40, 56  # not square, not the model's 32 x 32


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.RandomState(0)
    return rng.randint(0, 256, size=(HEIGHT, WIDTH, 3)).astype(np.uint8)


def _saved(tmp_path, thresholds=None, **settings) -> LoadedModel:
    return load_model(save_checkpoint(_model(thresholds=thresholds, **settings), tmp_path / "ckpt"))


def _expected_cam(model: LoadedModel, image: np.ndarray, class_index: int) -> np.ndarray:
    """The positive's CAM, min-max normalised per image and resized to the image, written out in torch."""
    inputs = eval_transform(32, IMAGENET_MEAN, IMAGENET_STD)(Image.fromarray(image))[None]
    with torch.no_grad():
        network = model.network
        features = network.backbone(inputs)[0]
        cam = torch.einsum("dhw,d->hw", features, network.head.weight[class_index]) + network.head.bias[class_index]
        cam = (cam - cam.min()) / (cam.max() - cam.min())
        return F.interpolate(cam[None, None], size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)[0, 0].numpy()


def test_analyze_maps_at_the_images_own_size(tmp_path, image):
    model = _saved(tmp_path, cam_threshold=0.5)
    result = analyze(model, image, positive="dog")
    assert result.positive == "dog" and result.positive_given
    assert result.image.shape == (HEIGHT, WIDTH, 3)
    assert result.cam.shape == (HEIGHT, WIDTH) and result.cam.dtype == np.float32
    assert np.allclose(result.cam, _expected_cam(model, image, 1), atol=1e-5)
    assert float(result.cam.min()) == 0.0 and float(result.cam.max()) == pytest.approx(1.0)  # 2x2 map: corners kept
    assert result.mask.shape == (HEIGHT, WIDTH) and result.mask.dtype == bool
    assert np.array_equal(result.mask, result.cam > 0.5)
    ys, xs = np.nonzero(result.mask)
    assert result.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    left, top, right, bottom = result.box
    assert np.array_equal(result.crop, image[top:bottom, left:right])
    assert result.masked_image.shape == (HEIGHT, WIDTH, 3)
    assert np.array_equal(result.masked_image[result.mask], image[result.mask])
    assert (result.masked_image[~result.mask] == [124, 116, 104]).all()
    assert result.overlay.shape == (HEIGHT, WIDTH, 3) and result.overlay.dtype == np.uint8
    for name in CLASSES:
        assert result.gaps[name] == pytest.approx(abs(result.logits[name] - result.masked_logits[name]), abs=1e-6)
        assert result.probabilities[name] == pytest.approx(1 / (1 + np.exp(-result.logits[name])), rel=1e-5)
    assert [row["class"] for row in result.table()] == sorted(
        ["cat", "traffic light"], key=lambda name: -result.probabilities[name])


def test_analyze_positive_given_or_top_prediction(tmp_path, image):
    model = _saved(tmp_path)
    top = analyze(model, image)
    assert not top.positive_given
    assert top.positive == max(CLASSES, key=lambda name: top.probabilities[name])
    assert analyze(model, image, positive="").positive == top.positive
    other = next(name for name in CLASSES if name != top.positive)
    given = analyze(model, image, positive=other)
    assert given.positive == other and given.positive_given
    assert np.allclose(given.cam, _expected_cam(model, image, CLASSES.index(other)), atol=1e-5)
    assert given.probabilities == pytest.approx(top.probabilities)  # the same forward pass
    assert analyze(model, image, positive="traffic light").positive == "traffic light"  # names with spaces


def test_analyze_with_several_positives_masks_their_union(tmp_path, image):
    model = _saved(tmp_path, cam_threshold=0.5)
    both = analyze(model, image, positive="dog;traffic light")
    assert both.positive == "dog" and both.positives == ["dog", "traffic light"] and both.positive_given
    assert analyze(model, image, positive=["dog", "traffic light"]).positives == both.positives
    maps = [_expected_cam(model, image, CLASSES.index(name)) for name in ("dog", "traffic light")]
    assert np.allclose(both.cam, np.maximum(*maps), atol=1e-5)
    assert np.array_equal(both.mask, both.cam > 0.5)
    one = analyze(model, image, positive="dog")
    assert (both.mask | one.mask).sum() == both.mask.sum() and both.mask.sum() >= one.mask.sum()
    assert [row["class"] for row in both.table()] == ["cat"]  # every annotated positive is left out
    assert one.positives == ["dog"]
    # The masked pass used the union: a larger region than the one positive's, so other masked logits.
    assert both.mask.sum() > one.mask.sum()
    assert both.masked_logits != pytest.approx(one.masked_logits)


def test_analyze_accepts_a_path_and_a_pil_image(tmp_path, image):
    model = _saved(tmp_path)
    path = tmp_path / "picture.png"
    Image.fromarray(image).save(path)
    from_array = analyze(model, image, positive="cat")
    for source in (path, str(path), Image.fromarray(image)):
        result = analyze(model, source, positive="cat")
        assert np.array_equal(result.image, image)
        assert np.allclose(result.cam, from_array.cam)


def test_analyze_unknown_class_names_it(tmp_path, image):
    model = _saved(tmp_path)
    with pytest.raises(ValueError, match="'zebra'"):
        analyze(model, image, positive="zebra")
    with pytest.raises(ValueError, match="normalisation"):
        analyze(model, image, cam_norm="global")
    with pytest.raises(ValueError, match="threshold"):
        analyze(model, image, cam_threshold=1.5)


def test_analyze_without_thresholds_rejects_nothing(tmp_path, image):
    result = analyze(_saved(tmp_path), image, positive="cat")
    assert result.rejected == []
    assert result.gap_threshold is None and result.class_average is None


def test_analyze_with_thresholds_every_class_passes(tmp_path, image):
    thresholds = RunningThresholds(3).load_state_dict(_state(3, 0.0, [-1e9] * 3))
    result = analyze(_saved(tmp_path, thresholds), image, positive="cat")
    others = ["dog", "traffic light"]
    assert all(result.gaps[name] > 0 for name in others)  # the masked image does change the logits
    assert result.rejected == sorted(others, key=lambda name: -result.probabilities[name])
    assert result.gap_threshold == 0.0
    assert [row["class"] for row in result.table() if row["rejected"]] == result.rejected


def test_analyze_with_thresholds_nothing_passes(tmp_path, image):
    thresholds = RunningThresholds(3).load_state_dict(_state(3, 1e9, [-1e9] * 3))
    assert analyze(_saved(tmp_path, thresholds), image, positive="cat").rejected == []


def test_analyze_rejected_follows_the_rule(tmp_path, image):
    classes = ["a", "b", "c", "d", "e"]
    probe = analyze(load_model(save_checkpoint(_model(classes=classes), tmp_path / "probe")), image, positive="a")
    gaps = sorted(probe.gaps[name] for name in classes[1:])
    gap_threshold = gaps[1]  # two of the four other classes have a larger gap
    # A_c just below the logit for b and d, just above for c and e
    averages = [probe.logits[name] + (-0.01 if name in ("b", "d") else 0.01) for name in classes]
    thresholds = RunningThresholds(5).load_state_dict(_state(5, gap_threshold, averages))
    model = load_model(save_checkpoint(_model(classes=classes, thresholds=thresholds), tmp_path / "ckpt"))
    result = analyze(model, image, positive="a")
    expected = [name for name in classes[1:]
                if result.gaps[name] > gap_threshold and result.logits[name] > averages[classes.index(name)]]
    assert 0 < len(expected) < 4  # the case separates classes (with seed 0: b passes both tests, d and e one)
    assert result.rejected == sorted(expected, key=lambda name: -result.probabilities[name])
    assert result.gap_threshold == pytest.approx(gap_threshold)
    assert result.class_average == pytest.approx(dict(zip(classes, averages, strict=True)), abs=1e-6)


def test_resize_round_trips_and_old_or_unknown_values_read_as_they_should(tmp_path):
    saved = save_checkpoint(_model(resize="letterbox"), tmp_path / "letterbox")
    assert json.loads((saved / "config.json").read_text())["input"]["resize"] == "letterbox"
    assert load_model(saved).resize == "letterbox"
    assert load_model(save_checkpoint(_model(), tmp_path / "plain")).resize == "stretch"
    config_path = saved / "config.json"
    config = json.loads(config_path.read_text())
    for old, expected in (("bilinear, whole image to image_size x image_size", "stretch"), (None, "stretch")):
        config["input"]["resize"] = old  # what checkpoints wrote before letterboxing existed, or nothing
        if old is None:
            del config["input"]["resize"]
        config_path.write_text(json.dumps(config))
        assert load_model(saved).resize == expected
    config["input"]["resize"] = "crop"
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown input resize 'crop'"):
        load_model(saved)
    with pytest.raises(CheckpointError, match="unknown input resize 'crop'"):
        save_checkpoint(_model(resize="crop"), tmp_path / "crop")


def test_analyze_a_letterboxed_checkpoint_maps_back_to_the_image(tmp_path):
    """A 32 x 16 image fits a 32 px letterbox input at scale 1, in rows 8..23 on grey. Its analysis by a
    letterbox checkpoint is that of the grey canvas by a stretch checkpoint of the same weights, the maps
    cut to rows 8..23: the same input, so the same logits, and the CAM where the image lies."""
    wide = np.random.RandomState(1).randint(0, 256, size=(16, 32, 3)).astype(np.uint8)
    canvas = np.full((32, 32, 3), 128, dtype=np.uint8)
    canvas[8:24] = wide
    letterbox = load_model(save_checkpoint(_model(resize="letterbox"), tmp_path / "letterbox"))
    stretch = load_model(save_checkpoint(_model(), tmp_path / "stretch"))
    boxed, whole = analyze(letterbox, wide, positive="dog"), analyze(stretch, canvas, positive="dog")
    assert boxed.logits == whole.logits and boxed.masked_logits == whole.masked_logits
    assert boxed.input_window == (0.0, 0.25, 1.0, 0.75) and whole.input_window == (0.0, 0.0, 1.0, 1.0)
    assert boxed.cam.shape == boxed.mask.shape == (16, 32) and boxed.overlay.shape == (16, 32, 3)
    assert np.allclose(boxed.cam, whole.cam[8:24], atol=1e-5)
    assert np.array_equal(boxed.mask, boxed.cam > letterbox.cam_threshold)
    assert np.array_equal(boxed.crop, wide[boxed.box[1]:boxed.box[3], boxed.box[0]:boxed.box[2]])
