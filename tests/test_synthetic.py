"""The synthetic world: deterministic, multi-object, labels that match what is drawn."""

import colorsys
import csv

import numpy as np
import pytest
from PIL import Image

from spml.data import SYNTHETIC_CLASSES, load_dataset, make_synthetic_dataset, render_scene
from spml.data.synthetic import _CLASS_TABLE, HUE_JITTER


def test_classes():
    assert len(SYNTHETIC_CLASSES) >= 8 and len(set(SYNTHETIC_CLASSES)) == len(SYNTHETIC_CLASSES)
    hues = sorted(hue for hue, _ in _CLASS_TABLE.values())
    gaps = np.diff(hues + [hues[0] + 360])
    assert gaps.min() > 4 * HUE_JITTER  # the hue bands do not touch
    assert len({shape for _, shape in _CLASS_TABLE.values()}) == len(SYNTHETIC_CLASSES)


def test_determinism():
    a, labels_a, objects_a = render_scene(3, "train", 17)
    b, labels_b, objects_b = render_scene(3, "train", 17)
    assert a.tobytes() == b.tobytes() and labels_a == labels_b and objects_a == objects_b
    assert render_scene(3, "train", 18)[0].tobytes() != a.tobytes()
    assert render_scene(3, "val", 17)[0].tobytes() != a.tobytes()
    assert render_scene(4, "train", 17)[0].tobytes() != a.tobytes()
    assert render_scene(3, "train", 17, image_size=64)[0].size == (64, 64)


def test_objects_per_image_and_labels():
    counts = []
    for index in range(150):
        image, labels, objects = render_scene(0, "train", index)
        assert image.size == (128, 128) and image.mode == "RGB"
        assert len(labels) >= 1
        names = [name for name, _ in objects]
        assert len(set(names)) == len(names)  # one object per class at most
        assert labels == [c for c in SYNTHETIC_CLASSES if c in names]  # class order
        counts.append(len(objects))
    assert np.mean(counts) >= 2.0 and max(counts) >= 3


def _hue_degrees(pixels):
    return np.array([colorsys.rgb_to_hsv(*(p / 255.0)) for p in pixels.reshape(-1, 3)])


def test_boxes_hold_their_object():
    for index in range(30):
        image, _, objects = render_scene(1, "test", index)
        pixels = np.asarray(image).astype(np.float64)
        for name, (x0, y0, x1, y1) in objects:
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            hsv = _hue_degrees(pixels[y0:y1, x0:x1])
            centre = _CLASS_TABLE[name][0]
            distance = np.abs((hsv[:, 0] * 360 - centre + 180) % 360 - 180)
            own = (distance <= HUE_JITTER + 8) & (hsv[:, 1] > 0.5)
            # The object covers a good part of its box (thin shapes like the bar and ring less so).
            assert own.mean() > 0.2, (index, name)


def test_make_dataset_and_load(tmp_path):
    out = make_synthetic_dataset(
        tmp_path / "a", seed=5, train=12, val=4, test=3, image_size=32, progress=False
    )
    again = make_synthetic_dataset(
        tmp_path / "b", seed=5, train=12, val=4, test=3, image_size=32, progress=False
    )
    for name in ("classes.txt", "train.csv", "val.csv", "test.csv", "images/train/000011.png"):
        assert (out / name).read_bytes() == (again / name).read_bytes()
    assert (out / "train.csv").read_text().splitlines()[0] == "image,labels,positive"
    ds = load_dataset(out)
    assert ds.classes == SYNTHETIC_CLASSES
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [12, 4, 3]
    train = ds.split("train")
    assert (train.observed.sum(1) == 1).all() and train.has_hidden_labels
    image, labels, _ = render_scene(5, "val", 2, image_size=32)
    val = ds.split("val")
    assert [c for c, v in zip(SYNTHETIC_CLASSES, val.labels[2], strict=True) if v] == labels
    with Image.open(val.images[2]) as stored:
        assert np.asarray(image).tobytes() == np.asarray(stored).tobytes()


def _without_positive_column(root, target):
    """A copy of the data set's CSVs with the positive column removed (images referenced, not copied)."""
    target.mkdir()
    (target / "classes.txt").write_text((root / "classes.txt").read_text())
    (target / "images").symlink_to(root / "images")
    for name in ("train.csv", "val.csv", "test.csv"):
        if (root / name).exists():
            with (root / name).open(newline="") as handle:
                records = [record[:2] for record in csv.reader(handle)]
            with (target / name).open("w", newline="") as handle:
                csv.writer(handle).writerows(records)
    return target


@pytest.mark.parametrize("val", [4, 0])
def test_positive_column_holds_what_the_loader_drew_before(tmp_path, val):
    """The synthetic world writes its single positives; they are the protocol's draw over each file, which
    is what the reader drew when the files had no positive column, so recipes and results do not change."""
    out = make_synthetic_dataset(tmp_path / "a", seed=7, train=15, val=val, test=3, image_size=16, progress=False)
    written = load_dataset(out)
    drawn = load_dataset(_without_positive_column(out, tmp_path / "b"), single_positive=True)
    for name in written.splits:
        np.testing.assert_array_equal(written.split(name).observed, drawn.split(name).observed)
        np.testing.assert_array_equal(written.split(name).labels, drawn.split(name).labels)
        assert (written.split(name).observed.sum(1) == 1).all()
    assert not (out / "left_out.csv").exists()


