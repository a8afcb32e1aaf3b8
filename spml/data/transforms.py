"""Image transforms of the method: the weak view, the strong view and the evaluation view.

Every view first brings the image to the network's square input, in one of two ways (a checkpoint's
``input.resize``): ``stretch`` scales the whole image to S x S (the paper's; a wide photo is squeezed),
``letterbox`` scales it to fit whole, aspect kept, centred on mid grey (as the photo scenes place their
photos). :func:`input_region` says where the image lies in the input, to map CAMs and boxes back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("stretch", "letterbox")
LETTERBOX_FILL = (128, 128, 128)  # a mid grey: what the image does not fill (0 under a 0.5 normalisation mean)
Region = tuple[int, int, int, int]  # (left, top, right, bottom), right/bottom exclusive


def fit_box(width: int, height: int, cell_width: int, cell_height: int) -> Region:
    """Where a ``width`` x ``height`` picture goes when scaled to fit whole (aspect kept) and centred in a
    cell of ``cell_width`` x ``cell_height`` pixels, in the cell's pixels."""
    scale = min(cell_width / width, cell_height / height)
    fitted_width, fitted_height = max(1, round(width * scale)), max(1, round(height * scale))
    left, top = (cell_width - fitted_width) // 2, (cell_height - fitted_height) // 2
    return left, top, left + fitted_width, top + fitted_height


def paste_fitted(canvas: Image.Image, image: Image.Image, cell: Region) -> None:
    """Paste ``image`` into ``canvas``, scaled (bilinear) to fit whole in ``cell`` and centred there."""
    left, top, right, bottom = fit_box(image.width, image.height, cell[2] - cell[0], cell[3] - cell[1])
    fitted = image.convert("RGB").resize((right - left, bottom - top), Image.BILINEAR)
    canvas.paste(fitted, (cell[0] + left, cell[1] + top))


def check_resize(resize: str) -> str:
    if resize not in RESIZE_MODES:
        raise ValueError(f"unknown resize {resize!r}; choose one of {', '.join(RESIZE_MODES)}")
    return resize


def input_region(width: int, height: int, image_size: int, resize: str) -> Region:
    """The pixels of the ``image_size`` x ``image_size`` input that a ``width`` x ``height`` image fills."""
    if check_resize(resize) == "stretch":
        return 0, 0, image_size, image_size
    return fit_box(width, height, image_size, image_size)


def input_window(width: int, height: int, image_size: int, resize: str) -> tuple[float, float, float, float]:
    """:func:`input_region` as fractions of the input's side: where a map over the input holds the image."""
    left, top, right, bottom = input_region(width, height, image_size, resize)
    return left / image_size, top / image_size, right / image_size, bottom / image_size


class Letterbox:
    """The image scaled to fit whole in ``size`` x ``size`` (bilinear, aspect kept), centred on mid grey."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        canvas = Image.new("RGB", (self.size, self.size), LETTERBOX_FILL)
        paste_fitted(canvas, image, (0, 0, self.size, self.size))
        return canvas

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


def _square(image_size: int, resize: str) -> Callable[[Any], Any]:
    return T.Resize((image_size, image_size)) if check_resize(resize) == "stretch" else Letterbox(image_size)


def input_normalization(network: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the inputs ``network`` expects: its ``input_normalization`` where its pretrained
    weights ask for their own (EfficientNet-Lite's TensorFlow weights), else ImageNet's."""
    own = getattr(network, "input_normalization", None)
    return (tuple(own[0]), tuple(own[1])) if own is not None else (IMAGENET_MEAN, IMAGENET_STD)


def _finish(mean: Sequence[float], std: Sequence[float]) -> list[Callable[[Any], Any]]:
    return [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]


def weak_transform(
    image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
    resize: str = "stretch",
) -> T.Compose:
    """To (S, S) (no crop: the CAM mask must cover the whole image), random flip, normalise."""
    return T.Compose([_square(image_size, resize), T.RandomHorizontalFlip(), *_finish(mean, std)])


def strong_transform(
    image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
    resize: str = "stretch",
) -> T.Compose:
    """RandAugment(3 ops, magnitude 5) on the original image, then the weak pipeline (its own flip)."""
    return T.Compose(
        [T.RandAugment(num_ops=3, magnitude=5), *weak_transform(image_size, mean, std, resize).transforms]
    )


def eval_transform(
    image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
    resize: str = "stretch",
) -> T.Compose:
    """To (S, S) and normalise: what validation, test and the app see."""
    return T.Compose([_square(image_size, resize), *_finish(mean, std)])
