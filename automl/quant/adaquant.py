"""AdaQuant: layer-wise optimisation of quantized weights and biases (Hubara et al., 2021).

Round-to-nearest (RTN) quantizes every weight independently. AdaQuant instead chooses,
per layer, the weights and bias whose *quantized* layer reproduces the float layer's output
on the calibration set best::

    min_{w, b}  || conv(x_q, Q(w)) + b  -  conv_float(x_f) ||^2

where ``x_q`` is the layer's input in the quantized network (all earlier layers already
quantized and optimised: the "sequential" variant) and ``x_f`` the float network's input.
``Q`` is the engine's fake quantizer at the layer's per-channel bit-widths with its
(MSE-searched) scales held fixed, differentiated with a straight-through estimator; so the
result lives on exactly the grid the engine, the cost model and the exporter already use,
and power-of-two scales stay powers of two. Pruned channels stay zero; 32-bit channels are
optimised unquantized.

AdaQuant's "global statistics tuning" (BN tuning) re-estimates BatchNorm running statistics
on the quantized network after the layer-wise step. This project's fidelity 2
(:meth:`QuantEngine.reestimate_batchnorm`) does the same thing on the folded network: it maps
each formerly-BN layer's output statistics back to ``beta`` and ``|gamma|``. The difference:
the paper re-estimates the statistics of the *unfolded* BN (mean and variance of the conv
output, gamma and beta kept), ours measures the quantized folded output and applies a
per-channel affine correction; the two agree whenever gamma is positive, and ours also
treats a negative gamma by its magnitude. So ``ptq="adaquant"`` at fidelity 2 is AdaQuant's
"sequential AdaQuant + BN tuning" pipeline; the bias AdaQuant learns makes its separate
"bias tuning" step unnecessary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from automl.errors import ConfigError
from automl.quant.device import device_generator, to_device
from automl.quant.engine import QuantEngine, QuantLayer
from automl.quant.fake import quantize_weight_ste

ADAQUANT_SCHEMA_VERSION = 1


class _Stop(Exception):
    """Ends a forward pass once the wanted layer input is captured."""


@dataclass(frozen=True)
class AdaQuantConfig:
    """How hard AdaQuant optimises each layer.

    Attributes:
        steps: Adam steps per layer.
        lr: learning rate in units of the layer's quantization step (weights are
            optimised as ``w / scale``, so one rate fits every layer and bit-width).
        samples: calibration images used (the first ``samples`` of the calibration batch).
        batch: images per optimisation step.
        seed: makes the mini-batch order deterministic.
    """

    steps: int = 60
    lr: float = 0.02
    samples: int = 256
    batch: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.samples < 1 or self.batch < 1:
            raise ConfigError(
                f"AdaQuant needs steps, samples and batch >= 1, got {self.steps}, {self.samples} and {self.batch}"
            )
        if not self.lr > 0:
            raise ConfigError(f"AdaQuant learning rate must be > 0, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaQuantConfig:
        return cls(**data)


@dataclass(frozen=True)
class LayerFit:
    """Output error of one layer on the calibration images, before and after AdaQuant.

    Attributes:
        name: module name of the layer.
        rtn_mse: mean squared error against the float layer output with round-to-nearest
            weights (same quantized input).
        adaquant_mse: the same error with the optimised weights and bias.
        kept: whether the optimised weights were kept (they are dropped when they do not
            lower the error, which is recorded here rather than hidden).
    """

    name: str
    rtn_mse: float
    adaquant_mse: float
    kept: bool

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerFit:
        return cls(**data)


@dataclass(frozen=True)
class AdaQuantReport:
    """What one AdaQuant pass did, layer by layer, and how long it took."""

    layers: tuple[LayerFit, ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": ADAQUANT_SCHEMA_VERSION, "layers": [x.to_dict() for x in self.layers], "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaQuantReport:
        if data.get("schema_version", ADAQUANT_SCHEMA_VERSION) != ADAQUANT_SCHEMA_VERSION:
            raise ConfigError(f"AdaQuant report schema {data.get('schema_version')!r} is not {ADAQUANT_SCHEMA_VERSION}")
        return cls(tuple(LayerFit.from_dict(x) for x in data["layers"]), float(data["seconds"]))


def _float_io(engine: QuantEngine, x: torch.Tensor) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Execution order of the quantizable layers and their float outputs on ``x``."""
    order: list[str] = []
    outputs: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(_mod: torch.nn.Module, _args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            order.append(name)
            outputs[name] = out.detach()

        return fn

    handles = [engine.folded.get_submodule(n).register_forward_hook(hook(n)) for n in engine.layers]
    try:
        with torch.no_grad():
            engine.folded(x)
    finally:
        for h in handles:
            h.remove()
    return order, outputs


def _quantized_input(engine: QuantEngine, name: str, x: torch.Tensor) -> torch.Tensor:
    """The input of layer ``name`` in the current quantized network, activation-quantized."""
    captured: list[torch.Tensor] = []
    ql = engine.layers[name]

    def fn(_mod: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0].detach())
        raise _Stop

    handle = ql.register_forward_pre_hook(fn)
    try:
        with torch.no_grad():
            engine.qmodel(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    inp = captured[0]
    if ql.act is not None:
        scale, qmin, qmax = ql.act
        inp = inp.mul(1.0 / scale).round_().clamp_(qmin, qmax).mul_(scale)
    return inp


def _fit_layer(ql: QuantLayer, inp: torch.Tensor, target: torch.Tensor, cfg: AdaQuantConfig, name: str) -> LayerFit:
    bits = ql.bits
    shape = (-1,) + (1,) * (ql.w_float.dim() - 1)
    live = (bits > 0).to(ql.w_float.dtype)
    scale = ql._scale.clamp_min(1e-12)
    with torch.no_grad():
        rtn = float(F.mse_loss(ql._run(inp, ql.weight, ql.bias), target))
    out_dims = [d for d in range(target.dim()) if d != 1]
    bias_unit = target.std(dim=out_dims).clamp_min(1e-6)
    u = torch.nn.Parameter(ql.masked(ql.w_float / scale.view(shape)) * live.view(shape))
    db = torch.nn.Parameter(torch.zeros_like(ql.b_float))
    opt = torch.optim.Adam([u, db], lr=cfg.lr)
    gen = device_generator(inp.device, cfg.seed)
    n = inp.shape[0]

    def forward(idx: torch.Tensor | None) -> torch.Tensor:
        w = ql.masked(quantize_weight_ste(u * scale.view(shape), bits, scale))
        b = (ql.b_float + db * bias_unit) * live
        x = inp if idx is None else inp[idx]
        return ql._run(x, w, b)

    for _ in range(cfg.steps):
        idx = torch.randint(n, (min(cfg.batch, n),), generator=gen, device=inp.device)
        loss = F.mse_loss(forward(idx), target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        w = ql.masked(quantize_weight_ste(u * scale.view(shape), bits, scale))
        b = (ql.b_float + db * bias_unit) * live
        after = float(F.mse_loss(ql._run(inp, w, b), target))
        kept = after < rtn
        if kept:
            ql.weight = w.detach().clone()
            ql.bias = b.detach().clone()
            ql.qat_start = ((u * scale.view(shape)).detach().clone(), b.detach().clone())
    return LayerFit(name, rtn, after, kept)


def adaquant(engine: QuantEngine, calib: torch.Tensor, config: AdaQuantConfig | None = None) -> AdaQuantReport:
    """Optimise the quantized weights and biases of the engine's current policy in place.

    Call after :meth:`QuantEngine.apply`; the next ``apply`` gathers round-to-nearest
    weights again, so nothing leaks between policies. Layers run in execution order, each
    fitted on the inputs produced by the already optimised layers before it.

    Args:
        engine: the engine, with a policy applied.
        calib: calibration images (only the first ``config.samples`` are used).
        config: steps, learning rate and batch size.

    Returns:
        The per-layer output error with round-to-nearest and with AdaQuant.
    """
    cfg = config or AdaQuantConfig()
    start = time.perf_counter()
    x = to_device(calib[: cfg.samples], engine.device, "the AdaQuant calibration batch")
    order, targets = _float_io(engine, x)
    fits = []
    for name in dict.fromkeys(order):
        ql = engine.layers[name]
        if not bool((ql.bits > 0).any()):
            continue
        ql.correction = None
        fits.append(_fit_layer(ql, _quantized_input(engine, name, x), targets[name], cfg, name))
    return AdaQuantReport(tuple(fits), time.perf_counter() - start)