def test_partial_world(tmp_path):
    out = make_synthetic_dataset(tmp_path / "p", seed=2, train=40, val=5, test=4, image_size=16, progress=False,
                                 partial=0.5)
    again = make_synthetic_dataset(tmp_path / "q", seed=2, train=40, val=5, test=4, image_size=16, progress=False,
                                   partial=0.5)
    assert (out / "train.csv").read_bytes() == (again / "train.csv").read_bytes()
    assert (out / "left_out.csv").read_bytes() == (again / "left_out.csv").read_bytes()
    single = make_synthetic_dataset(tmp_path / "s", seed=2, train=40, val=5, test=4, image_size=16, progress=False)
    ds, full = load_dataset(out), load_dataset(single)
    train = ds.split("train")
    np.testing.assert_array_equal(train.labels, full.split("train").labels)  # same scenes, same truth
    observed_count = train.observed.sum(1)
    assert (observed_count >= 1).all() and (observed_count > 1).any()  # several annotated, at least one
    assert ((train.observed == 1) <= (train.labels == 1)).all()
    hidden = (train.labels == 1) & (train.observed != 1)
    assert hidden.any() and train.has_hidden_labels
    with (out / "left_out.csv").open(newline="") as handle:
        left_out = list(csv.DictReader(handle))
    relative = [path.relative_to(ds.root).as_posix() for path in train.images]
    expected = sorted((relative[i], SYNTHETIC_CLASSES[c]) for i, c in zip(*np.nonzero(hidden), strict=True))
    assert sorted((row["image"], row["class"]) for row in left_out) == expected
    for name in ("val", "test"):  # full labels, all observed
        split = ds.split(name)
        np.testing.assert_array_equal(split.observed, split.labels)
        assert not split.has_hidden_labels
    # Each label kept with p = 0.5, at least one per image: about half of the 2.5 labels a scene has.
    kept = train.observed.sum() / train.labels.sum()
    assert 0.4 < kept < 0.8
    make_synthetic_dataset(out, seed=2, train=40, val=5, test=4, image_size=16, progress=False, overwrite=True)
    assert not (out / "left_out.csv").exists()  # a single-positive world has no left-out list


def test_make_dataset_refuses_another_data_set_before_rendering(tmp_path):
    out = make_synthetic_dataset(
        tmp_path / "a", seed=1, train=3, val=0, test=0, image_size=32, progress=False
    )
    assert not (out / "val.csv").exists()
    before = (out / "images/train/000000.png").read_bytes()
    make_synthetic_dataset(out, seed=1, train=3, val=0, test=0, image_size=32, progress=False)  # same: fine
    with pytest.raises(FileExistsError):
        make_synthetic_dataset(out, seed=2, train=3, val=0, test=0, image_size=32, progress=False)
    assert (out / "images/train/000000.png").read_bytes() == before
    with pytest.raises(ValueError):
        make_synthetic_dataset(tmp_path / "c", train=0, progress=False)


def _scenes_digest(seed, split_counts, image_size=128, world=None):
    import hashlib

    digest = hashlib.sha256()
    for split, count in split_counts:
        for index in range(count):
            kwargs = {} if world is None else {"world": world}
            image, labels, objects = render_scene(seed, split, index, image_size, **kwargs)
            digest.update(image.tobytes())
            digest.update(repr((labels, objects)).encode())
    return digest.hexdigest()


def test_default_world_is_byte_identical_to_the_world_before_parameters():
    # Digests of the scenes rendered by the generator before World existed (commit d52f761): the demo
    # checkpoint and every measured figure depend on these exact pixels and labels.
    from spml.data.synthetic import DEFAULT_WORLD, World

    assert DEFAULT_WORLD == World() and DEFAULT_WORLD.class_names == SYNTHETIC_CLASSES
    for world in (None, World()):
        assert _scenes_digest(0, [("train", 12), ("val", 12), ("test", 12)], world=world) == (
            "ab23497041a34ce03ee6ff6e4a6bc39595019d2024c91fd44b9a394170202512")
        assert _scenes_digest(7, [("train", 6)], image_size=64, world=world) == (
            "65cb2b5ec4eb887d41cf2b6edd9b42ed71da2912d36af088e679c1f7bfe94fb7")


def test_world_parameters_change_classes_objects_size_and_clutter():
    from spml.data.synthetic import World

    many = World(classes=20, object_counts=(3, 4, 5, 6), object_count_p=None)
    assert len(set(many.class_names)) == 20
    hues = sorted(hue for _, hue, _ in many.class_table)
    assert min(np.diff(hues)) > 2 * HUE_JITTER
    counts = [len(render_scene(0, "train", i, 64, many)[2]) for i in range(40)]
    assert np.mean(counts) > 3.0 and all(1 <= c <= 6 for c in counts)
    assert all(set(render_scene(0, "train", i, 64, many)[1]) <= set(many.class_names) for i in range(10))
    few = World(classes=6)
    assert few.class_names == SYNTHETIC_CLASSES[:6]
    assert all(set(render_scene(1, "val", i, 64, few)[1]) <= set(few.class_names) for i in range(20))

    def box_side(world):
        boxes = [box for i in range(30) for _, box in render_scene(2, "test", i, 128, world)[2]]
        sides = [max(x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes]
        return np.mean(sides)

    assert box_side(World(radius_range=(0.06, 0.09))) < 0.6 * box_side(World())
    def pixels(clutter):
        world = World(clutter=clutter, object_counts=(1,), object_count_p=None)
        return np.asarray(render_scene(3, "train", 0, 64, world)[0]).astype(float)

    plain, busy = pixels(0.0), pixels(3.0)
    # Without clutter the background is a smooth gradient: far smaller pixel-to-pixel differences.
    assert np.abs(np.diff(plain, axis=1)).mean() < np.abs(np.diff(busy, axis=1)).mean()
    with pytest.raises(ValueError, match="classes"):
        World(classes=21)
