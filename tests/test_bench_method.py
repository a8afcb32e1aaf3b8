"""``python -m train bench-method --quick``: every row of the table is there with finite numbers.

The figures themselves (and the time a sweep takes) belong to the benchmark, not to a test."""

import csv
import json
import math

import numpy as np
import pytest

from train.__main__ import main
from train.bench_method.worlds import DEFAULT_METHODS, QUICK_WORLDS, WORLDS, BenchWorld, observe


def test_quick_sweep_writes_every_row_with_finite_numbers(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench-method", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["table"]) == set(QUICK_WORLDS)
    for world, row in summary["table"].items():
        assert set(row) == set(DEFAULT_METHODS), world
        for method, entry in row.items():
            assert math.isfinite(entry["mean"]) and math.isfinite(entry["sd"]) and entry["seeds"] == [0]
            assert 0.0 < entry["mean"] <= 100.0, (world, method)
        epochs = row["calr"]["rejection"]
        assert [e["epoch"] for e in epochs] == list(range(1, QUICK_WORLDS[world].epochs + 1))
        for e in epochs:
            assert 0.0 <= e["recall"] <= 1.0 and 0.0 <= e["rejected_fraction_of_unknown"] <= 1.0
            assert e["precision"] is None or 0.0 <= e["precision"] <= 1.0
        # Warm-up epochs (3 by default) reject nothing.
        assert all(e["precision"] is None and e["recall"] == 0.0 for e in epochs[:3])
        # The probes estimate the rule's precision where images have several annotated positives only
        # (the rule's decisions are reported during the warm-up too).
        estimates = [e["estimated_precision"] for e in epochs]
        if QUICK_WORLDS[world].labels == "single":
            assert estimates == [None] * len(epochs)
        else:
            assert all(v is not None and 0.0 <= v <= 1.0 for v in estimates), estimates
    margin = summary["margins_over_an"]["calr"]
    assert set(margin["per_world"]) == set(QUICK_WORLDS) and math.isfinite(margin["mean"])
    table = (out / "table.md").read_text()
    assert table in printed
    for world in QUICK_WORLDS:
        assert sum(line.startswith(f"| {world} |") for line in table.splitlines()) == 2  # mAP and rejection
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(QUICK_WORLDS) * len(DEFAULT_METHODS)
    assert all(math.isfinite(float(row["test_map"])) for row in rows)
    # A second call finds every run done in runs.json and trains nothing.
    runs = (out / "runs.json").read_text()
    assert main(["bench-method", "--quick", "--out", str(out)]) == 0
    assert (out / "runs.json").read_text() == runs
    # --report-only trains nothing, even for a seed that has no run yet.
    assert main(["bench-method", "--quick", "--out", str(out), "--seeds", "0,5", "--report-only"]) == 0
    assert (out / "runs.json").read_text() == runs
    assert json.loads((out / "summary.json").read_text())["table"] == summary["table"]


def test_rule_share_is_each_seed_against_the_rule_switched_off():
    from train.bench_method.results import RunResult, markdown_tables, summarize

    spec = QUICK_WORLDS["quick-single"]
    maps = {("an", 0): 50.0, ("an", 1): 52.0, ("calr", 0): 80.0, ("calr", 1): 82.5,
            ("calr-no-rejection", 0): 79.0, ("calr-no-rejection", 1): 83.0}
    results = [RunResult(spec.name, method, seed, value, value, 1, 1.0,
                         [{"rejection_precision": None, "rejection_recall": None,
                           "rejected_fraction_of_unknown": 0.0, "averages_held": 1.0}] * spec.epochs)
               for (method, seed), value in maps.items()]
    methods = ["an", "calr", "calr-no-rejection"]
    summary = summarize(results, [spec], methods)
    # seed 0: 80 - 79 = +1; seed 1: 82.5 - 83 = -0.5; mean +0.25
    assert summary["rule_share"] == {"calr": {spec.name: {"per_seed": {0: 1.0, 1: -0.5}, "mean": 0.25}}}
    assert f"| {spec.name} | +1.00, -0.50 | +0.25 |" in markdown_tables(summary, [spec], methods)
    assert summarize(results, [spec], ["an", "calr"])["rule_share"] == {}


def test_partial_labels_keep_a_subset_and_at_least_one():
    spec = next(w for w in QUICK_WORLDS.values() if w.labels == "partial")
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 6)) < 0.4).astype(np.uint8)
    labels[0] = 0  # an image without any label stays without
    observed = observe(labels, spec, seed=3)
    assert observed.dtype == np.int8 and set(np.unique(observed)) <= {0, 1}
    assert not (observed > labels).any()  # only true labels are kept
    has_label = labels.any(axis=1)
    assert observed[has_label].any(axis=1).all() and not observed[0].any()
    kept = observed.sum() / labels.sum()
    assert 0.4 < kept < 0.75  # p = 0.5, plus the images whose draw kept nothing
    assert np.array_equal(observed, observe(labels, spec, seed=3))
    single = observe(labels, BenchWorld("s", spec.world, 1, 1, 1, 1), seed=3)
    assert (single.sum(axis=1) == has_label).all()


