"""Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017; MIT licence) from its standard IDX files.

Where the files come from, first match wins: the ``data_dir`` argument (``--data-dir``), the
environment variable ``AUTOML_FASHION_MNIST_DIR``, then ``/usr/share/datasets/fashion-mnist``
(Debian's package ``dataset-fashion-mnist``, which ``make`` and CI install where apt is available).
The directory holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally gzipped. Nothing is
downloaded.

The split is fixed: 100 images per class for calibration and 400 for validation are held out of
the 60,000 training images (seed 0), the other 55,000 train, and the 10,000 test images are the
test split.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from pathlib import Path

import numpy as np

from automl.data.images import ArraySplits, Augment, holdout_splits
from automl.errors import DataError

NAME = "fashion_mnist"
ENV_VAR = "AUTOML_FASHION_MNIST_DIR"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MEAN = (0.2860,)
STD = (0.3530,)
IMAGE_SHAPE = (1, 28, 28)
HELD_OUT_PER_CLASS = {"calib": 100, "val": 400}
TRAIN_AUGMENT = Augment(pad=2, flip=True)
SPLIT_SEED = 0
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_HOW = (
    f"Install Debian's package dataset-fashion-mnist (it fills {SYSTEM_DIR}), or name a directory holding "
    f"{', '.join(FILES.values())} (each optionally .gz) with --data-dir DIR or the environment variable {ENV_VAR}."
)


def find_source(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The directory of IDX files to read (see the module docstring for the order).

    Raises:
        DataError: if the named directory does not exist, or none is named and none is installed.
    """
    named = data_dir if data_dir is not None else os.environ.get(ENV_VAR) or None
    if named is not None:
        path = Path(named).expanduser()
        if not path.is_dir():
            origin = "--data-dir" if data_dir is not None else ENV_VAR
            raise DataError(f"Fashion-MNIST {origin}={str(path)!r} is not a directory. {_HOW}")
        return path.resolve()
    if SYSTEM_DIR.is_dir():
        return SYSTEM_DIR
    raise DataError(f"Fashion-MNIST was not found. {_HOW}")


def _idx_file(directory: Path, stem: str) -> Path:
    for name in (stem, f"{stem}.gz"):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"Fashion-MNIST directory {directory} has no {stem} (or {stem}.gz). {_HOW}")


def parse_idx(data: bytes, where: str) -> np.ndarray:
    """An IDX file's array (the format of MNIST and Fashion-MNIST: magic, dimensions, uint8 data)."""
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{where} is not an IDX file of unsigned bytes (magic 0x0000080N); {_HOW}")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise DataError(f"{where} holds {len(data) - header} bytes of data for a declared shape {shape}; it is truncated.")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _read(directory: Path) -> tuple[dict[str, np.ndarray], str]:
    digest = hashlib.sha256()
    arrays = {}
    for key, stem in FILES.items():
        path = _idx_file(directory, stem)
        raw = path.read_bytes()
        try:
            data = gzip.decompress(raw) if path.suffix == ".gz" else raw
        except (OSError, EOFError) as exc:
            raise DataError(f"{path} could not be decompressed ({exc}); {_HOW}") from exc
        digest.update(stem.encode() + b"\0" + hashlib.sha256(data).digest())
        arrays[key] = parse_idx(data, str(path))
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE[1:] or labels.shape != (len(images),):
            raise DataError(
                f"Fashion-MNIST {split} files in {directory} hold images {images.shape} and labels {labels.shape}; "
                "expected (N, 28, 28) images and N labels."
            )
        arrays[f"{split}_x"] = images[:, None]
        arrays[f"{split}_y"] = labels.astype(np.int64)
    return arrays, digest.hexdigest()


@functools.lru_cache(maxsize=2)
def _splits(source: Path, split_seed: int) -> ArraySplits:
    arrays, sha = _read(source)
    return holdout_splits(NAME, arrays, sha, HELD_OUT_PER_CLASS, split_seed, MEAN, STD, TRAIN_AUGMENT)


def fashion_mnist_splits(data_dir: str | os.PathLike[str] | None = None, split_seed: int = SPLIT_SEED) -> ArraySplits:
    """The fixed Fashion-MNIST split (55,000 / 1,000 / 4,000 / 10,000 images); read once per process.

    Raises:
        DataError: if the IDX files are missing or malformed.
    """
    return _splits(find_source(data_dir), split_seed)
