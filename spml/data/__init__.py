"""Data: the benchmark protocol, the generic data set format, image loading, transforms, synthetic world."""

from spml.data.dataset import ImageDataset
from spml.data.generic import Dataset, DatasetError, Split, load_dataset
from spml.data.images import ImageLoadError, load_image
from spml.data.protocol import PROTOCOL_SEED, protocol_split, sample_single_positive
from spml.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_dataset, render_scene
from spml.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, strong_transform, weak_transform
from spml.data.writer import Row, write_dataset

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PROTOCOL_SEED",
    "SYNTHETIC_CLASSES",
    "Dataset",
    "DatasetError",
    "ImageDataset",
    "ImageLoadError",
    "Row",
    "Split",
    "eval_transform",
    "load_dataset",
    "load_image",
    "make_synthetic_dataset",
    "protocol_split",
    "render_scene",
    "sample_single_positive",
    "strong_transform",
    "weak_transform",
    "write_dataset",
]