def test_default_sweep_spans_the_issue_range():
    steps = [w.steps_per_epoch for w in WORLDS.values()]
    classes = [w.world.classes for w in WORLDS.values()]
    assert min(steps) == 20 and max(steps) == 300 and min(classes) == 6 and max(classes) == 20
    assert {w.labels for w in WORLDS.values()} == {"single", "partial"}


def test_rule_scores_and_their_separation_on_a_hand_case():
    from train.bench_method.separability import RECALLS, SCORES, rule_scores, separation

    logits = np.array([[2.0, 1.0], [0.0, -1.0]])  # class means 1.0 and 0.0
    masked = np.array([[2.0, -2.0], [1.0, -1.0]])
    outside = np.array([[0.0, 3.0], [0.0, 0.0]])
    scores = rule_scores(logits, masked, outside)
    assert set(scores) == set(SCORES)
    np.testing.assert_array_equal(scores["logit"], [[1.0, 1.0], [-1.0, -1.0]])
    np.testing.assert_array_equal(scores["gap"], [[0.0, 3.0], [1.0, 0.0]])
    np.testing.assert_array_equal(scores["drop"], [[0.0, 3.0], [-1.0, 0.0]])
    np.testing.assert_array_equal(scores["logit_x_drop"], [[0.0, 3.0], [0.0, 0.0]])
    np.testing.assert_array_equal(scores["outside"], [[-1.0, 3.0], [-1.0, 0.0]])
    # Image 0's class 0 is its annotated positive: only the three unknown entries are ranked; the real
    # label among them is (0, 1), the two absent classes are (1, 0) and (1, 1).
    labels = np.array([[1, 1], [0, 0]])
    observed = np.array([[1, 0], [0, 0]])
    result = separation(scores, labels, observed)
    assert set(result) == {f"{s}_{m}" for s in SCORES for m in ["auroc"] + [f"p{r:g}" for r in RECALLS]}
    assert result["gap_auroc"] == 1.0 and result["gap_p0.3"] == 1.0  # 3.0 above 1.0 and 0.0
    assert result["logit_auroc"] == 1.0  # 1.0 above -1.0 twice
    assert result["drop_auroc"] == 1.0
    # Without a real label among the unknown entries there is nothing to separate.
    assert all(math.isnan(v) for v in separation(scores, np.array([[1, 0], [0, 0]]), observed).values())


def test_separability_changes_no_run_and_is_measured_again_where_missing(tmp_path):
    plain, measured = tmp_path / "plain", tmp_path / "measured"
    common = ["bench-method", "--quick", "--methods", "an,calr-no-rejection"]
    assert main([*common, "--out", str(plain)]) == 0
    measured.mkdir()
    (measured / "runs.json").write_bytes((plain / "runs.json").read_bytes())
    assert main([*common, "--out", str(measured), "--separability"]) == 0
    before, after = (json.loads((d / "runs.json").read_text()) for d in (plain, measured))
    # Every run lacked the measurement, so every run ran again, replacing its entry: same runs, same mAP.
    assert [(r["world"], r["method"], r["seed"], r["test_map"]) for r in after] == \
        [(r["world"], r["method"], r["seed"], r["test_map"]) for r in before]
    for run in after:
        for row in run["epochs"]:
            values = [v for k, v in row.items() if k.startswith("sep_")]
            assert len(values) == 15 and all(math.isnan(v) or 0.0 <= v <= 1.0 for v in values), row
    summary = json.loads((measured / "summary.json").read_text())
    assert set(summary["separability"]) == {"an", "calr-no-rejection"}
    table = (measured / "table.md").read_text()
    assert "the best score's precision at recall 0.3 by epoch" in table
    assert "gap: |z - z^M|, the rule's gap" in table  # the scores are named in the table
    runs = (measured / "runs.json").read_text()
    assert main([*common, "--out", str(measured), "--separability"]) == 0  # all measured: nothing reruns
    assert (measured / "runs.json").read_text() == runs


