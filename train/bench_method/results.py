"""The sweep's results: one RunResult per (world, method, seed), their mean and spread over seeds, the
margins over AN, the markdown tables, and the files written into ``--out``."""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spml.runtime import atomic_write_text
from train.bench_method.separability import RECALLS, SCORE_MEANINGS, SCORES
from train.bench_method.worlds import METHODS, NO_REJECTION, BenchWorld
from train.plots import plot_methods, plot_rule_share


@dataclass
class RunResult:
    world: str
    method: str
    seed: int
    test_map: float
    best_val_map: float
    best_epoch: int
    seconds: float
    epochs: list[dict[str, Any]] = field(default_factory=list)


def has_separability(result: RunResult) -> bool:
    """Whether the run measured, every epoch, how well the rule's scores separate the missing labels."""
    return bool(result.epochs) and all(f"sep_{SCORES[0]}_auroc" in row for row in result.epochs)


def _spread(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), (float(statistics.stdev(values)) if len(values) > 1 else 0.0)


def summarize(results: list[RunResult], worlds: list[BenchWorld], methods: list[str]) -> dict[str, Any]:
    """Mean and spread over seeds per world and method, margins over AN, CALR's rejection by epoch."""
    table: dict[str, dict[str, Any]] = {}
    for spec in worlds:
        row: dict[str, Any] = {}
        for method in methods:
            runs = [r for r in results if r.world == spec.name and r.method == method]
            if not runs:
                continue
            mean, sd = _spread([r.test_map for r in runs])
            entry: dict[str, Any] = {"mean": mean, "sd": sd, "seeds": sorted(r.seed for r in runs)}
            if METHODS[method][0] == "calr":
                by_epoch = []
                for epoch in range(1, spec.epochs + 1):
                    rows = [r.epochs[epoch - 1] for r in runs]
                    precisions = [x["rejection_precision"] for x in rows if x["rejection_precision"] is not None]
                    estimates = [x["estimated_precision"] for x in rows if x.get("estimated_precision") is not None]
                    by_epoch.append({
                        "epoch": epoch,
                        "precision": float(np.mean(precisions)) if precisions else None,
                        "estimated_precision": float(np.mean(estimates)) if estimates else None,
                        "recall": float(np.mean([x["rejection_recall"] or 0.0 for x in rows])),
                        "rejected_fraction_of_unknown": float(np.mean([x["rejected_fraction_of_unknown"]
                                                                       for x in rows])),
                        "averages_held": float(np.mean([x["averages_held"] for x in rows]))})
                entry["rejection"] = by_epoch
            row[method] = entry
        table[spec.name] = row
    margins: dict[str, Any] = {}
    for method in methods:
        if METHODS[method][0] != "calr":
            continue
        per_world = {w: table[w][method]["mean"] - table[w]["an"]["mean"] for w in table
                     if method in table[w] and "an" in table[w]}
        if per_world:
            margins[method] = {"per_world": per_world, "mean": float(np.mean(list(per_world.values()))),
                               "min": float(min(per_world.values())),
                               "wins": sum(v > 0 for v in per_world.values()), "worlds": len(per_world)}
    return {"table": table, "margins_over_an": margins, "rule_share": _rule_share(results, worlds, methods),
            "separability": _separability(results, worlds, methods), "seeds_asked": len({r.seed for r in results})}


def _separability(results: list[RunResult], worlds: list[BenchWorld], methods: list[str]) -> dict[str, Any]:
    """Per method, world and epoch: each score's AUROC and precision at each recall, mean over the seeds
    that measured it (NaN entries, a split without a missing label, left out)."""
    measures = ["auroc"] + [f"p{recall:g}" for recall in RECALLS]
    found: dict[str, Any] = {}
    for method in methods:
        per_world = {}
        for spec in worlds:
            runs = [r for r in results if r.world == spec.name and r.method == method and has_separability(r)]
            if not runs:
                continue
            by_epoch = []
            for epoch in range(spec.epochs):
                entry = {}
                for score in SCORES:
                    values = {m: [r.epochs[epoch][f"sep_{score}_{m}"] for r in runs] for m in measures}
                    entry[score] = {m: (float(np.nanmean(v)) if not np.all(np.isnan(v)) else None)
                                    for m, v in values.items()}
                by_epoch.append(entry)
            per_world[spec.name] = by_epoch
        if per_world:
            found[method] = per_world
    return found


