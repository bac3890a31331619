"""CIFAR-10 from a directory or archive the user names, decoded once into the user cache.

Where the data comes from, first match wins:

1. the ``data_dir`` argument (``--data-dir`` on the command line);
2. the environment variable ``AUTOML_CIFAR10_DIR``;
3. the project's benchmark copy, ``../shared/datasets/cifar10-jpeg-q75.tar.xz`` beside a source
   checkout (JPEG at quality 75: accuracies on it are close to, not equal to, published ones).

Each may be a directory in the torchvision ``cifar-10-batches-py`` format (``data_batch_1`` ..
``data_batch_5``, ``test_batch``; or its parent), a directory in the ``ImageFolder`` layout
(``train/<class>/*.png|jpg`` and ``test/<class>/*.png|jpg``, classes sorted by name), or a
``.tar``/``.tar.gz``/``.tar.xz`` archive holding either. Nothing is downloaded.

The decoded images are kept as ``cifar10-<fingerprint>.npz`` in the user cache (uint8, with the
sha256 of what was read), so a later run reads one file. The split is fixed: 100 images per
class for calibration and 400 for validation are held out of the original training set (seed
0), the other 45,000 train, and the original 10,000 test images are the test split.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from automl.data.images import (
    ArraySplits,
    Augment,
    file_digest,
    holdout_splits,
    listing_digest,
    read_cached,
    write_cached,
)
from automl.errors import DataError
from automl.paths import default_cache_dir

NAME = "cifar10"
ENV_VAR = "AUTOML_CIFAR10_DIR"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
IMAGE_SHAPE = (3, 32, 32)
HELD_OUT_PER_CLASS = {"calib": 100, "val": 400}
TRAIN_AUGMENT = Augment(pad=4, flip=True)
SPLIT_SEED = 0
SHARED_ARCHIVE = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "cifar10-jpeg-q75.tar.xz"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_EXPECTED = (
    "a directory in the torchvision cifar-10-batches-py format (data_batch_1 .. data_batch_5 and test_batch), "
    "a directory in the ImageFolder layout (train/<class>/*.png|jpg and test/<class>/*.png|jpg, 10 classes of "
    "32x32 images), or a .tar/.tar.gz/.tar.xz archive of either"
)


def find_source(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The CIFAR-10 source to read (see the module docstring for the order).

    Raises:
        DataError: if the named path does not exist, or nothing was named and no copy is found.
    """
    named = data_dir if data_dir is not None else os.environ.get(ENV_VAR) or None
    if named is not None:
        path = Path(named).expanduser()
        if not path.exists():
            origin = "--data-dir" if data_dir is not None else ENV_VAR
            raise DataError(f"CIFAR-10 data {origin}={str(path)!r} does not exist; expected {_EXPECTED}.")
        return path.resolve()
    if SHARED_ARCHIVE.is_file():
        return SHARED_ARCHIVE
    raise DataError(
        f"CIFAR-10 was not found: expected {_EXPECTED}. Nothing is downloaded: name a copy with --data-dir DIR or "
        f"the environment variable {ENV_VAR}."
    )


def _decode_image(data: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"CIFAR-10 image {where} could not be decoded ({exc}); expected a 32x32 PNG or JPEG.") from exc
    if pixels.shape != (32, 32, 3):
        raise DataError(f"CIFAR-10 image {where} is {pixels.shape[1]}x{pixels.shape[0]}; expected 32x32 pixels.")
    return pixels.transpose(2, 0, 1)


def _unpickle_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = pickle.loads(data, encoding="bytes")  # noqa: S301 - the torchvision format is a pickle by definition
        images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, *IMAGE_SHAPE)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as exc:
        raise DataError(
            f"CIFAR-10 batch file {where} is not a cifar-10-batches-py pickle ({type(exc).__name__}: {exc}); "
            f"expected {_EXPECTED}."
        ) from exc
    if len(images) != len(labels):
        raise DataError(f"CIFAR-10 batch file {where} holds {len(images)} images but {len(labels)} labels.")
    return images, labels


