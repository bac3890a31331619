from __future__ import annotations

from pathlib import Path

import pytest
import torch

import automl.reference.checkpoints as reference
from automl.errors import ConfigError
from automl.evaluation.task import Task
from automl.reference.checkpoints import (
    checkpoint_path,
    default_cache_dir,
    load_reference,
    random_shift,
    reference_task,
    train_reference,
)
from automl.reference.models import PlainCNN

TINY = {"arch": "plaincnn", "epochs": 1, "max_train_batches": 2, "log": None}


@pytest.fixture
def train_calls(monkeypatch):
    """Counts real trainings while letting them run."""
    calls = []
    original = reference._train

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(reference, "_train", counting)
    return calls


def test_tiny_training_saves_a_loadable_checkpoint(tmp_path, train_calls):
    path = train_reference(cache_dir=tmp_path, **TINY)
    assert path == tmp_path / "plaincnn-seed0.pt" and len(train_calls) == 1
    checkpoint = torch.load(path, weights_only=True)
    for key in ("state_dict", "arch", "val_accuracy", "test_accuracy", "epochs", "seed", "torch_version"):
        assert key in checkpoint, key
    assert checkpoint["arch"] == "plaincnn" and checkpoint["epochs"] == 1 and checkpoint["seed"] == 0
    assert 0.0 <= checkpoint["val_accuracy"] <= 1.0 and 0.0 <= checkpoint["test_accuracy"] <= 1.0
    assert checkpoint["torch_version"] == torch.__version__
    assert [p.name for p in tmp_path.iterdir()] == ["plaincnn-seed0.pt"]  # no temporary file left behind

    model, meta = load_reference("plaincnn", cache_dir=tmp_path, log=None)
    assert len(train_calls) == 1, "load_reference retrained although a checkpoint was cached"
    assert isinstance(model, PlainCNN) and not model.training
    assert meta["path"] == path and "state_dict" not in meta
    assert meta["val_accuracy"] == checkpoint["val_accuracy"]
    assert all(torch.equal(v, checkpoint["state_dict"][k]) for k, v in model.state_dict().items())


def test_train_reference_reuses_a_matching_checkpoint(tmp_path, train_calls):
    lines = []
    first = train_reference(cache_dir=tmp_path, **{**TINY, "log": lines.append})
    again = train_reference(cache_dir=tmp_path, **{**TINY, "log": lines.append})
    assert first == again and len(train_calls) == 1
    assert "using cached checkpoint" in lines[-1]


def test_train_reference_retrains_on_other_settings_or_force(tmp_path, train_calls):
    train_reference(cache_dir=tmp_path, **TINY)
    lines = []
    train_reference(cache_dir=tmp_path, **{**TINY, "max_train_batches": 1, "log": lines.append})
    assert len(train_calls) == 2 and "does not match" in lines[0]
    assert torch.load(checkpoint_path("plaincnn", 0, tmp_path), weights_only=True)["max_train_batches"] == 1
    train_reference(cache_dir=tmp_path, force=True, **{**TINY, "max_train_batches": 1})
    assert len(train_calls) == 3


def test_training_is_reproducible(tmp_path):
    a = torch.load(train_reference(cache_dir=tmp_path / "a", **TINY), weights_only=True)
    b = torch.load(train_reference(cache_dir=tmp_path / "b", **TINY), weights_only=True)
    c = torch.load(train_reference(cache_dir=tmp_path / "c", seed=1, **TINY), weights_only=True)
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
    assert not torch.equal(a["state_dict"]["fc2.weight"], c["state_dict"]["fc2.weight"])


def test_load_reference_trains_when_missing(tmp_path, train_calls, monkeypatch):
    monkeypatch.setitem(reference.DEFAULT_EPOCHS, "plaincnn", 1)
    monkeypatch.setattr(reference, "BATCH_SIZE", 1000)  # 3 batches: keeps the default-settings run tiny
    model, meta = load_reference("plaincnn", seed=2, cache_dir=tmp_path, log=None)
    assert len(train_calls) == 1 and meta["seed"] == 2 and meta["epochs"] == 1
    assert (tmp_path / "plaincnn-seed2.pt").is_file()


