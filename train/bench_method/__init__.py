"""``python -m train bench-method``: does CALR beat assume-negative on worlds nobody tuned it for?

Trains full labels (the ceiling), AN, LL-R and CALR as a user gets it without a recipe (``calr``), and
any ablation variant of CALR, on several synthetic worlds that differ in what matters to the method:
number of classes, objects per image, object size, clutter, steps per epoch, single-positive or
partial labels; and, with ``--worlds photos-several,photos-partial``, scenes of real photos on an
ImageNet-pretrained backbone. Several seeds each; a seed renders its own world and initialises its own model.

Every run goes through the trainer's own pieces (``build_objective``, ``build_optimizer``,
``train_one_epoch``, the project's weak and strong views, model selection by clean-validation mAP),
with the images rendered into memory instead of PNG files so that a CPU runs the sweep in minutes.
Writes ``runs.json`` (every run, with its per-epoch rejection statistics; a killed sweep resumes
from it), ``results.csv``, ``epochs.csv``, ``summary.json`` and ``table.md`` into ``--out``.

:mod:`train.bench_method.worlds` defines the worlds and the methods, :mod:`train.bench_method.runner`
trains the runs (and holds the command line), :mod:`train.bench_method.results` makes the tables.
"""
