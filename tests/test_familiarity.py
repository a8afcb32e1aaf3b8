"""The image statistics that tell another world (spml.familiarity), and analyze's use of them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SHARED_PHOTOS, make_app_checkpoint, needs_shared_photos
from PIL import Image

from spml import analyze, load_model
from spml.data.generic import load_dataset
from spml.data.synthetic import make_synthetic_dataset, render_scene
from spml.familiarity import (
    COLOUR_BINS,
    GRADIENT_BINS,
    ROUGHNESS_LAG,
    ImageStatistics,
    calibrate_checkpoint,
    features,
    fit_statistics,
    other_worlds,
)


def test_descriptor_of_a_flat_colour_is_one_bin_and_no_gradient():
    pure_red, _ = features(Image.new("RGB", (40, 30), (255, 0, 0)))
    colours = int(np.prod(COLOUR_BINS))
    assert pure_red.shape == (colours + GRADIENT_BINS,)
    # Hue 0, saturation and value 255/256: bin (0, 3, 3), every pixel; no neighbour differs.
    assert pure_red[3 * COLOUR_BINS[2] + 3] == 1.0 and pure_red[:colours].sum() == 1.0
    assert pure_red[colours] == 1.0 and pure_red[colours + 1:].sum() == 0.0


def test_descriptor_matches_the_floating_point_histograms():
    """The integer binning gives the histograms of the channels scaled to [0, 1), computed the plain way."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pixels[0, :8] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 128, 0], [128, 128, 128], [0, 0, 128],
                     [128, 0, 0], [0, 0, 0]]  # value steps of 255, 128 (the closed upper edge) and 127
    picture = Image.fromarray(pixels)  # the thumbnail's own size: the descriptor sees these pixels
    hsv = np.asarray(picture.convert("HSV"), dtype=np.float64) / 256.0
    colours, _ = np.histogramdd(hsv.reshape(-1, 3), bins=COLOUR_BINS, range=[(0, 1)] * 3)
    value = hsv[..., 2]
    steps = np.concatenate([np.abs(np.diff(value, axis=1)).ravel(), np.abs(np.diff(value, axis=0)).ravel()])
    gradients, _ = np.histogram(steps, GRADIENT_BINS, range=(0, 0.5))
    expected = np.sqrt(np.concatenate([colours.ravel() / value.size, gradients / steps.size]))
    descriptor, measures = features(picture)
    np.testing.assert_allclose(descriptor, expected, rtol=0, atol=1e-15)
    assert measures.saturated == (hsv[..., 1] > 0.25).mean()
    assert measures.detail == (steps * 256 > 4).mean()


def test_distance_is_the_mahalanobis_distance_of_the_shrunk_covariance():
    rng = np.random.default_rng(0)
    descriptors = rng.normal(size=(400, 6)) * np.array([3.0, 1.0, 1.0, 0.5, 0.2, 0.2])
    statistics = fit_statistics(descriptors)
    covariance = np.cov(descriptors, rowvar=False)
    floor = 0.1 * np.trace(covariance) / 6
    shrunk = 0.9 * covariance + floor * np.eye(6)  # every direction kept (6 < COMPONENTS)
    points = rng.normal(size=(5, 6))
    centred = points - descriptors.mean(axis=0)
    expected = np.einsum("nd,de,ne->n", centred, np.linalg.inv(shrunk), centred) / 6
    np.testing.assert_allclose(statistics.distance(points), expected, rtol=1e-9)
    assert statistics.distance(descriptors.mean(axis=0))[0] == pytest.approx(0.0, abs=1e-12)
    own = statistics.distance(descriptors)
    assert statistics.threshold == pytest.approx(np.quantile(own, 0.99) * 1.5)
    again = ImageStatistics.from_config(json.loads(json.dumps(statistics.to_config())))
    np.testing.assert_allclose(again.distance(points), expected, rtol=1e-5)


def test_saturated_share_by_hand():
    half = Image.new("RGB", (64, 64), (128, 128, 128))  # the thumbnail's own size: no resampling
    half.paste((255, 0, 0), (0, 0, 32, 64))
    measures = features(half)[1]
    assert measures.saturated == 0.5  # red: saturation 255/256; grey: 0
    # One column of steps (64 of the 2 x 63 x 64 neighbour pairs) from red's value 255 to grey's 128.
    assert measures.detail == 64 / (2 * 63 * 64)
    lag = ROUGHNESS_LAG
    near, far = 127 * 64 / (2 * 63 * 64), 127 * 64 * lag / (64 * (64 - lag) + (64 - lag) * 64)
    assert measures.roughness == pytest.approx((near + 1) / (far + 1))


