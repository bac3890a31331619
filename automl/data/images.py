"""Pieces every image dataset of the reference tasks shares: a fixed stratified split, uint8 arrays
normalised batch by batch, the standard augmentations, and a decoded copy kept once per machine.

Images are held as ``uint8`` arrays in (N, C, H, W) layout; a batch is turned into float32 and
normalised with the dataset's per-channel mean and standard deviation only when it is drawn, so a
45,000-image training split costs 138 MB of memory instead of 553 MB.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from automl.errors import ConfigError, DataError

SPLIT_NAMES = ("train", "calib", "val", "test")


def stratified_holdout(labels: np.ndarray, per_class: Mapping[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Deal ``per_class[name]`` images of every class into each named part; the rest is ``train``.

    Each class is permuted on its own by a NumPy ``Generator`` (PCG64) seeded with ``seed``, so
    the split is the same on every machine; each part is then permuted so classes interleave.

    Raises:
        ConfigError: if ``seed`` is not a non-negative integer.
        DataError: if a class has too few images to fill its share of the held-out parts.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"the split seed must be a non-negative integer, got {seed!r}; pass e.g. seed=0.")
    rng = np.random.default_rng(seed)
    names = [*per_class, "train"]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    need = sum(per_class.values())
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        if len(members) <= need:
            raise DataError(
                f"class {cls} has {len(members)} training images; the held-out parts {dict(per_class)} need more "
                f"than {need} per class. Expected the full training set of the dataset."
            )
        start = 0
        for name, count in per_class.items():
            parts[name].append(members[start : start + count])
            start += count
        parts["train"].append(members[start:])
    return {name: rng.permutation(np.concatenate(parts[name])) for name in names}


def random_crop_flip(images: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Pad by ``pad`` pixels (zeros after normalisation: the mean colour), crop back at a random
    offset per image, and mirror half of the images left-right when ``flip`` is set."""
    batch, channels, height, width = images.shape
    if pad:
        padded = torch.nn.functional.pad(images, (pad,) * 4)
        offsets = torch.randint(0, 2 * pad + 1, (2, batch), generator=generator, device=generator.device)
        rows = (offsets[0, :, None] + torch.arange(height, device=images.device))[:, None, :, None]
        cols = (offsets[1, :, None] + torch.arange(width, device=images.device))[:, None, None, :]
        samples = torch.arange(batch, device=images.device)[:, None, None, None]
        chans = torch.arange(channels, device=images.device)[None, :, None, None]
        images = padded[samples, chans, rows, cols]
    if flip:
        mirror = torch.rand(batch, generator=generator, device=generator.device) < 0.5
        images = torch.where(mirror[:, None, None, None].to(images.device), images.flip(3), images)
    return images


@dataclass(frozen=True)
class Augment:
    """Random crop after zero padding (``pad`` pixels) and optional horizontal flip."""

    pad: int = 0
    flip: bool = False


