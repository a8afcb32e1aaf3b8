"""The benchmarks' pictures: written by the commands beside their tables, from the runs they hold."""

from __future__ import annotations

from PIL import Image

from train.bench_method.results import RunResult, write_outputs
from train.bench_method.worlds import QUICK_WORLDS
from train.plots import plot_precision_recall


def _runs(methods: dict[str, float]) -> list[RunResult]:
    epoch = {"rejection_precision": None, "rejection_recall": None, "rejected_fraction_of_unknown": 0.0,
             "averages_held": 1.0}
    return [RunResult(world, method, seed, value + seed + (world == "quick-partial"), value, 1, 1.0,
                      [epoch] * spec.epochs)
            for world, spec in QUICK_WORLDS.items() for method, value in methods.items() for seed in (0, 1, 2)]


def test_bench_method_draws_its_table_and_the_rule_share(tmp_path):
    methods = {"an": 50.0, "calr-no-rejection": 55.0, "calr-placebo": 55.5}
    summary = write_outputs(tmp_path, _runs(methods), list(QUICK_WORLDS.values()), list(methods), {})
    assert summary["rule_share"]["calr-placebo"]["quick-single"]["mean"] == 0.5
    with Image.open(tmp_path / "map_by_method.png") as picture:
        assert picture.format == "PNG" and picture.width > picture.height  # a panel a world, side by side
    with Image.open(tmp_path / "rule_share.png") as picture:
        assert picture.format == "PNG"
    # A sweep without the method the share is measured against draws no share, and leaves no stale one.
    write_outputs(tmp_path, _runs({"an": 50.0}), list(QUICK_WORLDS.values()), ["an"], {})
    assert (tmp_path / "map_by_method.png").is_file() and not (tmp_path / "rule_share.png").exists()


def test_precision_recall_panels(tmp_path):
    curve = {"recall": [0.1, 0.5, 1.0], "precision": [1.0, 0.6, 0.3], "ap": 0.62}
    path = plot_precision_recall({"a": {"audit": curve}, "b": {"audit": curve, "probability": curve},
                                  "c": {"audit": curve}, "d": {"audit": curve}}, tmp_path / "pr.png")
    with Image.open(path) as picture:  # 4 panels: 3 columns, 2 rows
        assert picture.format == "PNG" and picture.width > picture.height
