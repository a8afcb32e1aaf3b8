"""The checkpoints the app offers, the models loaded from them, and each checkpoint's card."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from spml.app.common import UserError, default_device
from spml.checkpoint import CheckpointError, LoadedModel, load_model, read_config
from spml.data.synthetic import SYNTHETIC_CLASSES
from spml.inference import optimize_for_inference

DEFAULT_CHECKPOINT = "checkpoints/demo"


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

    def _local(self, key: str) -> Path | None:
        if key.startswith("hf://"):
            return None
        path = Path(key)
        return (path if path.is_absolute() else self.base_dir / path).resolve()

    def keys(self) -> list[str]:
        """The configured checkpoint first, then every checkpoint directory under ``search_dir``
        (three levels deep at most, e.g. ``checkpoints/run/best``), each once."""
        keys = [self.configured]
        seen = {self._local(self.configured)}
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
        if key != self.configured and key not in self.keys():
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


def _first(mapping: dict[str, Any], *names: str) -> Any:
    return next((mapping[name] for name in names if mapping.get(name) not in (None, "")), None)


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
        f"{f' ([on the Hub]({link}))' if link else ''}.  \n"
        f"**Trained on** {trained}{f' ({recipe})' if recipe else ''}.  \n"
        f"**Measured:** {', '.join(scores) if scores else 'no mAP recorded in this checkpoint'}.  \n"
        f"**Classes it knows:** {class_list(model.classes)}."
    )