class ImageArray(Dataset):
    """A labelled uint8 image array, normalised when a batch is drawn (optionally augmented).

    ``DataLoader`` fetches whole batches through :meth:`__getitems__`, so a batch is one
    vectorised gather, conversion and normalisation rather than one Python call per image.

    Args:
        images: uint8 array of shape (N, C, H, W).
        labels: integer labels of shape (N,).
        mean, std: per-channel normalisation, in units of the [0, 1] pixel range.
        augment: applied to every drawn batch when given (training loaders only).
        seed: seed of the augmentation's generator.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Augment | None = None,
        seed: int = 0,
    ) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise DataError(
                f"expected uint8 images of shape (N, C, H, W) and N labels, got {images.dtype} {images.shape} "
                f"and {len(labels)} labels"
            )
        with warnings.catch_warnings():  # the split's arrays are read-only on purpose; nothing here writes them
            warnings.simplefilter("ignore", UserWarning)
            self.images = torch.from_numpy(np.ascontiguousarray(images))
            self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        channels = images.shape[1]
        self._mean = torch.tensor(mean, dtype=torch.float32).reshape(1, channels, 1, 1) * 255.0
        self._inv_std = 1.0 / (torch.tensor(std, dtype=torch.float32).reshape(1, channels, 1, 1) * 255.0)
        self.augment = augment
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised (and, for a training array, augmented) images at ``index`` and their labels."""
        index = torch.as_tensor(index, dtype=torch.long)
        images = (self.images[index].float() - self._mean) * self._inv_std
        if self.augment is not None:
            images = random_crop_flip(images, self.augment.pad, self.augment.flip, self._generator)
        return images, self.labels[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.batch([index])
        return images[0], labels[0]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch(indices)


def _whole_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


def array_loader(dataset: ImageArray, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` that draws whole batches (see :class:`ImageArray`)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}; pass e.g. batch_size=250.")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=_whole_batch)


@dataclass(frozen=True, eq=False)
class ArraySplits:
    """The four splits of one image dataset, as uint8 arrays with their labels.

    Attributes:
        name: the dataset's name (``cifar10``, ``fashion_mnist``).
        images: uint8 (N, C, H, W) per split name.
        labels: int64 (N,) per split name.
        mean, std: per-channel normalisation of the [0, 1] pixel range.
        source_sha256: sha256 of what was read from disk (archive bytes or every file in order).
        augment: the training augmentation of the dataset.
    """

    name: str
    images: Mapping[str, np.ndarray] = field(repr=False)
    labels: Mapping[str, np.ndarray] = field(repr=False)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source_sha256: str
    augment: Augment

    def dataset(self, split: str, augment: bool = False, seed: int = 0) -> ImageArray:
        """One split as an :class:`ImageArray`; ``augment`` applies the dataset's training augmentation."""
        if split not in SPLIT_NAMES:
            raise ConfigError(f"unknown split {split!r}; expected one of {list(SPLIT_NAMES)}.")
        return ImageArray(
            self.images[split], self.labels[split], self.mean, self.std, self.augment if augment else None, seed
        )

    def loaders(self, batch_size: int = 250, seed: int = 0, augment_train: bool = True) -> dict[str, DataLoader]:
        """Loaders keyed ``train`` (shuffled from ``seed``; augmented unless told not), ``calib``, ``val``, ``test``."""
        out = {name: array_loader(self.dataset(name), batch_size) for name in SPLIT_NAMES if name != "train"}
        out["train"] = array_loader(self.dataset("train", augment_train, seed), batch_size, shuffle=True, seed=seed)
        return {name: out[name] for name in SPLIT_NAMES}

    def digest(self) -> str:
        """sha256 of every split's images, labels and order: what a reference network is scored on."""
        digest = hashlib.sha256(self.source_sha256.encode())
        for name in SPLIT_NAMES:
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(self.images[name]).tobytes())
            digest.update(np.asarray(self.labels[name], dtype=np.int64).tobytes())
        return digest.hexdigest()


def holdout_splits(
    name: str,
    arrays: Mapping[str, np.ndarray],
    source_sha256: str,
    per_class: Mapping[str, int],
    split_seed: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augment: Augment,
) -> ArraySplits:
    """The four splits of a dataset given as original ``train_x``/``train_y``/``test_x``/``test_y``
    arrays: ``per_class`` images of each class held out of the training set (see
    :func:`stratified_holdout`), the original test set as ``test``. The arrays are read-only."""
    parts = stratified_holdout(arrays["train_y"], per_class, split_seed)
    images = {part: arrays["train_x"][idx] for part, idx in parts.items()}
    labels = {part: arrays["train_y"][idx] for part, idx in parts.items()}
    images["test"], labels["test"] = arrays["test_x"], arrays["test_y"]
    for array in (*images.values(), *labels.values()):
        array.setflags(write=False)
    return ArraySplits(name, images, labels, mean, std, source_sha256, augment)


def read_cached(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The arrays of a decoded copy, or ``None`` when it is missing, unreadable or lacks a key."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {key: stored[key] for key in keys}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def write_cached(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Keep a decoded copy, whole or not at all (a concurrent reader never sees half a file);
    a cache directory that cannot be written only costs decoding again next time."""
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def file_digest(path: Path) -> str:
    """sha256 of one file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def listing_digest(files: Iterator[Path] | Sequence[Path], root: Path) -> str:
    """A cheap fingerprint of a directory tree: each file's relative path, size and mtime."""
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
