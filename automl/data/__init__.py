"""Image datasets of the reference tasks: MNIST (shipped), Fashion-MNIST and CIFAR-10 (read from disk).

Each dataset is split once and for all into ``train`` / ``calib`` / ``val`` / ``test`` by a
stratified draw with a fixed seed, so every process on every machine sees the same images.
"""

from automl.data.mnist import (
    IMAGE_SHAPE,
    MNIST_MEAN,
    MNIST_STD,
    NUM_CLASSES,
    SPLIT_NAMES,
    SPLIT_SIZES,
    Splits,
    mnist_loaders,
    mnist_splits,
    split_indices,
)

__all__ = [
    "IMAGE_SHAPE",
    "MNIST_MEAN",
    "MNIST_STD",
    "NUM_CLASSES",
    "SPLIT_NAMES",
    "SPLIT_SIZES",
    "Splits",
    "mnist_loaders",
    "mnist_splits",
    "split_indices",
]
