"""Checkpoints: a directory (or a Hub repository) with ``model.safetensors`` and ``config.json``.

Nothing here ever unpickles: weights come from safetensors, everything else from JSON.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torchvision import transforms as T

from spml.data.transforms import RESIZE_MODES, eval_transform
from spml.model import SPMLModel, create_model
from spml.rejection import RunningThresholds
from spml.runtime import atomic_path, atomic_write_text
from spml.version import __version__

FORMAT_NAME = "spml-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
_STRETCH_DESCRIPTION = "bilinear, whole image to image_size x image_size"  # format 1's text for "stretch"
_HUB_PATTERN = re.compile(r"^hf://(?P<repo>[\w.\-]+/[\w.\-]+)(?:@(?P<revision>[\w.\-/]+))?$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing files, a wrong format, or weights that do not fit."""


@dataclass
class LoadedModel:
    """A network in eval mode with everything needed to use it on images."""

    network: SPMLModel
    classes: list[str]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    cam_norm: str = "image"
    cam_threshold: float = 0.5
    thresholds: RunningThresholds | None = None
    training: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    familiarity: dict[str, Any] | None = None  # statistics of the training images' features (spml.familiarity)
    resize: str = "stretch"  # how an image becomes the square input: spml.data.transforms.RESIZE_MODES

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: torch.device | str) -> LoadedModel:
        self.network.to(device)
        if self.thresholds is not None:
            self.thresholds.to(device)
        return self

    def input_transform(self) -> T.Compose:
        """The evaluation view this checkpoint expects: to its square input by ``resize``, normalised.
        Built once per view, not per request."""
        return _eval_view(self.image_size, tuple(self.mean), tuple(self.std), self.resize)

    def class_index(self, name: str) -> int:
        """The index of class ``name``; a ValueError that lists the classes when it is unknown."""
        try:
            return self.classes.index(name)
        except ValueError:
            shown = ", ".join(self.classes[:30]) + (" ..." if len(self.classes) > 30 else "")
            raise ValueError(f"Unknown class {name!r}. This checkpoint knows: {shown}.") from None

    def config(self) -> dict[str, Any]:
        config = build_config(self.network, self.classes, self.image_size, self.mean, self.std,
                              self.cam_norm, self.cam_threshold, self.thresholds, self.training, self.resize)
        if self.familiarity is not None:
            config["familiarity"] = self.familiarity
        return config


@functools.lru_cache(maxsize=8)
def _eval_view(size: int, mean: tuple[float, ...], std: tuple[float, ...], resize: str) -> T.Compose:
    return eval_transform(size, mean, std, resize)


def build_config(network: SPMLModel, classes: list[str], image_size: int, mean, std, cam_norm: str,
                 cam_threshold: float, thresholds: RunningThresholds | None, training: dict[str, Any],
                 resize: str = "stretch") -> dict:
    if len(classes) != network.num_classes:
        raise CheckpointError(f"{len(classes)} class names for a model of {network.num_classes} classes")
    if resize not in RESIZE_MODES:
        raise CheckpointError(f"unknown input resize {resize!r}; choose one of {', '.join(RESIZE_MODES)}")
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": network.arch_config(),
        "classes": list(classes),
        "input": {"image_size": int(image_size), "mean": list(mean), "std": list(std), "resize": resize},
        "cam": {"normalization": cam_norm, "threshold": float(cam_threshold)},
        "rejection": thresholds.state_dict() if thresholds is not None else None,
        "training": {**training, "code_version": __version__},
    }


def save_checkpoint(model: LoadedModel, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` atomically (temporary files, then rename),
    so a run killed while saving never leaves a half-written checkpoint. ``dtype`` (e.g. float16)
    stores the floating-point tensors in that type; loading casts them back to the network's."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config()
    tensors = {name: value.detach().cpu().contiguous() for name, value in model.network.state_dict().items()}
    if dtype is not None:
        tensors = {name: value.to(dtype) if value.is_floating_point() else value for name, value in tensors.items()}
    with atomic_path(directory / WEIGHTS_NAME) as weights_tmp:
        save_file(tensors, str(weights_tmp), metadata={"format": "pt"})
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return directory


def resolve_checkpoint(source: str | Path) -> Path:
    """A local directory for ``source``: the directory itself, or a Hub snapshot for
    ``hf://OWNER/NAME[@REVISION]`` (downloaded, or read from the cache when HF_HUB_OFFLINE=1)."""
    text = str(source)
    match = _HUB_PATTERN.match(text)
    if match:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo_id=match["repo"], revision=match["revision"],
                                          allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "README.md"]))
        except Exception as error:  # noqa: BLE001 - hub errors are many; the advice is one
            raise CheckpointError(f"could not fetch {text} from the Hugging Face Hub "
                                  f"({type(error).__name__}: {error})") from error
    if text.startswith("hf://"):
        raise CheckpointError(f"{text!r} is not of the form hf://OWNER/NAME[@REVISION]")
    path = Path(text)
    if path.is_file():
        raise CheckpointError(
            f"{path} is a file; a checkpoint is a directory with {WEIGHTS_NAME} and {CONFIG_NAME}. "
            "Pickled files (.pt, .pth, .bin) are never loaded, since unpickling can run arbitrary code.")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    return path


def _resize_mode(value: Any, config_path: Path) -> str:
    """The ``input.resize`` of a config: a mode of RESIZE_MODES; absent, or the description checkpoints
    wrote before letterboxing existed, is ``stretch``."""
    if value is None or value == _STRETCH_DESCRIPTION:
        return "stretch"
    if value not in RESIZE_MODES:
        raise CheckpointError(f"{config_path}: unknown input resize {value!r}; this code reads "
                              f"{', '.join(RESIZE_MODES)}")
    return str(value)


def read_config(directory: Path) -> dict[str, Any]:
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path} is not valid JSON: {error}") from error
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{config_path} is not an spml checkpoint config (format != {FORMAT_NAME!r})")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{config_path} has format version {config['format_version']}; "
                              f"this code reads up to {FORMAT_VERSION}: upgrade spml")
    return config


def load_model(source: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a checkpoint directory or ``hf://OWNER/NAME[@REVISION]``, in eval mode."""
    directory = resolve_checkpoint(source)
    config = read_config(directory)
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        pickled = [p.name for p in directory.iterdir() if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".ckpt")]
        hint = f" ({', '.join(pickled)} present but never unpickled)" if pickled else ""
        raise CheckpointError(f"{directory} has no {WEIGHTS_NAME}{hint}")
    try:
        state = load_file(str(weights_path))
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{weights_path} is not a valid safetensors file ({error})") from error
    architecture = dict(config["architecture"])
    network = create_model(architecture.pop("arch"), architecture.pop("num_classes"), pretrained=False,
                           **architecture)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"the weights in {weights_path} do not fit {config['architecture']}: {error}") from error
    network.eval().to(device)
    rejection = config.get("rejection")
    thresholds = RunningThresholds.from_state_dict(rejection, device) if rejection else None
    model_input, cam = config["input"], config["cam"]
    return LoadedModel(
        network=network,
        classes=list(config["classes"]),
        image_size=int(model_input["image_size"]),
        mean=tuple(model_input["mean"]),
        std=tuple(model_input["std"]),
        cam_norm=cam["normalization"],
        cam_threshold=float(cam["threshold"]),
        thresholds=thresholds,
        training=dict(config.get("training", {})),
        source=str(source),
        familiarity=config.get("familiarity"),
        resize=_resize_mode(model_input.get("resize"), directory / CONFIG_NAME),
    )
