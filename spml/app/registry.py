"""The checkpoints the app offers, the models loaded from them, and each checkpoint's card."""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spml.app.common import UserError, default_device
from spml.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    LoadedModel,
    load_model,
    read_config,
    resolve_checkpoint,
)
from spml.data.synthetic import SYNTHETIC_CLASSES
from spml.inference import optimize_for_inference
from spml.model import ARCHITECTURES

DEFAULT_CHECKPOINT = "checkpoints/photos"  # the app opens on the model of real photos ...
DEMO_CHECKPOINT = "checkpoints/demo"  # ... the model of the synthetic world stays a choice in the selector


def default_checkpoint(base_dir: Path) -> str:
    """DEFAULT_CHECKPOINT, or the demo where a checkout does not hold it (yet): the app always starts."""
    return DEFAULT_CHECKPOINT if (Path(base_dir) / DEFAULT_CHECKPOINT / CONFIG_NAME).is_file() else DEMO_CHECKPOINT


class CheckpointRegistry:
    """The checkpoints the page offers (the configured one and those found under ``search_dir``) and
    the models loaded from them, shared by every session and thread.

    A model is only ever read after loading (eval mode, inference mode, no hooks), so threads share it
    safely; loading happens once per checkpoint, under a lock of its own.
    """

    def __init__(self, configured: str, base_dir: Path, search_dir: Path | None = None,
                 device: str | None = None, max_loaded: int = 3):
        self.configured = configured
        self.base_dir = Path(base_dir)
        self.search_dir = Path(search_dir) if search_dir is not None else self.base_dir / "checkpoints"
        self.device = device or default_device()
        self.max_loaded = max(1, max_loaded)
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._added: list[str] = []  # checkpoints users loaded through the page, for this server's life

    def _local(self, key: str) -> Path | None:
        if key.startswith("hf://"):
            return None
        path = Path(key)
        return (path if path.is_absolute() else self.base_dir / path).resolve()

    def keys(self) -> list[str]:
        """The configured checkpoint first, then every checkpoint directory under ``search_dir``
        (three levels deep at most, e.g. ``checkpoints/run/best``), each once."""
        with self._lock:
            keys = [self.configured, *(key for key in self._added if key != self.configured)]
        seen = {self._local(key) for key in keys}
        if self.search_dir.is_dir():
            found = [p.parent for depth in ("*", "*/*", "*/*/*") for p in self.search_dir.glob(f"{depth}/config.json")]
            for directory in sorted(found):
                resolved = directory.resolve()
                if resolved in seen:
                    continue
                try:
                    read_config(directory)
                except CheckpointError:
                    continue  # a config.json of something else: not offered
                seen.add(resolved)
                try:
                    keys.append(str(resolved.relative_to(self.base_dir.resolve())))
                except ValueError:
                    keys.append(str(resolved))
        return keys

    def get(self, key: str | None = None) -> LoadedModel:
        """The model of ``key`` (default: the configured checkpoint), loaded and optimised on first use."""
        key = key or self.configured
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loading = self._loading.setdefault(key, threading.Lock())
        if key != self.configured and key not in self._added and key not in self.keys():
            # Only listed checkpoints: the key comes from the browser and must not name arbitrary paths.
            raise UserError(f"unknown checkpoint {key!r}", title="Cannot load this checkpoint")
        with loading:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            local = self._local(key)
            model = load_model(local if local is not None else key, device=self.device)
            optimize_for_inference(model.network)
            model.source = key
            with self._lock:
                self._models[key] = model
                while len(self._models) > self.max_loaded:
                    oldest = next(k for k in self._models if k != self.configured)
                    del self._models[oldest]
            return model

    def add(self, source: str, progress: Callable[[float, str], None] = lambda done, what: None) -> str:
        """Validate and load a checkpoint a user named (``hf://OWNER/NAME[@REVISION]``, or a folder on the
        server where SPML_ALLOW_SERVER_PATHS=1), then offer it beside the others; returns its key.
        Every problem is a UserError that says what is wrong and what to do."""
        key = str(source or "").strip()
        title = "Cannot load this checkpoint"
        if not key:
            raise UserError("Type hf://OWNER/NAME[@REVISION] (a checkpoint on the Hugging Face Hub).", title=title)
        if key.startswith("hf://"):
            if not HUB_KEY.match(key):
                raise UserError(f"{key!r} is not of the form hf://OWNER/NAME[@REVISION].", title=title)
            progress(0.05, "checking the repository on the Hub")
            _check_hub_sizes(key)
        elif os.environ.get("SPML_ALLOW_SERVER_PATHS") != "1":
            raise UserError("Loading a folder on the server is off here (SPML_ALLOW_SERVER_PATHS=1 allows it): "
                            "give a checkpoint on the Hub, hf://OWNER/NAME[@REVISION].", title=title)
        else:
            key = str(Path(key).expanduser().resolve())
        progress(0.2, "fetching config.json and model.safetensors")
        try:
            directory = resolve_checkpoint(key)
        except CheckpointError as error:
            raise UserError(_hub_advice(key, error), title=title) from None
        _check_files(key, directory)
        progress(0.6, "loading the weights")
        with self._lock:
            if key not in self._added:
                self._added.append(key)
        try:
            self.get(key)
        except (CheckpointError, ValueError) as error:
            with self._lock:
                self._added.remove(key)
            raise UserError(str(error), title=title) from None
        progress(1.0, "loaded")
        return key


def _first(mapping: dict[str, Any], *names: str) -> Any:
    return next((mapping[name] for name in names if mapping.get(name) not in (None, "")), None)


