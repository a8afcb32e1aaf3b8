"""The resolved configuration of a training run: recipe file, then command-line overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from spml.cam import CAM_NORMS
from spml.data.transforms import check_resize
from spml.losses import LOSS_NAMES
from spml.losses.calr import calr_defaults
from spml.model import ARCHITECTURES


@dataclass
class TrainConfig:
    data: str = ""
    out: str = ""
    loss: str = "calr"
    arch: str = "resnet50"
    arch_options: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = True
    # Start from this checkpoint's weights (and, for CALR, its running thresholds) instead of the
    # architecture's: a fine-tune, e.g. of the photos model at a larger input size. Same classes.
    init_from: str | None = None
    epochs: int = 25
    batch_size: int = 16  # the global batch: under torchrun each process loads batch_size / world size
    image_size: int = 448
    # How an image becomes the square input (spml.data.transforms): stretch (the paper's) or letterbox
    # (fit whole on grey, as the photo scenes place their photos); the checkpoint carries it to the app.
    resize: str = "stretch"
    optimizer: str = "adam"  # adam | adamw
    lr: float = 1e-5
    head_lr_multiplier: float = 10.0
    weight_decay: float = 0.0
    schedule: str = "none"  # none | onecycle (stepped per batch)
    warmup_fraction: float = 0.2  # one-cycle warm-up share of all steps
    warmup_epochs: int = 3  # CALR: epochs without rejection
    loss_options: dict[str, Any] = field(default_factory=dict)
    expected_positives: float | None = None  # EPR/ROLE; default: mean labels per training image
    cam_threshold: float = 0.5
    cam_norm: str = "image"
    device: str = "auto"
    amp: bool | None = None  # None: on for CUDA (bfloat16), off on the CPU
    channels_last: bool | None = None  # None: on for CUDA
    workers: int = 4
    seed: int = 0
    eval_batch_size: int | None = None
    max_steps_per_epoch: int | None = None  # for smoke runs and benchmarks
    # Stop once val mAP falls more than this many points below the best (CALR code 2, Large-Loss 3).
    early_stop_drop: float | None = None
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch (CUDA only)
    skip_bad: bool = False
    single_positive: bool = False  # draw one positive per row from labels by the protocol (files without one)
    log_every: int = 10
    tensorboard: bool = True  # event files in the run folder (train/board.py): tensorboard --logdir runs
    # Make the synthetic world at `data` first when it is missing: {seed, train, val, test, image_size}.
    synthetic: dict[str, Any] | None = None
    export: str | None = None  # copy the best checkpoint and summary here when training ends
    export_half: bool = False  # store the exported weights in float16 (half the size; loads as float32)
    # More data sets whose train split joins `data`'s in the other-world statistics written at the end
    # (the photos model: the single photos beside the scenes, so that neither is taken for another world).
    calibration_data: list[str] = field(default_factory=list)
    # Cross-fitting (train/folds.py): train without fold `fold` of the folds file.
    folds_file: str | None = None
    fold: int | None = None

    def validate(self) -> TrainConfig:
        if not self.data:
            raise ValueError("no data set: give --data DATASET (a folder with classes.txt and train.csv)")
        if not self.out:
            raise ValueError("no run directory: give --out RUN")
        if self.loss not in LOSS_NAMES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSS_NAMES)}")
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; choose one of {', '.join(sorted(ARCHITECTURES))}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose adam or adamw")
        if self.schedule not in ("none", "onecycle"):
            raise ValueError(f"unknown schedule {self.schedule!r}; choose none or onecycle")
        check_resize(self.resize)
        if self.cam_norm not in CAM_NORMS:
            raise ValueError(f"unknown cam_norm {self.cam_norm!r}; choose one of {', '.join(CAM_NORMS)}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"unknown device {self.device!r}; choose auto, cpu or cuda")
        for name in ("epochs", "batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.early_stop_drop is not None and self.early_stop_drop < 0:
            raise ValueError(f"early_stop_drop must be a number of mAP points >= 0, got {self.early_stop_drop}")
        if self.sync_bn and int(self.loss_options.get("batchnorm_passes", 1)) > 1:
            raise ValueError("sync_bn cannot be combined with loss_options batchnorm_passes > 1 (the repeated "
                             "BatchNorm folds use each process's own statistics)")
        if self.loss == "calr":
            # Written out, so that config.yaml says which CALR ran, and a run made under other defaults is
            # not resumed under these (the resume check compares the options). The gate's default
            # depends on the backbone's weights.
            defaults = calr_defaults(bool(self.loss_options.get("reference")), self.pretrained)
            self.loss_options = {**defaults, **self.loss_options}
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Recipe values from the YAML file ``path`` (if any), then every override that is not None."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping of option: value")
        unknown = sorted(set(loaded) - _FIELDS)
        if unknown:
            raise ValueError(f"config file {path}: unknown option(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(_FIELDS))}")
        values.update(loaded)
    recipe_data = values.get("data")
    values.update({key: value for key, value in overrides.items() if value is not None})
    if recipe_data and values.get("data") != recipe_data:
        # The recipe's paths inside its data set follow the data set a user names (--data).
        values["calibration_data"] = [follow_data(path, recipe_data, values["data"])
                                      for path in values.get("calibration_data") or []]
    return TrainConfig(**values).validate()


def follow_data(path: str, recipe_data: str, data: str) -> str:
    """``path`` moved from the recipe's data set ``recipe_data`` to ``data`` when it lies in it (the data
    set itself, or a folder inside it); any other path unchanged."""
    try:
        inside = PurePosixPath(path).relative_to(PurePosixPath(recipe_data))
    except ValueError:
        return path
    return str(Path(data) / inside) if inside.parts else str(data)


def check_paths(config: TrainConfig) -> None:
    """Every path a run reads, checked before any work: a wrong one fails at once with its name and
    option, not after hours of training (calibration data is read only once training ends)."""
    for option, folder in [("data", config.data), *(("calibration_data", d) for d in config.calibration_data)]:
        for name in ("classes.txt", "train.csv"):
            if not (Path(folder) / name).is_file():
                raise ValueError(f"{option} {folder}: no {name} there (not a data set folder; "
                                 "prepare one with python -m train prepare or convert one with python -m spml convert)")
    if config.init_from and not config.init_from.startswith("hf://") \
            and not (Path(config.init_from) / "config.json").is_file():
        raise ValueError(f"init_from {config.init_from}: not a checkpoint (no config.json); train the stage it "
                         "starts from first")
    if config.folds_file and not Path(config.folds_file).is_file():
        raise ValueError(f"folds_file {config.folds_file}: not found")
    for option, target in (("out", config.out), ("export", config.export)):
        if target and Path(target).exists() and not Path(target).is_dir():
            raise ValueError(f"{option} {target}: exists and is not a folder")
