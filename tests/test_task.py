from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from automl.errors import DataError, TaskError
from automl.evaluation.task import Task, top1_accuracy
from automl.reference.models import PlainCNN


def _loader(n: int = 8, batch_size: int = 4, **kwargs) -> DataLoader:
    gen = torch.Generator().manual_seed(n)
    dataset = TensorDataset(torch.randn(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen))
    return DataLoader(dataset, batch_size=batch_size, **kwargs)


def _task(**overrides) -> Task:
    fields = {
        "model": PlainCNN(),
        "sample_input": torch.randn(1, 1, 28, 28),
        "train_loader": _loader(),
        "calib_loader": _loader(),
        "val_loader": _loader(),
        "test_loader": _loader(),
    }
    fields.update(overrides)
    return Task(**fields)


def test_valid_task_and_its_loaders():
    task = _task(name="tiny")
    assert task.name == "tiny" and task.metric is top1_accuracy
    assert list(task.loaders) == ["train", "calib", "val", "test"]
    assert task.loaders["val"] is task.val_loader


def test_validation_leaves_model_modes_and_batchnorm_statistics_alone():
    model = PlainCNN()
    model.train()
    model.features[1].eval()  # a frozen BatchNorm the user keeps in eval mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _task(model=model)
    assert model.training and not model.features[1].training and model.features[5].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_non_module_model():
    with pytest.raises(TaskError, match="Task.model must be a torch.nn.Module, got OrderedDict"):
        _task(model=PlainCNN().state_dict())


@pytest.mark.parametrize("sample", [torch.tensor(1.0), torch.empty(0, 1, 28, 28), [1, 2]])
def test_unbatched_sample_input(sample):
    with pytest.raises(TaskError, match="sample_input must be a batched tensor"):
        _task(sample_input=sample)


def test_sample_input_the_model_rejects():
    with pytest.raises(TaskError, match=r"model failed on sample_input of shape \(1, 3, 28, 28\)"):
        _task(sample_input=torch.randn(1, 3, 28, 28))


@pytest.mark.parametrize("name", ["train_loader", "calib_loader", "val_loader", "test_loader"])
def test_empty_loader_is_named(name):
    empty = DataLoader(TensorDataset(torch.empty(0, 1, 28, 28), torch.empty(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(DataError, match=f"^{name} yielded no batches"):
        _task(**{name: empty})


def test_drop_last_that_drops_everything():
    with pytest.raises(DataError, match="calib_loader yielded no batches.*drop_last"):
        _task(calib_loader=_loader(n=3, batch_size=4, drop_last=True))


def test_non_iterable_loader():
    with pytest.raises(DataError, match="train_loader must be an iterable"):
        _task(train_loader=42)


def test_loader_yielding_inputs_only():
    inputs_only = [torch.randn(4, 1, 28, 28)]
    with pytest.raises(DataError, match=r"val_loader must yield \(inputs, targets\) pairs, got Tensor"):
        _task(val_loader=inputs_only)


def test_loader_yielding_triples():
    triples = [(torch.randn(4, 1, 28, 28), torch.zeros(4, dtype=torch.long), torch.zeros(4))]
    with pytest.raises(DataError, match="test_loader must yield .* got a tuple of length 3"):
        _task(test_loader=triples)


def test_loader_with_mismatched_batch_sizes():
    batches = [(torch.randn(4, 1, 28, 28), torch.zeros(3, dtype=torch.long))]
    with pytest.raises(DataError, match="calib_loader yielded inputs of shape .* same first"):
        _task(calib_loader=batches)


def test_loader_inputs_must_match_sample_input():
    batches = [(torch.randn(4, 1, 32, 32), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(DataError, match=r"train_loader yielded inputs of shape \(4, 1, 32, 32\) but sample_input"):
        _task(train_loader=batches)


def test_loader_that_raises_is_named():
    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            raise OSError("disk gone")

    with pytest.raises(DataError, match="test_loader failed while yielding its first batch: OSError: disk gone"):
        _task(test_loader=DataLoader(Broken(), batch_size=2))


def test_metric_returning_a_tensor():
    def tensor_metric(outputs, targets):
        return (outputs.argmax(1) == targets).float().mean()

    with pytest.raises(TaskError, match=r"metric must return a Python float, got Tensor.*\.item\(\)"):
        _task(metric=tensor_metric)


@pytest.mark.parametrize("value", ["0.9", None, True])
def test_metric_returning_a_non_number(value):
    with pytest.raises(TaskError, match="metric must return a Python float"):
        _task(metric=lambda outputs, targets: value)


def test_metric_returning_nan():
    with pytest.raises(TaskError, match="metric returned NaN"):
        _task(metric=lambda outputs, targets: float("nan"))


def test_metric_that_raises():
    def bad(outputs, targets):
        raise KeyError("labels")

    with pytest.raises(TaskError, match="metric failed on one val_loader batch"):
        _task(metric=bad)


def test_metric_not_callable():
    with pytest.raises(TaskError, match="Task.metric must be callable"):
        _task(metric=0.5)


def test_empty_name():
    with pytest.raises(TaskError, match="Task.name must be a non-empty string"):
        _task(name="")


def test_top1_accuracy():
    outputs = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    value = top1_accuracy(outputs, torch.tensor([1, 0, 0, 0]))
    assert isinstance(value, float) and value == 0.75


def test_top1_accuracy_shape_mismatch():
    with pytest.raises(TaskError, match=r"outputs of shape \(N, C\).*got outputs \(4, 2\) and targets \(3,\)"):
        top1_accuracy(torch.zeros(4, 2), torch.zeros(3, dtype=torch.long))


def test_custom_metric_accepts_numbers():
    task = _task(metric=lambda outputs, targets: 1)
    assert task.metric(None, None) == 1


def test_model_whose_forward_fails_on_loader_batches_only():
    class FirstImageOnly(nn.Module):
        def forward(self, x):
            if x.shape[0] > 1:
                raise RuntimeError("batch too large")
            return torch.zeros(1, 10)

    with pytest.raises(TaskError, match="model failed on a val_loader batch of shape"):
        _task(model=FirstImageOnly())
