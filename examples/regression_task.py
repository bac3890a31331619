"""A task that is not classification: an MLP regressing disease progression (diabetes).

`automl search --task examples.regression_task:make_task` calls ``make_task()``. What
differs from a classifier is three fields of the ``automl.Task``:

* ``metric``: the coefficient of determination R^2 over the whole split (higher is
  better, 1 is perfect, 0 is as good as predicting the mean);
* ``loss``: mean squared error against the targets (reported as the policy's loss);
* ``distill_loss``: mean squared error between the compressed and the float network's
  outputs, which the fine-tune minimises and the search reports as the policy's ``kl``.

Data: scikit-learn's bundled diabetes set (442 patients, 10 standardised features, one
target; shipped inside the scikit-learn wheel, nothing is downloaded), split with a fixed
seed into train 300 / calibration 40 / validation 51 / test 51. Features and target are
standardised with the training split's statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from automl.evaluation.task import Task

SPLITS = (("train", 300), ("calib", 40), ("val", 51), ("test", 51))


def r2_score(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Coefficient of determination of predictions ``(N, 1)`` against targets ``(N, 1)``."""
    residual = float(((outputs - targets) ** 2).sum())
    total = float(((targets - targets.mean()) ** 2).sum())
    return 1.0 - residual / total if total > 0 else 0.0


class RegressionMLP(nn.Module):
    """Four linear layers with ReLU, one output."""

    def __init__(self, features: int = 10, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def diabetes_loaders(seed: int = 0, batch_size: int = 64) -> dict[str, DataLoader]:
    """The four loaders of the diabetes set, standardised with the training split."""
    from sklearn.datasets import load_diabetes

    x_all, y_all = load_diabetes(return_X_y=True)
    x = torch.tensor(x_all, dtype=torch.float32)
    y = torch.tensor(y_all, dtype=torch.float32).unsqueeze(1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    parts, start = {}, 0
    for name, n in SPLITS:
        parts[name] = order[start : start + n]
        start += n
    train = parts["train"]
    xm, xs, ym, ys = x[train].mean(0), x[train].std(0), y[train].mean(), y[train].std()
    x, y = (x - xm) / xs, (y - ym) / ys
    gen = torch.Generator().manual_seed(seed)
    return {
        name: DataLoader(TensorDataset(x[idx], y[idx]), batch_size=batch_size, shuffle=name == "train", generator=gen)
        for name, idx in parts.items()
    }


def make_task(epochs: int = 40, seed: int = 0) -> Task:
    """Train the MLP (under a second on one core) and wrap it as an ``automl.Task``."""
    torch.manual_seed(seed)
    loaders = diabetes_loaders(seed)
    model = RegressionMLP()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-2)
    model.train()
    for _ in range(epochs):
        for x, y in loaders["train"]:
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    model.eval()
    return Task(
        model=model,
        sample_input=torch.zeros(1, 10),
        train_loader=loaders["train"],
        calib_loader=loaders["calib"],
        val_loader=loaders["val"],
        test_loader=loaders["test"],
        metric=r2_score,
        loss=F.mse_loss,
        distill_loss=F.mse_loss,
        name="diabetes-mlp",
    )