def test_roughness_tells_noise_from_a_photo_and_detail_a_blank_image():
    rng = np.random.default_rng(0)
    noise = features(Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)))[1]
    y, x = np.mgrid[0:224, 0:224]
    smooth = features(Image.fromarray(((np.sin(x / 9.0) + np.cos(y / 13.0) + 2) * 60).astype(np.uint8)))[1]
    blank = features(Image.new("RGB", (224, 224), (128, 128, 128)))[1]
    assert noise.roughness > 0.8 > 0.5 > smooth.roughness, "noise: each pixel unlike its neighbours"
    assert blank.detail == 0.0 and noise.detail > 0.5


def test_colour_floor_flags_what_the_distance_lets_through():
    rng = np.random.default_rng(0)
    descriptors = rng.normal(size=(100, 6))
    shares = np.linspace(0.02, 0.2, 100)
    measures = np.stack([shares, np.full(100, 0.5), np.full(100, 0.4)], axis=1)
    statistics = fit_statistics(descriptors, measures=measures)
    # The 1% quantile of 100 evenly spaced shares lies 0.99 of a step above the smallest: 0.02 + 0.99 * 0.18 / 99.
    assert statistics.colour_floor == pytest.approx(0.5 * (0.02 + 0.0018))
    centre = descriptors.mean(axis=0)[None]  # distance 0, far under the threshold
    assert statistics.detail_floor == pytest.approx(0.25) and statistics.roughness_ceiling == pytest.approx(0.5)
    assert statistics.familiar(centre, [[0.05, 0.5, 0.4]]).tolist() == [True]
    assert statistics.familiar(centre, [[0.0, 0.5, 0.4]]).tolist() == [False]
    assert statistics.familiar(centre + 100.0, [[0.05, 0.5, 0.4]]).tolist() == [False]
    assert statistics.familiar(centre.repeat(2, axis=0), [[0.05, 0.1, 0.4], [0.05, 0.5, 0.9]]).tolist() == [False] * 2
    again = ImageStatistics.from_config(json.loads(json.dumps(statistics.to_config())))
    assert (again.colour_floor, again.detail_floor, again.roughness_ceiling) == (
        statistics.colour_floor, statistics.detail_floor, statistics.roughness_ceiling)
    # Statistics written before a limit existed do not have it: the test is off for them.
    old = statistics.to_config()
    for key in ("colour_floor", "detail_floor", "roughness_ceiling"):
        del old[key]
    before = ImageStatistics.from_config(old)
    assert before.familiar(centre, [[0.0, 0.0, 255.0]]).tolist() == [True]
    plain = fit_statistics(descriptors)
    assert (plain.colour_floor, plain.detail_floor, plain.roughness_ceiling) == (0.0, 0.0, float("inf"))
    assert json.loads(json.dumps(plain.to_config()))["roughness_ceiling"] is None, "infinity is no JSON number"


def test_calibrated_checkpoint_tells_a_photo_from_its_world(tmp_path):
    data = make_synthetic_dataset(tmp_path / "world", train=60, val=0, test=0, image_size=64, progress=False)
    checkpoint = make_app_checkpoint(tmp_path / "checkpoint")
    model = load_model(checkpoint)
    assert analyze(model, render_scene(0, "test", 0, 64)[0]).in_distribution is None, "no statistics: None"
    calibrate_checkpoint(checkpoint, model, data, "train", progress=False, log=lambda _: None)
    reloaded = load_model(checkpoint)
    assert reloaded.familiarity["images"] == 48 and reloaded.classes == model.classes  # train: 80% of 60
    scene = analyze(reloaded, load_dataset(data).split("train").images[0])
    assert scene.in_distribution is True and scene.familiarity_distance <= scene.familiarity_threshold
    # A photo-like image: smooth colour gradients and no flat shapes on grey clutter.
    y, x = np.mgrid[0:96, 0:128]
    photo = np.stack([x * 2, y * 2, 255 - x - y], axis=-1).clip(0, 255).astype(np.uint8)
    result = analyze(reloaded, photo)
    assert result.in_distribution is False and "far from the training images'" in result.familiarity_reason
    assert scene.familiarity_reason == ""
    # The colour floor alone: with the distance test opened wide, a scene turned grey is still told apart
    # (it has no saturated pixel; every training scene has its coloured shapes), the scene itself is not.
    assert reloaded.familiarity["colour_floor"] > 0
    reloaded.familiarity = {**reloaded.familiarity, "threshold": 1e9}
    grey = analyze(reloaded, render_scene(0, "test", 2, 64)[0].convert("L"))
    assert grey.in_distribution is False and "almost no strong colour" in grey.familiarity_reason
    assert analyze(reloaded, load_dataset(data).split("train").images[0]).in_distribution is True