HUB_KEY = re.compile(r"^hf://[\w.\-]+/[\w.\-]+(@[\w.\-/]+)?$")
MAX_WEIGHTS_BYTES = int(float(os.environ.get("SPML_MAX_CHECKPOINT_MB", "2048")) * (1 << 20))
MAX_CONFIG_BYTES = 16 << 20
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt")


def _check_hub_sizes(key: str) -> None:
    """Online only: refuse before downloading a repository whose weights exceed the size limit."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return  # offline, the cache is all there is: the files are checked once resolved
    from huggingface_hub import HfApi

    repo, _, revision = key[len("hf://"):].partition("@")
    try:
        info = HfApi().model_info(repo, revision=revision or None, files_metadata=True)
    except Exception as error:  # noqa: BLE001 - the Hub's errors are many; the advice below names them
        raise UserError(_hub_advice(key, error), title="Cannot load this checkpoint") from None
    sizes = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}
    if sizes.get(WEIGHTS_NAME, 0) > MAX_WEIGHTS_BYTES:
        raise UserError(f"{key}: {WEIGHTS_NAME} is {sizes[WEIGHTS_NAME] / (1 << 20):.0f} MB, over this server's "
                        f"limit of {MAX_WEIGHTS_BYTES / (1 << 20):.0f} MB (SPML_MAX_CHECKPOINT_MB).",
                        title="Checkpoint too large")


def _hub_advice(key: str, error: BaseException) -> str:
    """A clear message for a checkpoint that could not be fetched, after the Hub's error type."""
    cause = error.__cause__ or error
    kind = type(cause).__name__
    if kind in ("RepositoryNotFoundError", "GatedRepoError") or "401" in str(cause):
        return (f"{key}: no such repository on the Hugging Face Hub, or it is private or gated and this server has "
                "no access to it. Check the name, or make the repository public.")
    if kind == "RevisionNotFoundError":
        return f"{key}: the repository has no such revision (branch, tag or commit)."
    if kind in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") or "offline" in str(cause).lower():
        return (f"{key}: not in this server's Hub cache, and the server is offline (HF_HUB_OFFLINE=1) or cannot "
                "reach the Hub.")
    return str(error)


def _check_files(key: str, directory: Path) -> None:
    """safetensors + config.json only, within the size limits; a clear message for a missing file."""
    title = "Cannot load this checkpoint"
    for name, limit in ((CONFIG_NAME, MAX_CONFIG_BYTES), (WEIGHTS_NAME, MAX_WEIGHTS_BYTES)):
        path = directory / name
        if not path.is_file():
            pickled = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
            hint = f" ({', '.join(pickled)} there is never unpickled: only safetensors is read)" if pickled else ""
            raise UserError(f"{key} has no {name}: a checkpoint is {CONFIG_NAME} and {WEIGHTS_NAME}{hint}.",
                            title=title)
        if path.stat().st_size > limit:
            raise UserError(f"{key}: {name} is {path.stat().st_size / (1 << 20):.0f} MB, over this server's limit "
                            f"of {limit / (1 << 20):.0f} MB.", title=title)
    try:
        arch = read_config(directory).get("architecture", {}).get("arch")
    except CheckpointError as error:
        raise UserError(str(error).replace(str(directory), key), title=title) from None
    if arch not in ARCHITECTURES:
        raise UserError(f"{key}: unknown architecture {arch!r}; this app runs {', '.join(sorted(ARCHITECTURES))}.",
                        title=title)


def class_list(classes: list[str], limit: int = 40) -> str:
    """``a, b, c`` for the first ``limit`` classes, and how many more."""
    more = f" and {len(classes) - limit} more" if len(classes) > limit else ""
    return ", ".join(classes[:limit]) + more


def hub_link(key: str) -> str | None:
    """The Hub page of an ``hf://OWNER/NAME[@REVISION]`` key; None for a local checkpoint."""
    if not key.startswith("hf://"):
        return None
    repo, _, revision = key[len("hf://"):].partition("@")
    return f"https://huggingface.co/{repo}" + (f"/tree/{revision}" if revision else "")


def is_synthetic(model: LoadedModel) -> bool:
    return list(model.classes) == list(SYNTHETIC_CLASSES)


def describe_checkpoint(key: str, model: LoadedModel) -> str:
    """Markdown: which checkpoint is loaded, what it was trained on and how well it does."""
    training = model.training
    arch = model.network.arch_config().get("arch", "?")
    dataset = _first(training, "dataset", "data", "data_set", "dataset_name")
    if dataset is None and is_synthetic(model):
        dataset = "synthetic"
    world = " (the synthetic world: coloured shapes, each class a shape in a hue band of its own)" \
        if is_synthetic(model) else ""
    scores = []
    for label, names in (("test", ("test_map",)), ("validation", ("best_val_map", "val_map"))):
        value = _first(training, *names)
        if value is not None:
            scores.append(f"{label} mAP **{float(value):.1f}**")
    loss = _first(training, "loss")
    epochs = _first(training, "epochs")
    trained = f"`{Path(str(dataset)).name if dataset else 'an unrecorded data set'}`{world}"
    recipe = ", ".join(part for part in (f"loss `{loss}`" if loss else "",
                                         f"{epochs} epoch{'' if str(epochs) == '1' else 's'}" if epochs else "")
                       if part)
    link = hub_link(key)
    return (
        f"**Loaded:** `{key}` — {arch}, {len(model.classes)} classes, {model.image_size} px input"
        f"{' (the image fitted whole, on grey)' if model.resize == 'letterbox' else ''}"
        f"{f' ([on the Hub]({link}))' if link else ''}.  \n"
        f"**Trained on** {trained}{f' ({recipe})' if recipe else ''}.  \n"
        f"**Measured:** {', '.join(scores) if scores else 'no mAP recorded in this checkpoint'}.  \n"
        f"**Classes it knows:** {class_list(model.classes)}."
    )