def _photo_folder(root, classes=5, photos=6):
    """An image folder of plain-coloured photos of several sizes: one folder a class."""
    from PIL import Image

    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(photos):
            colour = (40 * c, 20 * i, 255 - 40 * c)
            Image.new("RGB", (30 + 7 * i, 40 - 3 * i), colour).save(root / f"class{c}" / f"p{i}.png")
    return root


def test_photo_world_splits_by_photo_and_labels_each_scene_by_its_photos(tmp_path):
    from train.bench_method.worlds import PHOTO_WORLDS, PhotoScenes, render_world

    photos = _photo_folder(tmp_path / "photos")
    spec = BenchWorld("tiny-photos", PhotoScenes(mix=(0.0, 0.3, 0.2, 0.5)), 24, 8, 12, batch_size=8, image_size=32)
    data = render_world(spec, seed=0, photos=photos)
    assert data.classes == [f"class{c}" for c in range(5)]
    used = {split: {p for scene in scenes for p in scene} for split, scenes in data.sources.items()}
    assert not used["train"] & used["val"] and not used["train"] & used["test"] and not used["val"] & used["test"]
    for split, count in (("train", 24), ("val", 8), ("test", 12)):
        assert len(data.images[split]) == count and data.images[split][0].size == (32, 32)
        for scene, row in zip(data.sources[split], data.labels[split], strict=True):
            assert 2 <= len(scene) <= 4  # the mix holds no scene of one photo
            assert [data.classes[j] for j in np.flatnonzero(row)] == sorted(p.split("/")[0] for p in scene)
    assert (data.observed.sum(axis=1) == 1).all() and not (data.observed > data.labels["train"]).any()
    again = render_world(spec, seed=0, photos=photos)
    assert again.sources == data.sources and np.array_equal(again.observed, data.observed)
    assert np.array_equal(np.asarray(again.images["test"][3]), np.asarray(data.images["test"][3]))
    assert render_world(spec, seed=1, photos=photos).sources != data.sources
    # The benchmark's real-photo worlds: several objects in every scene, a single-positive and a partial one.
    assert {w.labels for w in PHOTO_WORLDS.values()} == {"single", "partial"}
    assert all(w.world.mix[0] == 0 and w.backbone.pretrained for w in PHOTO_WORLDS.values())


def test_a_run_resolves_calr_as_train_fit_does_so_the_gate_follows_the_backbone():
    from train.bench_method.worlds import EXTRA_WORLDS, METHODS, PHOTO_WORLDS

    def gate(world: BenchWorld, method: str) -> float:
        return world.train_config(*METHODS[method], seed=0, data="-", out="-").loss_options["min_precision"]

    scratch, imagenet = WORLDS["partial"], EXTRA_WORLDS["partial-pretrained"]
    assert (scratch.world, scratch.labels) == (imagenet.world, imagenet.labels)  # the same scenes and labels
    assert not scratch.backbone.pretrained and imagenet.backbone.pretrained
    assert [gate(scratch, m) for m in ("calr", "calr-gated", "calr-no-gate")] == [0.65, 0.65, 0.0]
    for world in (imagenet, PHOTO_WORLDS["photos-partial"], PHOTO_WORLDS["photos-partial-finetune"]):
        methods = ("calr", "calr-gated", "calr-no-gate", "calr-reference")
        assert [gate(world, m) for m in methods] == [0.0, 0.65, 0.0, 0.0]


def test_every_method_trains_on_a_photo_world_through_the_pretrained_backbone(tmp_path, monkeypatch):
    from train.bench_method import runner
    from train.bench_method.worlds import METHODS, PHOTO_BACKBONE, PhotoScenes

    photos = _photo_folder(tmp_path / "photos")
    spec = BenchWorld("tiny-photos", PhotoScenes(mix=(0.0, 0.5, 0.0, 0.5)), 16, 8, 8, batch_size=8, epochs=2,
                      image_size=64, backbone=PHOTO_BACKBONE)
    monkeypatch.setitem(runner.PHOTO_WORLDS, spec.name, spec)
    out = tmp_path / "bench"
    methods = ["full", "an", "an-ls", "epr", "role", "ll-r", "ll-ct", "calr-no-rejection", "calr"]
    assert set(methods) <= set(METHODS)
    assert main(["bench-method", "--worlds", spec.name, "--methods", ",".join(methods), "--seeds", "0",
                 "--photos", str(photos), "--out", str(out)]) == 0
    runs = json.loads((out / "runs.json").read_text())
    assert sorted(r["method"] for r in runs) == sorted(methods)
    assert all(0.0 < r["test_map"] <= 100.0 and len(r["epochs"]) == 2 for r in runs)