def test_calibration_takes_several_data_sets_together(tmp_path):
    first = make_synthetic_dataset(tmp_path / "a", train=20, val=0, test=0, image_size=64, progress=False)
    second = make_synthetic_dataset(tmp_path / "b", train=30, val=0, test=0, image_size=64, seed=1, progress=False)
    checkpoint = make_app_checkpoint(tmp_path / "checkpoint")
    statistics = calibrate_checkpoint(checkpoint, load_model(checkpoint), [first, second], "train", progress=False,
                                      log=lambda _: None)
    assert statistics.images == 16 + 24 and statistics.data == f"{first} + {second}"
    assert load_model(checkpoint).familiarity["images"] == 40


def test_blank_images_and_noise_are_another_world_for_a_calibrated_checkpoint(tmp_path):
    data = make_synthetic_dataset(tmp_path / "world", train=60, val=0, test=0, image_size=64, progress=False)
    checkpoint = make_app_checkpoint(tmp_path / "checkpoint")
    calibrate_checkpoint(checkpoint, load_model(checkpoint), data, "train", progress=False, log=lambda _: None)
    model = load_model(checkpoint)
    model.familiarity = {**model.familiarity, "threshold": 1e9}  # the limits alone
    others = other_worlds(64, count=4)
    for image in others["blank images"]:
        result = analyze(model, image)
        assert result.in_distribution is False, result.familiarity_reason
    assert "almost flat" in analyze(model, others["blank images"][5]).familiarity_reason  # red: colour enough
    for image in others["uniform noise"]:
        result = analyze(model, image)
        assert result.in_distribution is False, "grey noise may fail the colour floor first"
    assert "vary like noise" in analyze(model, others["uniform noise"][0]).familiarity_reason  # in colour


def test_several_positives_mask_the_union_of_their_regions(tmp_path):
    model = load_model(make_app_checkpoint(tmp_path / "checkpoint"))
    scene = render_scene(0, "test", 1, 128)[0]
    first, second = analyze(model, scene, "circle"), analyze(model, scene, "star")
    both = analyze(model, scene, ["circle", "star"])
    assert analyze(model, scene, "circle; star").positives == both.positives == ["circle", "star"]
    np.testing.assert_array_equal(both.mask, first.mask | second.mask)
    np.testing.assert_allclose(both.cam, np.maximum(first.cam, second.cam), atol=1e-6)
    assert both.positive == "circle" and both.positive_given
    assert {row["class"] for row in both.table()}.isdisjoint({"circle", "star"})
    assert both.class_maps.shape[0] == len(model.classes)
    with pytest.raises(ValueError, match="Unknown class 'unicorn'"):
        analyze(model, scene, "circle;unicorn")


def test_calibrate_command_on_several_data_sets_counts_false_alarms_and_other_worlds(tmp_path, capsys):
    from spml.__main__ import main

    first = make_synthetic_dataset(tmp_path / "a", train=20, val=0, test=10, image_size=64, progress=False)
    second = make_synthetic_dataset(tmp_path / "b", train=20, val=0, test=10, image_size=64, seed=1, progress=False)
    checkpoint = make_app_checkpoint(tmp_path / "checkpoint")
    assert main(["calibrate", str(checkpoint), "--data", str(first), "--data", str(second), "--check", "test",
                 "--photos", "--others"]) == 0
    printed = capsys.readouterr().out
    assert "image statistics of 32 images of train" in printed
    for name in (f"{first} test: ", f"{second} test: ", "photos: ", "synthetic scenes: ", "uniform noise: ",
                 "blank images: 10 of 10 taken for another world"):
        assert name in printed, name
    assert load_model(checkpoint).familiarity["data"] == f"{first} + {second}"


CALIBRATE_PHOTOS = ("python -m spml calibrate checkpoints/photos --data data/photos --data data/photos/photos "
                    "--check val --photos --others")


@needs_shared_photos
def test_the_photos_model_spares_real_photos_and_flags_noise_and_blank_images(photos_checkpoint):
    """The photos model's statistics, on every 20th photo of ../shared/photos (single photos, as people upload
    them) and on images of no world of photos."""
    from spml.familiarity import statistics_of

    statistics = statistics_of(load_model(photos_checkpoint))
    assert statistics is not None, f"{photos_checkpoint} holds no image statistics: {CALIBRATE_PHOTOS}"
    photos = sorted(SHARED_PHOTOS.rglob("*.jpg"))[::20]
    flagged = [path.name for path in photos if not statistics.in_distribution(Image.open(path))[0]]
    assert len(flagged) <= 0.005 * len(photos), (f"{len(flagged)} of {len(photos)} real photos taken for another "
                                                f"world ({flagged[:5]}): calibrate on single photos too: "
                                                f"{CALIBRATE_PHOTOS}")
    others = other_worlds(224, count=10)
    for kind in ("uniform noise", "blank images"):
        assert not any(statistics.in_distribution(image)[0] for image in others[kind]), kind
