"""Task factories for command-line tests (``--task tests.tasks:<name>``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from automl.evaluation.task import Task
from automl.reference.models import ResNet


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
    def zero(out: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return out.sum() * 0  # one output per sample: not class scores, so the task gives its own losses

    return Task(model, torch.zeros(1, 1, 28, 28), loaders["train"], loaders["calib"], loaders["val"], loaders["test"],
                metric=lambda out, y: 0.0, loss=zero, distill_loss=zero)


def empty_val() -> Task:
    loaders = _loaders()
    empty = DataLoader(TensorDataset(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)), batch_size=4)
    return Task(ResNet(8, width=4).eval(), torch.zeros(1, 1, 28, 28), loaders["train"], loaders["calib"], empty, loaders["test"])


def wrong_type() -> str:
    return "not a task"


def broken() -> Task:
    raise RuntimeError("the data directory is missing")


# Small trained tasks (synthetic, learnable; a few seconds to train, kept per process) --------
def _template_data(n: int, seed: int, size: int = 16, classes: int = 10, noise: float = 1.2) -> TensorDataset:
    """Class templates (fixed) plus Gaussian noise: learnable, not trivially separable."""
    templates = torch.randn(classes, 1, size, size, generator=torch.Generator().manual_seed(1234))
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=gen)
    x = templates[y] + noise * torch.randn(n, 1, size, size, generator=gen)
    return TensorDataset(x, y)


class BNFreeCNN(nn.Module):
    """A LeNet-5-style CNN without BatchNorm: conv-ReLU-pool x2, then two Linear layers."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(2 * width * 4 * 4, 32)
        self.fc2 = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv3(self.relu(self.conv2(x)))))
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


_TRAINED: dict[str, Task] = {}


def _trained(name: str, model: nn.Module, steps: int = 150) -> Task:
    if name not in _TRAINED:
        torch.manual_seed(0)
        train = _template_data(640, 1)
        loader = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        step = 0
        while step < steps:
            for x, y in loader:
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                if step >= steps:
                    break
        model.eval()
        data = {k: _template_data(n, s) for k, n, s in (("calib", 128, 2), ("val", 200, 3), ("test", 200, 4))}
        _TRAINED[name] = Task(
            model, torch.zeros(1, 1, 16, 16), DataLoader(train, batch_size=64), DataLoader(data["calib"], batch_size=64),
            DataLoader(data["val"], batch_size=100), DataLoader(data["test"], batch_size=100), name=name,
        )
    return _TRAINED[name]


def bn_free_cnn() -> Task:
    """A trained BatchNorm-free CNN (fidelity 2 has nothing to re-estimate there)."""
    torch.manual_seed(0)
    return _trained("bn_free_cnn", BNFreeCNN())


def small_resnet() -> Task:
    """A trained ResNet-8 (width 4, with BatchNorm): the reference task in miniature."""
    torch.manual_seed(0)
    return _trained("small_resnet", ResNet(8, width=4))


def no_batchnorm() -> Task:
    """A small CNN without BatchNorm: nothing to calibrate data-free from."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()
    loaders = _loaders()
    return Task(model, torch.zeros(1, 1, 28, 28), loaders["train"], loaders["calib"], loaders["val"], loaders["test"],
                name="no_batchnorm")
