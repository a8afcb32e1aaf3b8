"""What the app's rooms share: the ZeroGPU decorator, errors shown to users, and view objects, which
name a callback's outputs so that ``app.py`` wires components by name instead of by position."""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from spml.app.outputs import OutputFiles
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


def fix_malloc_threshold(threshold: int = 1 << 20) -> bool:
    """glibc only: serve every allocation over ``threshold`` bytes with mmap, given back to the system when freed.

    Why: glibc raises its mmap threshold after each large block is freed (up to 32 MB on 64-bit), so the
    image-sized arrays of later requests (a 12-megapixel photo's overlay alone is 36 MB) come from the
    worker threads' heaps, which fragment and keep growing. Measured with ``python -m spml bench-serve``
    (20 clients, photos up to 2048 px): +490 MB over 200 requests as it was, +54 MB and level with the
    threshold fixed. Returns whether it was set (False off glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_mmap_threshold = -3  # from malloc.h; setting it also turns glibc's dynamic threshold off
    return bool(libc.mallopt(m_mmap_threshold, threshold))


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

    def written(self, files: OutputFiles) -> View:
        """This view with each image (an array, or the array of a gallery's ``(array, caption)`` pair) written
        to a file in a folder of this request's own: Gradio then serves files nobody rewrites
        (``spml.app.outputs`` says why)."""
        folder: Path | None = None
        changes: dict[str, Any] = {}

        def write(name: str, image: np.ndarray) -> str:
            nonlocal folder
            folder = folder or files.folder()
            return files.write_image(folder, name, image)

        for name in self.names():
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                changes[name] = write(name, value)
            elif isinstance(value, list) and any(isinstance(item, tuple) and isinstance(item[0], np.ndarray)
                                                 for item in value):
                changes[name] = [(write(f"{name}-{index}", item[0]), *item[1:])
                                 if isinstance(item, tuple) and isinstance(item[0], np.ndarray) else item
                                 for index, item in enumerate(value)]
        return replace(self, **changes) if changes else self


def as_outputs(callback: Callable[..., Any], files: OutputFiles | None = None) -> Callable[..., tuple]:
    """``callback`` as Gradio calls it: the views (and plain values) it returns, flattened into one tuple in
    the order of their fields, each view's images written to files of their own first when ``files`` is
    given. The signature is kept (``functools.wraps``): the API names its parameters after it."""

    @functools.wraps(callback)
    def flat(*args: Any, **kwargs: Any) -> tuple:
        result = callback(*args, **kwargs)
        parts = result if isinstance(result, tuple) else (result,)
        values: list[Any] = []
        for part in parts:
            if isinstance(part, View):
                values.extend((part.written(files) if files is not None else part).outputs())
            else:
                values.append(part)
        return tuple(values)

    return flat
