"""A torch Dataset over one split of the generic format."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset as TorchDataset

from spml.data.generic import Split
from spml.data.images import load_image


class ImageDataset(TorchDataset):
    """Items ``{"image", "labels", "observed", "index"}`` (plus ``"strong"`` with a strong transform).

    ``labels`` is the float (C,) full-label vector, ``observed`` the int8 (C,) single-positive view
    (1 positive, -1 known negative, 0 unknown), ``index`` the row in the split. A broken image raises
    :class:`~spml.data.images.ImageLoadError` naming the file; what to do about it is the caller's call.
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
        }
        if self.strong_transform is not None:
            item["strong"] = self.strong_transform(image)  # same decoded image, independent randomness
        return item
