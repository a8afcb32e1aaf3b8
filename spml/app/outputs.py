"""The images the page shows, written by the app itself, each request's in a folder of its own.

Why not hand Gradio the arrays: Gradio 6.31 writes a returned array to ``<cache>/<hash of its bytes>/image.jpeg``
with a plain ``write_bytes``. Two visitors getting the same result at the same moment (the same photo, the
same example) rewrite the one file while it is being sent: the download ends short (h11 "Too little data for
declared Content-Length", the client's "peer closed connection without sending complete message body").
A file path handed to Gradio is copied into its cache under a staging name and renamed into place, and an
existing copy is never rewritten; so the app writes each image once, atomically, to a path no other request
uses, and returns the path.
"""

from __future__ import annotations

import io
import shutil
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from spml.runtime import atomic_write_bytes

JPEG_QUALITY = 90


class OutputFiles:
    """Folders of output images under ``directory``; those older than ``max_age`` seconds are removed
    (checked at most every ``prune_every`` seconds) so that a long-running server does not fill its disk."""

    def __init__(self, directory: Path, max_age: float = 3600.0, prune_every: float = 60.0):
        self.directory = Path(directory)
        self.max_age = max_age
        self.prune_every = prune_every
        self._last_prune = 0.0
        self._lock = threading.Lock()

    def folder(self) -> Path:
        """A new, empty folder for one request's images."""
        self._prune()
        folder = self.directory / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder

    def write_image(self, folder: Path, name: str, image: np.ndarray) -> str:
        """``image`` (H x W x 3 uint8) as ``folder/name.jpg``, written atomically; returns its path."""
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, "JPEG", quality=JPEG_QUALITY)
        return str(atomic_write_bytes(folder / f"{name}.jpg", buffer.getvalue()))

    def _prune(self) -> None:
        now = time.time()
        with self._lock:
            if now - self._last_prune < self.prune_every:
                return
            self._last_prune = now
        if not self.directory.is_dir():
            return
        for folder in self.directory.iterdir():
            try:
                if folder.is_dir() and now - folder.stat().st_mtime > self.max_age:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                continue  # removed meanwhile by another request's pruning
