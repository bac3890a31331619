"""Where the model layer runs: one device, chosen once, that every tensor follows.

A search names its device once (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``);
:func:`resolve_device` turns the name into a :class:`torch.device` or refuses it with a
:class:`~automl.errors.ConfigError` that says what is available. The model and the batches of
the task's loaders are then moved there (:func:`place_model`, :func:`to_device`), and a move is
said in a warning of the ``automl.device`` logger: nothing silently runs elsewhere, and nothing
falls back to the CPU. Random generators are made on the device (:func:`device_generator`), so a
run is reproducible on one device. Worker processes each get their own device from a list or
round-robin over the GPUs (:func:`worker_devices`).

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> worker_devices(3, "cuda:0,cuda:1")
    ('cuda:0', 'cuda:1', 'cuda:0')
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from automl.errors import ConfigError
from automl.quant.device_names import check_device_spec, split_devices

__all__ = ["accelerator_name", "check_device_spec", "device_generator", "model_device", "on_cpu", "place_model",
           "resolve_device", "same_device", "split_devices", "to_device", "worker_devices"]
log = logging.getLogger("automl.device")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The :class:`torch.device` a device name stands for on this machine.

    ``auto`` (and ``None``) is the first GPU when CUDA is available, else the CPU; ``cuda``
    is the current GPU.

    Raises:
        ConfigError: the name is malformed, or names a GPU this machine does not have.
    """
    text = check_device_spec("auto" if spec is None else spec)
    if text == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU-only build of torch" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
        raise ConfigError(
            f"device {text!r} was asked for, but CUDA is not available here ({build} {torch.__version__}, "
            f"no usable GPU or driver). Use --device cpu, or --device auto to take a GPU only when there is one; "
            "for a GPU install a CUDA build of torch into this environment."
        )
    count = torch.cuda.device_count()
    index = int(text.split(":")[1]) if ":" in text else torch.cuda.current_device()
    if index >= count:
        raise ConfigError(
            f"device {text!r} was asked for, but this machine has {count} GPU(s): "
            f"{', '.join(f'cuda:{i}' for i in range(count))}. Pass one of those."
        )
    return torch.device("cuda", index)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); the CPU for a model without either.

    Raises:
        ConfigError: the model's parameters and buffers are spread over several devices.
    """
    devices = {t.device for t in _tensors(model)}
    if len(devices) > 1:
        raise ConfigError(
            f"the model's parameters and buffers lie on several devices ({', '.join(sorted(map(str, devices)))}); "
            "automl-mpq runs a model on one device: move it with model.to(device) or pass --device"
        )
    return devices.pop() if devices else torch.device("cpu")


def _tensors(model: nn.Module) -> Iterable[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same (``cuda`` without an index is the current GPU)."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


def place_model(model: nn.Module, device: torch.device, what: str = "Task.model") -> nn.Module:
    """``model`` on ``device``: moved in place when it lies elsewhere, with a warning saying so."""
    here = model_device(model)
    if not same_device(here, device):
        log.warning("%s lies on %s; moving it to %s, the device this run was asked to use (pass --device %s "
                    "to run where it is)", what, here, device, here)
        model.to(device)
    return model


_told: set[tuple[str, str, str]] = set()


def to_device(x: Any, device: torch.device, what: str = "a batch") -> Any:
    """A tensor (or a tuple/list/dict of them) on ``device``; a move is said once per source and devices."""
    if isinstance(x, torch.Tensor):
        if same_device(x.device, device):
            return x
        key = (what, str(x.device), str(device))
        if key not in _told:
            _told.add(key)
            log.warning("%s yields tensors on %s; they are moved to %s, the device this run uses", what, x.device, device)
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device, what) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device, what) for k, v in x.items()}
    return x


def on_cpu(model: nn.Module) -> nn.Module:
    """``model`` itself when it lies on the CPU, else a copy on the CPU (the model is left where it is).

    The copy goes through the CPU: no second copy of the weights is made on the device.
    """
    if all(t.device.type == "cpu" for t in _tensors(model)):
        return model
    memo: dict[int, Any] = {}
    for t in _tensors(model):
        if id(t) not in memo:
            host = t.detach().cpu()
            memo[id(t)] = nn.Parameter(host, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else host
    return copy.deepcopy(model, memo).cpu()


def device_generator(device: torch.device, seed: int) -> torch.Generator:
    """A random generator on ``device`` seeded with ``seed``: draws for tensors on that device."""
    return torch.Generator(device=device).manual_seed(int(seed))


def accelerator_name(device: torch.device) -> str:
    """A readable name of the hardware behind ``device`` (the GPU model, or ``cpu``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def worker_devices(workers: int, devices: str | Sequence[str] | None = "auto") -> tuple[str, ...]:
    """The device of each of ``workers`` worker processes: worker ``i`` gets entry ``i mod len``.

    ``devices`` is a list (or a comma-separated string such as ``"cuda:0,cuda:1"``) of device
    names; ``"auto"`` is every GPU of this machine round-robin (the CPU when there is none);
    ``"cuda"`` alone also means every GPU. Every name is checked with :func:`resolve_device`.

    Raises:
        ConfigError: ``workers < 1``, an empty list, or a device this machine does not have.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    names = list(split_devices(devices if isinstance(devices, str) else ",".join(devices or ["auto"])))
    if names in (["auto"], ["cuda"]):
        if names == ["cuda"]:
            resolve_device("cuda")  # refuses a machine without CUDA
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        names = [f"cuda:{i}" for i in range(count)] or ["cpu"]
    resolved = [str(resolve_device(d)) for d in names]
    return tuple(resolved[i % len(resolved)] for i in range(workers))
