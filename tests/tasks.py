"""Task factories for command-line tests (``--task tests.tasks:<name>``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from automl.models import ResNet
from automl.task import Task


def _loaders(n: int = 48, batch: int = 24) -> dict[str, DataLoader]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return {k: DataLoader(TensorDataset(x, y), batch_size=batch) for k in ("train", "calib", "val", "test")}


def tiny() -> Task:
    torch.manual_seed(0)
    model = ResNet(8, width=4).eval()
    loaders = _loaders()
    return Task(model, torch.zeros(1, 1, 28, 28), loaders["train"], loaders["calib"], loaders["val"], loaders["test"], name="tiny")


def no_layers() -> Task:
    loaders = _loaders()
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Task(model, torch.zeros(1, 1, 28, 28), loaders["train"], loaders["calib"], loaders["val"], loaders["test"],
                metric=lambda out, y: 0.0)


def empty_val() -> Task:
    loaders = _loaders()
    empty = DataLoader(TensorDataset(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)), batch_size=4)
    return Task(ResNet(8, width=4).eval(), torch.zeros(1, 1, 28, 28), loaders["train"], loaders["calib"], empty, loaders["test"])


def wrong_type() -> str:
    return "not a task"


def broken() -> Task:
    raise RuntimeError("the data directory is missing")


def no_batchnorm() -> Task:
    """A small CNN without BatchNorm: nothing to calibrate data-free from."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()
    loaders = _loaders()
    return Task(model, torch.zeros(1, 1, 28, 28), loaders["train"], loaders["calib"], loaders["val"], loaders["test"],
                name="no_batchnorm")
