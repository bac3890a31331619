"""Bring your own model: a complete task file to copy.

`automl search --task examples.byom_task:make_task` imports this module from the current
directory and calls ``make_task()``, which must return an ``automl.Task``: your trained
model, one sample input, four data loaders yielding ``(inputs, targets)`` and a metric
(higher is better). Here the model is a small depthwise-separable CNN that the reference
code does not define, trained for one quick epoch on the bundled MNIST images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from automl.data import mnist_loaders
from automl.evaluation.task import Task, top1_accuracy


class SeparableNet(nn.Module):
    """Conv stem, two depthwise-separable blocks, global pooling, a linear classifier."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks = []
        for cin, cout in ((width, 2 * width), (2 * width, 2 * width)):
            blocks += [
                nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            ]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def make_task(epochs: int = 2, seed: int = 0) -> Task:
    """Train the model briefly and wrap it with its data as an ``automl.Task``."""
    torch.manual_seed(seed)
    loaders = mnist_loaders(batch_size=100, seed=seed)
    model = SeparableNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for x, y in loaders["train"]:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    return Task(
        model=model,
        sample_input=torch.zeros(1, 1, 28, 28),
        train_loader=loaders["train"],
        calib_loader=loaders["calib"],
        val_loader=loaders["val"],
        test_loader=loaders["test"],
        metric=top1_accuracy,
        name="separable-net",
    )
