"""The benchmarks' tables as pictures: PNG files written beside the tables by the commands that make them.

- :func:`plot_methods`: bench-method's test mAP by method, one panel a world (the mean over seeds as a
  bar, the spread as its error bar, each seed a dot);
- :func:`plot_rule_share`: bench-method's rule share (a CALR variant minus CALR without rejection, seed by
  seed), the rule beside its placebo;
- :func:`plot_precision_recall`: bench-cleanlab's precision-recall curves of the audit against the class
  probability and cleanlab's scorers.

matplotlib draws off screen (Agg) and is imported only here; where it is missing the commands write their
tables and say that the pictures are not drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

PLACEBOS = ("calr-placebo", "calr-placebo-no-gate")


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("the benchmarks' pictures need matplotlib (pip install matplotlib==3.10.9)") from error

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_methods(summary: dict[str, Any], seeds: dict[tuple[str, str], list[float]], worlds: list[str],
                 methods: list[str], path: Path) -> Path:
    """Test mAP by method, a panel a world: ``summary`` is bench-method's (``table``), ``seeds`` each
    (world, method)'s test mAP by seed."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(worlds), figsize=(4.2 * len(worlds), 0.42 * len(methods) + 1.6),
                                squeeze=False, sharey=True)
    positions = np.arange(len(methods))
    for axis, world in zip(axes[0], worlds, strict=True):
        entries = [summary["table"][world].get(method) for method in methods]
        means = [np.nan if e is None else e["mean"] for e in entries]
        spreads = [0.0 if e is None else e["sd"] for e in entries]
        colours = ["tab:red" if m.startswith("calr") and m not in PLACEBOS else "tab:gray" for m in methods]
        axis.barh(positions, means, xerr=spreads, color=colours, alpha=0.55, capsize=3)
        for row, method in enumerate(methods):
            values = seeds.get((world, method), [])
            axis.plot(values, [row] * len(values), "k.", markersize=5)
        finite = [m for m in means if np.isfinite(m)]
        if finite:
            axis.set_xlim(max(0.0, min(finite) - 8), min(100.0, max(finite) + 4))
        axis.set_title(world)
        axis.set_xlabel("test mAP")
        axis.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(positions, methods)
    axes[0][0].invert_yaxis()
    figure.suptitle("test mAP by method: mean over seeds (bar), spread (error bar), each seed (dot)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_rule_share(shares: dict[str, Any], worlds: list[str], path: Path) -> Path | None:
    """Each CALR variant's rule share (minus CALR without rejection) by world, seeds as dots, placebos in
    grey; None (nothing written) where the sweep has no share to show."""
    variants = [method for method in shares if any(world in shares[method] for world in worlds)]
    if not variants:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(6.0, 1.6 + 0.75 * len(worlds) * len(variants)), 4))
    width = 0.8 / len(variants)
    labelled: set[str] = set()
    for v, method in enumerate(variants):
        colour = "tab:gray" if method in PLACEBOS else "tab:red"
        for w, world in enumerate(worlds):
            entry = shares[method].get(world)
            if entry is None:
                continue
            x = w + (v - (len(variants) - 1) / 2) * width
            axis.bar(x, entry["mean"], width=width * 0.9, color=colour, alpha=0.55,
                     label=None if method in labelled else method)
            labelled.add(method)
            values = list(entry["per_seed"].values())
            axis.plot([x] * len(values), values, "k.", markersize=5)
    axis.axhline(0.0, color="black", linewidth=0.8)
    axis.set_xticks(range(len(worlds)), worlds)
    axis.set_ylabel("test mAP minus CALR without rejection")
    axis.set_title("the rule's own share, beside its placebo (random drops, as many)", fontsize=10)
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_precision_recall(panels: dict[str, dict[str, dict[str, list[float]]]], path: Path) -> Path:
    """One panel a title, in it each ranking's curve (``{"recall": [...], "precision": [...], "ap": AP}``)."""
    plt = _pyplot()
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.8 * rows), squeeze=False)
    for axis, (title, curves) in zip(axes.ravel(), panels.items(), strict=False):
        for name, curve in curves.items():
            style = "-" if name == "audit" else "--"
            axis.plot(curve["recall"], curve["precision"], style, label=f"{name} (AP {curve['ap']:.3f})")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("recall of the hidden labels")
        axis.set_ylabel("precision")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    for axis in axes.ravel()[len(panels):]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