class _Collected:
    """Images and labels per split, gathered from files in any order, then put in a fixed order."""

    def __init__(self) -> None:
        self.folder: dict[str, dict[str, list[tuple[str, bytes]]]] = {"train": {}, "test": {}}
        self.batches: dict[str, bytes] = {}

    def add(self, relpath: str, read: callable) -> None:  # type: ignore[valid-type]
        parts = relpath.strip("/").split("/")
        if parts[-1] in (*_BATCHES, "test_batch"):
            self.batches[parts[-1]] = read()
            return
        if len(parts) >= 3 and parts[-3] in self.folder and parts[-1].lower().endswith(_IMAGE_SUFFIXES):
            self.folder[parts[-3]].setdefault(parts[-2], []).append((parts[-1], read()))

    def arrays(self, where: str) -> dict[str, np.ndarray]:
        if all(name in self.batches for name in (*_BATCHES, "test_batch")):
            train = [_unpickle_batch(self.batches[name], name) for name in _BATCHES]
            test_x, test_y = _unpickle_batch(self.batches["test_batch"], "test_batch")
            train_x = np.concatenate([x for x, _ in train])
            train_y = np.concatenate([y for _, y in train])
        elif self.folder["train"] and self.folder["test"]:
            classes = sorted(self.folder["train"])
            if sorted(self.folder["test"]) != classes or len(classes) != len(CLASSES):
                raise DataError(
                    f"CIFAR-10 in {where}: train has classes {classes} and test {sorted(self.folder['test'])}; "
                    f"expected the same {len(CLASSES)} class folders in both."
                )
            train_x, train_y = self._folder_split("train", classes)
            test_x, test_y = self._folder_split("test", classes)
        else:
            missing = [name for name in (*_BATCHES, "test_batch") if name not in self.batches]
            raise DataError(
                f"no CIFAR-10 found in {where}: expected {_EXPECTED}. Found {len(self.batches)} batch files "
                f"(missing {missing}) and image folders for splits "
                f"{[split for split, folders in self.folder.items() if folders]}."
            )
        if len(np.unique(train_y)) != len(CLASSES):
            raise DataError(f"CIFAR-10 in {where} has labels {sorted(np.unique(train_y))}; expected 10 classes 0..9.")
        return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}

    def _folder_split(self, split: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for label, cls in enumerate(classes):
            for name, data in sorted(self.folder[split][cls]):
                images.append(_decode_image(data, f"{split}/{cls}/{name}"))
                labels.append(label)
        return np.stack(images), np.asarray(labels, dtype=np.int64)


def _walk(root: Path) -> Iterator[Path]:
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in sorted(files):
            yield Path(directory) / name


def _read_source(source: Path) -> tuple[dict[str, np.ndarray], str]:
    """Decode ``source`` into the four arrays, and the sha256 of what was read."""
    collected = _Collected()
    if source.is_dir():
        digest = hashlib.sha256()
        for path in _walk(source):
            relpath = path.relative_to(source).as_posix()
            data = path.read_bytes()
            digest.update(relpath.encode() + b"\0" + hashlib.sha256(data).digest())
            collected.add(relpath, lambda data=data: data)
        return collected.arrays(str(source)), digest.hexdigest()
    try:
        with tarfile.open(source, mode="r:*") as archive:
            for member in archive:
                if member.isfile():
                    handle = archive.extractfile(member)
                    if handle is not None:
                        collected.add(member.name, handle.read)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"CIFAR-10 archive {source} could not be read ({exc}); expected {_EXPECTED}.") from exc
    return collected.arrays(str(source)), file_digest(source)


def _fingerprint(source: Path) -> str:
    if source.is_dir():
        return listing_digest(_walk(source), source)
    stat = source.stat()
    return hashlib.sha256(f"{source}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()


_KEYS = ("train_x", "train_y", "test_x", "test_y", "source_sha256")


def read_arrays(source: Path, cache_dir: Path | None = None) -> tuple[dict[str, np.ndarray], str]:
    """The original train and test arrays of ``source`` and its content sha256, decoded once per
    machine: the copy in the cache is keyed by the source's path, sizes and modification times."""
    cache = (cache_dir or default_cache_dir()) / f"{NAME}-{_fingerprint(source)[:16]}.npz"
    stored = read_cached(cache, _KEYS)
    if stored is not None:
        return {key: stored[key] for key in _KEYS[:4]}, str(stored["source_sha256"])
    arrays, sha = _read_source(source)
    write_cached(cache, {**arrays, "source_sha256": np.array(sha)})
    return arrays, sha


@functools.lru_cache(maxsize=2)
def _splits(source: Path, split_seed: int) -> ArraySplits:
    arrays, sha = read_arrays(source)
    return holdout_splits(NAME, arrays, sha, HELD_OUT_PER_CLASS, split_seed, MEAN, STD, TRAIN_AUGMENT)


def cifar10_splits(data_dir: str | os.PathLike[str] | None = None, split_seed: int = SPLIT_SEED) -> ArraySplits:
    """The fixed CIFAR-10 split (45,000 / 1,000 / 4,000 / 10,000 images) of the source found by
    :func:`find_source`; read once per process.

    Raises:
        DataError: if no source is found or it is not CIFAR-10 in a known layout.
    """
    return _splits(find_source(data_dir), split_seed)