def test_join_adds_the_runs_of_sweeps_run_side_by_side(tmp_path, capsys):
    from train.bench_method.results import RunResult
    from train.bench_method.runner import join_runs

    def write(folder, entries):
        folder.mkdir()
        (folder / "runs.json").write_text(json.dumps([
            {"world": w, "method": m, "seed": s, "test_map": v, "best_val_map": v, "best_epoch": 1, "seconds": 1.0,
             "epochs": []} for w, m, s, v in entries]))

    write(tmp_path / "a", [("quick-single", "an", 0, 50.0), ("quick-single", "calr", 0, 60.0)])
    write(tmp_path / "b", [("quick-partial", "an", 0, 40.0), ("quick-single", "an", 0, 99.0)])
    assert join_runs(tmp_path / "a", [tmp_path / "b"]) == 1  # the run both hold keeps a's figure
    joined = [RunResult(**entry) for entry in json.loads((tmp_path / "a" / "runs.json").read_text())]
    assert sorted((r.world, r.method, r.test_map) for r in joined) == [
        ("quick-partial", "an", 40.0), ("quick-single", "an", 50.0), ("quick-single", "calr", 60.0)]
    assert join_runs(tmp_path / "a", [tmp_path / "b"]) == 0  # joining again adds nothing
    assert main(["bench-method", "--quick", "--methods", "an", "--out", str(tmp_path / "c"), "--join",
                 str(tmp_path / "a"), "--report-only"]) == 0
    assert "joined 3 run(s)" in capsys.readouterr().out
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["table"]["quick-partial"]["an"]["mean"] == 40.0
    with pytest.raises(ValueError, match="no runs.json to join"):
        join_runs(tmp_path / "a", [tmp_path / "missing"])


def test_coco_world_splits_by_photo_as_prepare_does(tmp_path):
    from conftest import make_coco_set

    from train.bench_method.worlds import COCO_WORLDS, CocoPhotos, render_world
    from train.prepare import split_photos

    make_coco_set(tmp_path / "coco")
    spec = BenchWorld("tiny-coco", CocoPhotos(), 100, 100, 3, batch_size=8, image_size=32)  # test capped at 3
    data = render_world(spec, seed=0, coco=tmp_path / "coco")
    assert data.classes == ["person", "car", "dining table", "toothbrush"]
    splits = split_photos(20, 0)
    for split, count in (("train", 14), ("val", 2), ("test", 3)):
        assert len(data.images[split]) == count and data.images[split][0].size == (32, 32)
        # photo k (k = its place in file order): person always, car if k even, table if k % 3 == 0, ...
        expected = [[1, int(k % 2 == 0), int(k % 3 == 0), int(k % 5 == 0)] for k in splits[split][:count]]
        assert data.labels[split].tolist() == expected
    assert (data.observed.sum(axis=1) == 1).all() and not (data.observed > data.labels["train"]).any()
    assert not np.array_equal(render_world(spec, seed=1, coco=tmp_path / "coco").labels["train"],
                              data.labels["train"])
    assert {w.labels for w in COCO_WORLDS.values()} == {"single", "partial"}
    with pytest.raises(ValueError, match="instances.json: not found"):
        render_world(spec, seed=0, coco=tmp_path / "nowhere")


def test_bench_method_runs_on_a_coco_world(tmp_path, monkeypatch):
    from conftest import make_coco_set

    from train.bench_method import runner
    from train.bench_method.worlds import PHOTO_BACKBONE, CocoPhotos

    make_coco_set(tmp_path / "coco", photos=30)
    spec = BenchWorld("tiny-coco", CocoPhotos(), 100, 100, 100, batch_size=8, epochs=2, image_size=64,
                      backbone=PHOTO_BACKBONE, warmup_epochs=1, labels="partial")
    monkeypatch.setitem(runner.COCO_WORLDS, spec.name, spec)
    out = tmp_path / "bench"
    assert main(["bench-method", "--worlds", spec.name, "--methods", "an,calr", "--seeds", "0",
                 "--coco", str(tmp_path / "coco"), "--out", str(out)]) == 0
    runs = json.loads((out / "runs.json").read_text())
    assert sorted(r["method"] for r in runs) == ["an", "calr"]
    assert all(0.0 < r["test_map"] <= 100.0 and len(r["epochs"]) == 2 for r in runs)