def test_load_reference_without_training(tmp_path):
    with pytest.raises(ConfigError, match="no readable reference checkpoint for resnet8 seed 0.*train_reference"):
        load_reference("resnet8", cache_dir=tmp_path, train_if_missing=False)


def test_corrupt_checkpoint_is_retrained(tmp_path, train_calls, monkeypatch):
    monkeypatch.setitem(reference.DEFAULT_EPOCHS, "plaincnn", 1)
    monkeypatch.setattr(reference, "BATCH_SIZE", 1000)
    checkpoint_path("plaincnn", 0, tmp_path).parent.mkdir(parents=True, exist_ok=True)
    checkpoint_path("plaincnn", 0, tmp_path).write_bytes(b"not a checkpoint")
    lines = []
    load_reference("plaincnn", cache_dir=tmp_path, log=lines.append)
    assert len(train_calls) == 1 and any("unreadable" in line for line in lines)


def test_interrupted_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = train_reference(cache_dir=tmp_path, **TINY)
    good = path.read_bytes()

    def interrupted_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        train_reference(cache_dir=tmp_path, force=True, **TINY)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_threads_are_set_and_restored(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    seen = []
    original = reference._train

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(reference, "_train", spy)
    path = train_reference(cache_dir=tmp_path, threads=1, **TINY)
    assert seen == [1] and torch.get_num_threads() == before
    assert torch.load(path, weights_only=True)["threads"] == 1


@pytest.mark.parametrize("call", [train_reference, load_reference, reference_task, checkpoint_path])
def test_unknown_arch_lists_the_known_ones(call, tmp_path):
    with pytest.raises(
        ConfigError, match=r"unknown reference architecture 'resnet18'.*'plaincnn', 'resnet20', 'resnet8'"
    ):
        call("resnet18", cache_dir=tmp_path)


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"threads": 0}, {"max_train_batches": -1}, {"epochs": 1.5}])
def test_bad_training_settings(tmp_path, bad):
    settings = {**TINY, **bad}
    with pytest.raises(ConfigError, match="must be a positive integer"):
        train_reference(cache_dir=tmp_path, **settings)


def test_reference_task(tmp_path):
    train_reference(cache_dir=tmp_path, **TINY)
    task = reference_task("plaincnn", cache_dir=tmp_path, batch_size=100, log=None)
    assert isinstance(task, Task) and task.name == "mnist-plaincnn-seed0"
    assert task.sample_input.shape == (1, 1, 28, 28) and not task.model.training
    assert len(task.val_loader) == 8 and len(task.train_loader) == 30


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOML_CACHE_DIR", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    assert checkpoint_path("resnet8", 3) == tmp_path / "cache" / "resnet8-seed3.pt"
    monkeypatch.delenv("AUTOML_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "automl-mpq"
    repo = Path(reference.__file__).resolve().parents[1]
    assert repo not in default_cache_dir().resolve().parents


def test_random_shift_moves_each_image_by_at_most_two_pixels():
    images = torch.full((64, 1, 28, 28), -0.1307 / 0.3081)
    images[:, 0, 14, 14] = 5.0
    shifted = random_shift(images, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    offsets = set()
    for image in shifted:
        ((row, col),) = (image[0] == 5.0).nonzero().tolist()
        assert abs(row - 14) <= 2 and abs(col - 14) <= 2
        offsets.add((row, col))
        assert torch.allclose(image[0].sum(), images[0, 0].sum())
    assert len(offsets) > 10  # per-image offsets, not one per batch


def test_random_shift_is_seeded():
    images = torch.randn(8, 1, 28, 28)
    a = random_shift(images, 2, torch.Generator().manual_seed(1))
    b = random_shift(images, 2, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert torch.equal(random_shift(images, 0, torch.Generator()), images)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet8", "resnet20"])
def test_default_reference_is_accurate(arch):
    """Trains (or loads) the real references into the default cache; minutes on first run."""
    _model, meta = load_reference(arch)
    assert meta["test_accuracy"] >= 0.97 and meta["val_accuracy"] >= 0.97


def test_bad_seed(tmp_path):
    with pytest.raises(ConfigError, match="seed must be a non-negative integer, got -1"):
        checkpoint_path("resnet8", -1, tmp_path)