def _rule_share(results: list[RunResult], worlds: list[BenchWorld], methods: list[str]) -> dict[str, Any]:
    """Each CALR variant against ``calr-no-rejection`` (the rule never on), seed by seed: the rule's own
    share of the test mAP, where the sweep ran both."""
    if NO_REJECTION not in methods:
        return {}
    by_key = {(r.world, r.method, r.seed): r.test_map for r in results}
    seeds = sorted({r.seed for r in results})
    shares: dict[str, Any] = {}
    for method in methods:
        if METHODS[method][0] != "calr" or method == NO_REJECTION:
            continue
        per_world = {}
        for spec in worlds:
            per_seed = {seed: by_key[(spec.name, method, seed)] - by_key[(spec.name, NO_REJECTION, seed)]
                        for seed in seeds
                        if (spec.name, method, seed) in by_key and (spec.name, NO_REJECTION, seed) in by_key}
            if per_seed:
                per_world[spec.name] = {"per_seed": per_seed, "mean": float(np.mean(list(per_seed.values())))}
        if per_world:
            shares[method] = per_world
    return shares


def markdown_tables(summary: dict[str, Any], worlds: list[BenchWorld], methods: list[str]) -> str:
    """The test mAP table (mean ± sd over seeds), CALR's margins over AN, and rejection by epoch."""
    table = summary["table"]
    lines = ["| world | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for spec in worlds:
        cells = []
        for method in methods:
            entry = table[spec.name].get(method)
            count = "" if entry is None or len(entry["seeds"]) == summary["seeds_asked"] else \
                f" ({len(entry['seeds'])} seed{'s' if len(entry['seeds']) > 1 else ''})"
            cells.append("" if entry is None else f"{entry['mean']:.2f} ± {entry['sd']:.2f}{count}")
        lines.append(f"| {spec.name} | " + " | ".join(cells) + " |")
    margins = summary["margins_over_an"]
    if margins:
        lines += ["", "| CALR variant | " + " | ".join(s.name for s in worlds) + " | mean | worlds won |",
                  "|---|" + "---|" * (len(worlds) + 2)]
        for method, margin in margins.items():
            cells = [f"{margin['per_world'][s.name]:+.2f}" if s.name in margin["per_world"] else ""
                     for s in worlds]
            lines.append(f"| {method} - an | " + " | ".join(cells)
                         + f" | {margin['mean']:+.2f} | {margin['wins']}/{margin['worlds']} |")
    for method, per_world in summary.get("rule_share", {}).items():
        lines += ["", f"The rule's share, {method} - {NO_REJECTION} (test mAP, seed by seed)", "",
                  "| world | per seed | mean |", "|---|---|---|"]
        for spec in worlds:
            if spec.name in per_world:
                share = per_world[spec.name]
                seeds = ", ".join(f"{value:+.2f}" for _, value in sorted(share["per_seed"].items()))
                lines.append(f"| {spec.name} | {seeds} | {share['mean']:+.2f} |")
    lines += _separability_tables(summary.get("separability", {}), worlds)
    for method in methods:
        if METHODS[method][0] != "calr":
            continue
        lines += ["", f"{method}: rejection precision / recall by epoch (mean over seeds); in brackets the "
                  "precision the probes estimate, where images have several positives", "",
                  "| world | " + " | ".join(f"ep {e}" for e in range(1, max(s.epochs for s in worlds) + 1)) + " |",
                  "|---|" + "---|" * max(s.epochs for s in worlds)]
        for spec in worlds:
            entry = table[spec.name].get(method)
            if entry is None:
                continue
            cells = [("-" if e["precision"] is None else f"{e['precision']:.2f} / {e['recall']:.2f}")
                     + ("" if e.get("estimated_precision") is None else f" ({e['estimated_precision']:.2f})")
                     for e in entry["rejection"]]
            lines.append(f"| {spec.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _separability_tables(separability: dict[str, Any], worlds: list[BenchWorld]) -> list[str]:
    first = f"p{RECALLS[0]:g}"
    lines: list[str] = []
    for method, per_world in separability.items():
        lines += ["", f"{method}: how well each score separates the training split's unannotated real labels "
                  f"from its absent classes at the last epoch: AUROC / precision at recall "
                  f"{' / '.join(f'{r:g}' for r in RECALLS)} (mean over seeds)", "",
                  "| world | " + " | ".join(SCORES) + " |", "|---|" + "---|" * len(SCORES)]
        for spec in worlds:
            if spec.name in per_world:
                last = per_world[spec.name][-1]
                lines.append(f"| {spec.name} | " + " | ".join(
                    " / ".join("-" if last[score][m] is None else f"{last[score][m]:.2f}" for m in last[score])
                    for score in SCORES) + " |")
        lines += ["", "; ".join(f"{score}: {SCORE_MEANINGS[score]}" for score in SCORES)]
        epochs = max(len(v) for v in per_world.values())
        lines += ["", f"{method}: the best score's precision at recall {RECALLS[0]:g} by epoch (the ceiling of a "
                  "rule that thresholds one of them)", "",
                  "| world | " + " | ".join(f"ep {e}" for e in range(1, epochs + 1)) + " |", "|---|" + "---|" * epochs]
        for spec in worlds:
            if spec.name not in per_world:
                continue
            cells = []
            for entry in per_world[spec.name]:
                known = {score: entry[score][first] for score in SCORES if entry[score][first] is not None}
                best = max(known, key=known.get) if known else None
                cells.append("-" if best is None else f"{known[best]:.2f} {best}")
            lines.append(f"| {spec.name} | " + " | ".join(cells) + " |")
    return lines


def write_outputs(out: Path, results: list[RunResult], worlds: list[BenchWorld], methods: list[str],
                   meta: dict[str, Any]) -> dict[str, Any]:
    summary = summarize(results, worlds, methods)
    atomic_write_text(out / "summary.json", json.dumps({**meta, **summary}, indent=2) + "\n")
    markdown = markdown_tables(summary, worlds, methods)
    atomic_write_text(out / "table.md", markdown)
    atomic_write_text(out / "results.csv", _csv(
        ["world", "method", "seed", "test_map", "best_val_map", "best_epoch", "seconds"],
        [{k: v for k, v in asdict(r).items() if k != "epochs"} for r in results]))
    epoch_rows = [{"world": r.world, "method": r.method, "seed": r.seed, **e} for r in results for e in r.epochs]
    columns = list(dict.fromkeys(key for row in epoch_rows for key in row))
    atomic_write_text(out / "epochs.csv", _csv(columns, epoch_rows))
    if results:
        seeds: dict[tuple[str, str], list[float]] = {}
        for r in results:
            seeds.setdefault((r.world, r.method), []).append(r.test_map)
        names = [spec.name for spec in worlds]
        try:
            plot_methods(summary, seeds, names, methods, out / "map_by_method.png")
            if plot_rule_share(summary["rule_share"], names, out / "rule_share.png") is None:
                (out / "rule_share.png").unlink(missing_ok=True)  # not a picture of another sweep's shares
        except ImportError as error:
            print(f"no pictures: {error}")
    return summary


def _csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in columns})
    return buffer.getvalue()
