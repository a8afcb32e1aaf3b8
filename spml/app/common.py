"""What the app's rooms share: the ZeroGPU decorator, errors shown to users, and view objects, which
name a callback's outputs so that ``app.py`` wires components by name instead of by position."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import gradio as gr

from spml.runtime import resolve_device


def gpu(function: Callable | None = None, *, duration: int = 60) -> Callable:
    """ZeroGPU: ``spaces.GPU`` lends a GPU for each call (at most ``duration`` seconds) when the
    ``spaces`` package is installed (a no-op outside ZeroGPU hardware); without it, nothing changes.
    Use as ``@gpu`` or ``@gpu(duration=...)``."""
    if function is None:
        return lambda inner: gpu(inner, duration=duration)
    try:
        import spaces
    except ImportError:
        return function
    return spaces.GPU(function, duration=duration)


def default_device() -> str:
    # On ZeroGPU, CUDA placement at load time is deferred by `spaces` until a decorated call runs.
    zero_gpu = bool(os.environ.get("SPACES_ZERO_GPU"))
    return "cuda" if zero_gpu else str(resolve_device("auto"))


class UserError(gr.Error):
    """A problem with what the user sent (not a bug): shown in the page, without a traceback in the log."""

    def __init__(self, message: str, title: str = "Cannot analyse this input"):
        super().__init__(message, duration=None, title=title, print_exception=False)



@dataclass(frozen=True)
class View:
    """A callback's outputs, by name. Subclasses are dataclasses whose field names are the names the
    layout gives its components; ``wire`` picks those components in field order, ``outputs`` the values."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in fields(cls))

    @classmethod
    def wire(cls, components: Mapping[str, Any]) -> list[Any]:
        """The output components of this view, from the layout's name -> component mapping."""
        return [components[name] for name in cls.names()]

    @classmethod
    def unchanged(cls) -> tuple:
        """Outputs that leave every component as it is."""
        return (gr.skip(),) * len(fields(cls))

    def outputs(self) -> tuple:
        return tuple(getattr(self, name) for name in self.names())


def as_outputs(callback: Callable[..., Any]) -> Callable[..., tuple]:
    """``callback`` as Gradio calls it: the views (and plain values) it returns, flattened into one tuple in
    the order of their fields. The signature is kept (``functools.wraps``): the API names its parameters."""

    @functools.wraps(callback)
    def flat(*args: Any, **kwargs: Any) -> tuple:
        result = callback(*args, **kwargs)
        parts = result if isinstance(result, tuple) else (result,)
        return tuple(value for part in parts for value in (part.outputs() if isinstance(part, View) else (part,)))

    return flat
