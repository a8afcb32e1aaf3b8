"""A torch Dataset over one split of the generic format, and the wrapper that skips broken images."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import default_collate

from spml.data.generic import Split
from spml.data.images import ImageLoadError, load_image, original_size


class ImageDataset(TorchDataset):
    """Items ``{"image", "labels", "observed", "index", "size"}`` (plus ``"strong"`` with a strong transform).

    ``labels`` is the float (C,) full-label vector, ``observed`` the int8 (C,) single-positive view
    (1 positive, -1 known negative, 0 unknown), ``index`` the row in the split, ``size`` the long (2,)
    (width, height) of the image file's own upright pixels (before any downscaling of a huge image),
    the frame the audit's boxes are given in. A broken image raises
    :class:`~spml.data.images.ImageLoadError` naming the file; what to do about it is the caller's call
    (:class:`SkipBrokenImages` turns it into a :class:`BrokenImage`).
    Holds only numpy arrays, paths and transforms, so it pickles into DataLoader workers.
    """

    def __init__(
        self,
        split: Split,
        transform: Callable[[Any], torch.Tensor],
        strong_transform: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        self.split = split
        self.transform = transform
        self.strong_transform = strong_transform

    def __len__(self) -> int:
        return len(self.split.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = load_image(self.split.images[index])
        item = {
            "image": self.transform(image),
            "labels": torch.from_numpy(self.split.labels[index].astype("float32")),
            "observed": torch.from_numpy(self.split.observed[index].astype("int8")),
            "index": index,
            "size": torch.tensor(original_size(image), dtype=torch.long),
        }
        if self.strong_transform is not None:
            item["strong"] = self.strong_transform(image)  # same decoded image, independent randomness
        return item


@dataclass(frozen=True)
class BrokenImage:
    """What :class:`SkipBrokenImages` yields for an image that cannot be decoded."""

    index: int  # the row in the split
    message: str  # the loader's error, naming the file and the problem


class SkipBrokenImages(TorchDataset):
    """Wraps an :class:`ImageDataset` so that an image that fails to decode yields a
    :class:`BrokenImage` instead of raising; :func:`collate_skipping_broken` drops it from the batch
    and hands it to the caller, which reports it (the trainer logs it, the audit counts it)."""

    def __init__(self, dataset: ImageDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any] | BrokenImage:
        try:
            return self.dataset[index]
        except (ImageLoadError, OSError) as error:
            return BrokenImage(index, str(error))


def collate_skipping_broken(
    items: list[dict[str, Any] | BrokenImage],
) -> tuple[dict[str, Any] | None, list[BrokenImage]]:
    """(the batch of the decoded items, or None when there is none; the broken ones)."""
    good = [item for item in items if not isinstance(item, BrokenImage)]
    broken = [item for item in items if isinstance(item, BrokenImage)]
    return (default_collate(good) if good else None), broken
