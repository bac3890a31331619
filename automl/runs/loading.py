"""Turning a task string from the command line or a config file into a :class:`Task`."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from automl.errors import AutoMLError, TaskError
from automl.evaluation.task import Task
from automl.reference.models import REFERENCE_MODELS

GRAMMAR = ("'reference:<arch>' (MNIST: resnet8, resnet20), 'reference:<dataset>/<arch>' (fashion_mnist/resnet8, "
           "cifar10/resnet20, ...) or 'package.module:function' (a function returning automl.Task)")


def reference_names() -> list[str]:
    """Every ``reference:...`` task name."""
    from automl.reference.recipes import RECIPES

    return [f"reference:{k}" for k in REFERENCE_MODELS if k != "plaincnn"] + [f"reference:{d}/{a}" for d, a in RECIPES]


def check_task_data(spec: str, data_dir: str | None = None) -> None:
    """A reference task's dataset is where it is looked for (cheap: no decoding, no torch work).

    Raises:
        DataError: the named directory does not exist, or the dataset is found nowhere.
    """
    module_name, _, attr = spec.partition(":")
    dataset = attr.rpartition("/")[0] if module_name == "reference" else ""
    if dataset == "cifar10":
        from automl.data.cifar10 import find_source
    elif dataset == "fashion_mnist":
        from automl.data.fashion_mnist import find_source
    else:
        return
    find_source(data_dir or None)


def load_task(spec: str, threads: int | None = None, data_dir: str | None = None) -> Task:
    """Build the task named by ``spec``.

    ``reference:<arch>`` is the built-in MNIST task, ``reference:<dataset>/<arch>`` a reference
    network on Fashion-MNIST or CIFAR-10 (shipped, or trained and cached on first use; the data is
    read from disk, see :mod:`automl.data`); ``package.module:function`` imports ``function`` (the
    current directory is importable) and calls it with no arguments; it must return an
    :class:`automl.Task`. ``data_dir`` is where a reference task's dataset is (``--data-dir``).
    """
    if ":" not in spec:
        raise TaskError(f"task {spec!r} is not of the form {GRAMMAR}")
    module_name, attr = spec.split(":", 1)
    if module_name == "reference":
        if spec not in reference_names():
            raise TaskError(f"unknown reference task {spec!r}; known ones are {reference_names()}")
        from automl.reference.checkpoints import reference_task

        dataset, _, arch = attr.rpartition("/")
        return reference_task(arch, threads=threads, dataset=dataset or "mnist", data_dir=data_dir or None)
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to fix
        raise TaskError(
            f"could not import {module_name!r} for task {spec!r} ({type(exc).__name__}: {exc}). "
            f"Check the module path; it must be importable from the current directory or the environment."
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TaskError(f"{module_name!r} has no callable {attr!r}; task {spec!r} must name a function returning automl.Task")
    try:
        task = factory()
    except AutoMLError:
        raise  # already says what is wrong (an empty loader, a bad model, ...)
    except Exception as exc:  # noqa: BLE001
        raise TaskError(f"task factory {spec!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(task, Task):
        raise TaskError(
            f"task factory {spec!r} returned {type(task).__name__}; it must return automl.Task(model, sample_input, "
            "train_loader, calib_loader, val_loader, test_loader, metric)"
        )
    return task
