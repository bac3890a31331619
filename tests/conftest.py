"""Shared fixtures: tiny models and tiny synthetic data so the suite runs in minutes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from automl.reference.models import PlainCNN, ResNet

torch.set_num_threads(1)


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics, as a trained network has."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


def make_loaders(n: int = 64, batch: int = 32, seed: int = 0) -> dict[str, DataLoader]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    ds = TensorDataset(x, y)
    return {k: DataLoader(ds, batch_size=batch) for k in ("train", "calib", "val", "test")}


@pytest.fixture
def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    return randomise_batchnorm(ResNet(8, width=4))


@pytest.fixture
def plain_cnn() -> nn.Module:
    torch.manual_seed(0)
    return randomise_batchnorm(PlainCNN(width=4))


@pytest.fixture
def tiny_task(tiny_resnet):
    from automl.evaluation.task import Task

    loaders = make_loaders()
    return Task(
        model=tiny_resnet,
        sample_input=torch.zeros(2, 1, 28, 28),
        train_loader=loaders["train"],
        calib_loader=loaders["calib"],
        val_loader=loaders["val"],
        test_loader=loaders["test"],
        name="tiny",
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
