"""Training recipes of the reference networks on Fashion-MNIST and CIFAR-10, resumable by epoch.

A recipe is SGD with Nesterov momentum 0.9 and weight decay, a learning rate that follows a
cosine from its peak to zero step by step, and the dataset's standard augmentation (random crop
after padding, horizontal flip; :mod:`automl.data.images`). Training runs on the split's
``train`` part only; ``val`` is scored after every epoch for the log and ``test`` once at the end.

After every epoch the whole state (weights, optimizer, schedule, both random generators, the
log) is written atomically to ``<checkpoint>.partial``; a run that is interrupted and started
again with the same settings continues from the last finished epoch and ends with the same
weights as one that was never interrupted. The ResNet-20 on CIFAR-10 takes hours on two CPU cores.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from automl.data.images import ArraySplits, array_loader
from automl.reference.models import build_reference_model

Log = Callable[[str], None]
DATASETS = ("mnist", "fashion_mnist", "cifar10")
IN_CHANNELS = {"mnist": 1, "fashion_mnist": 1, "cifar10": 3}


@dataclass(frozen=True)
class Recipe:
    """How one reference network is trained."""

    epochs: int
    batch_size: int = 128
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    channels_last: bool = True


RECIPES: dict[tuple[str, str], Recipe] = {
    ("fashion_mnist", "resnet8"): Recipe(epochs=20),
    ("fashion_mnist", "resnet20"): Recipe(epochs=20),
    ("cifar10", "resnet20"): Recipe(epochs=80),
    ("cifar10", "mobilenetv2"): Recipe(epochs=60),
}


def splits_of(dataset: str, data_dir: str | Path | None = None) -> ArraySplits:
    """The fixed split of ``dataset`` (read from ``data_dir`` or where the dataset module looks)."""
    if dataset == "cifar10":
        from automl.data.cifar10 import cifar10_splits

        return cifar10_splits(data_dir)
    from automl.data.fashion_mnist import fashion_mnist_splits

    return fashion_mnist_splits(data_dir)


def accuracy(model: nn.Module, splits: ArraySplits, split: str, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on one split, in eval mode."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in array_loader(splits.dataset(split), batch_size):
            correct += int((model(images).argmax(1) == labels).sum())
    return correct / len(splits.labels[split])


def save_atomic(checkpoint: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; a cache file should read like any other
        with os.fdopen(handle, "wb") as tmp:
            torch.save(checkpoint, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def train_on_arrays(
    dataset: str,
    arch: str,
    seed: int,
    splits: ArraySplits,
    partial: Path,
    epochs: int | None = None,
    max_train_batches: int | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Train ``arch`` on ``splits`` by its recipe, resuming from ``partial`` when it matches.

    Returns:
        The checkpoint: ``state_dict``, accuracies, the recipe and what it was trained on.
    """
    recipe = RECIPES[(dataset, arch)]
    epochs = recipe.epochs if epochs is None else epochs
    settings = {"dataset": dataset, "arch": arch, "seed": seed, "epochs": epochs, "max_train_batches": max_train_batches,
                "recipe": asdict(recipe), "data_sha256": splits.digest()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_reference_model(arch, IN_CHANNELS[dataset])
    memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    dataset_train = splits.dataset("train", augment=True, seed=seed)
    loader = array_loader(dataset_train, recipe.batch_size, shuffle=True, seed=seed)
    steps = len(loader) if max_train_batches is None else min(len(loader), max_train_batches)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.learning_rate, momentum=recipe.momentum,
                                nesterov=True, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps)
    history: list[dict[str, float]] = []
    start_epoch, elapsed = 1, 0.0
    state = _read_partial(partial)
    if state is not None and state["settings"] == settings:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        loader.generator.set_state(state["shuffle_rng"])
        dataset_train._generator.set_state(state["augment_rng"])
        history, elapsed = state["history"], state["elapsed"]
        start_epoch = len(history) + 1
        log(f"{dataset}/{arch}: resuming after epoch {len(history)} of {epochs} from {partial}")
    elif state is not None:
        log(f"{dataset}/{arch}: {partial} was trained with other settings; starting again")
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(start_epoch, epochs + 1):
        model.train()
        began, total_loss, correct, seen = time.perf_counter(), 0.0, 0, 0
        for step, (images, labels) in enumerate(loader):
            if step == steps:
                break
            outputs = model(images.contiguous(memory_format=memory_format))
            loss = loss_fn(outputs, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += float(loss.detach()) * len(labels)
            correct += int((outputs.argmax(1) == labels).sum())
            seen += len(labels)
        seconds = time.perf_counter() - began
        elapsed += seconds
        val = accuracy(model, splits, "val")
        history.append({"epoch": epoch, "loss": total_loss / seen, "train_accuracy": correct / seen,
                        "val_accuracy": val, "seconds": seconds})
        log(f"{dataset}/{arch} epoch {epoch}/{epochs}: loss {total_loss / seen:.4f}, train {correct / seen:.4f}, "
            f"val {val:.4f}, {seconds:.0f} s (lr {schedule.get_last_lr()[0]:.4f})")
        save_atomic({"settings": settings, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "schedule": schedule.state_dict(), "shuffle_rng": loader.generator.get_state(),
                      "augment_rng": dataset_train._generator.get_state(), "history": history, "elapsed": elapsed},
                     partial)
    model = model.to(memory_format=torch.contiguous_format).eval()
    state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
    return {
        "state_dict": state_dict, "arch": arch, "dataset": dataset, "seed": seed, "epochs": epochs,
        "max_train_batches": max_train_batches, "val_accuracy": accuracy(model, splits, "val"),
        "test_accuracy": accuracy(model, splits, "test"), "torch_version": str(torch.__version__),
        "train_seconds": elapsed, "batch_size": recipe.batch_size, "learning_rate": recipe.learning_rate,
        "weight_decay": recipe.weight_decay, "split_seed": 0, "data_sha256": settings["data_sha256"],
        "source_sha256": splits.source_sha256, "history": history,
    }


def _read_partial(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    with contextlib.suppress(Exception):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "settings" in state:
            return state
    return None
