"""scikit-image's sample photographs, read at run time from the installed package (a runtime dependency):
the app's examples for a model of real photos, and the photos with which the other-world notice is measured.
Only those shipped in scikit-image's wheel are named here: others are downloaded on demand, and the app must
work offline. Nothing is copied into the repository.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# Every photograph scikit-image ships in its wheel, by its loader's name in ``skimage.data``.
SHIPPED = ("astronaut", "camera", "cat", "chelsea", "coffee", "rocket", "moon", "coins", "brick", "grass",
           "gravel", "hubble_deep_field", "retina", "immunohistochemistry", "cell", "page", "text", "clock")


@dataclass(frozen=True)
class ExamplePhoto:
    """A shipped photograph that shows one of the photos model's classes."""

    name: str  # the loader in skimage.data; "motorcycle_left" is the left image of stereo_motorcycle()
    label: str  # the class it shows
    caption: str  # what it shows, in words


EXAMPLE_PHOTOS = (
    ExamplePhoto("chelsea", "cat", "a cat (chelsea)"),
    ExamplePhoto("astronaut", "face", "a face, the astronaut Eileen Collins (astronaut)"),
    ExamplePhoto("motorcycle_left", "motorbike", "a motorbike (stereo_motorcycle, left view)"),
)


def load_photo(name: str) -> Image.Image:
    """The photograph ``name`` as an RGB image (ImportError without scikit-image)."""
    from skimage import data

    pixels = data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(data, name)()
    return Image.fromarray(np.asarray(pixels)).convert("RGB")


def sample_photos() -> dict[str, Image.Image]:
    """Every shipped photograph by name: how often the notice is right is measured on these."""
    return {name: load_photo(name) for name in SHIPPED}
