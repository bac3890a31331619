"""Cheap sensitivities from the curvature of the float network: Fisher or Hessian traces.

Both estimate the damage of a decision as the second-order term of the KL divergence
from the float model, ``0.5 * delta^T H delta``, where ``delta`` is the change the decision
makes (quantization noise of a layer's weights or input activations, or the weights and
bias of pruned channels) and ``H`` the curvature at the float weights. At the float
weights the KL's gradient is zero and its Hessian is the Fisher information of the
model's output distribution, so:

- ``fisher``: the diagonal of the Fisher, from per-sample squared gradients of the
  cross-entropy against labels *sampled from the float model's own softmax* (the true
  Fisher, not the empirical one on data labels); the damage is ``0.5 * sum(F * delta**2)``.
- ``hessian``: HAWQ-V2/V3: a Hutchinson estimate of ``trace(H)`` per layer and the damage
  ``0.5 * trace(H) / n * ||delta||**2`` (average curvature times noise energy). At the
  float weights the KL's Hessian is exactly the Gauss-Newton matrix ``J^T A J`` (``A`` =
  ``diag(p) - p p^T`` per sample), so the Rademacher probes ``e`` are drawn in the logits
  and ``trace(H_l) = E ||J_l^T A^(1/2) e||**2``: one backward pass per probe, and every
  estimate is non-negative. (Probes in parameter space with Hessian-vector products, as
  in HAWQ's code, pick up cross-layer terms that made 2-probe estimates negative for
  half of ResNet-20's layers.)

Activation noise uses the engine's calibrated activation grid on the captured layer
inputs; weight noise the engine's precomputed weight banks, so the noise is exactly the
one a policy applies. Neither method depends on the search fidelity: BatchNorm
re-estimation (fidelity 2) partly repairs quantization noise, which the second-order
term does not model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from automl.errors import ConfigError
from automl.problem.sensitivity import Sensitivities
from automl.quant.device import device_generator, to_device
from automl.quant.engine import QuantEngine
from automl.quant.fake import FLOAT_BITS
from search_spaces.space import SearchSpace

CURVATURE_METHODS = ("fisher", "hessian")
# Forward-pass equivalents of one sample's curvature work, to state the cost in evaluations:
# a backward pass costs about two forwards. fisher: a label-sampling forward, a
# forward+backward for the activations, a forward+backward for per-sample weight
# gradients; hessian: one forward and one backward per probe.
PASS_COST = {"fisher": 7.0, "hessian": 1.0}
PROBE_COST = 2.0


@dataclass(frozen=True)
class CurvatureConfig:
    """How curvature is estimated.

    Attributes:
        samples: validation inputs used (the first ``samples``).
        batch_size: inputs per backward pass.
        probes: Hutchinson probes per batch (``hessian`` only).
        seed: seeds the sampled labels and the probes.
    """

    samples: int = 256
    batch_size: int = 32
    probes: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 1 or self.batch_size < 1 or self.probes < 1:
            raise ConfigError(
                f"curvature samples, batch_size and probes must be >= 1, got {self.samples}, {self.batch_size}, {self.probes}"
            )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def forward_equivalents(self, method: str, n_samples: int) -> float:
        """Work of one estimate in forward passes of single samples (see ``PASS_COST``)."""
        return n_samples * (PASS_COST[method] + (PROBE_COST * self.probes if method == "hessian" else 0.0))


class _Capture:
    """Forward pre-hooks that keep each layer's input (in the autograd graph) while enabled."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.inputs: dict[str, torch.Tensor] = {}
        self.enabled = False
        self.handles = [model.get_submodule(n).register_forward_pre_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Callable[..., None]:
        def fn(_mod: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if self.enabled:
                self.inputs[name] = args[0]

        return fn

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _act_noise(x: torch.Tensor, qparams: tuple[float, int, int]) -> torch.Tensor:
    scale, qmin, qmax = qparams
    return torch.clamp(torch.round(x / scale), qmin, qmax) * scale - x


class _Accumulator:
    """Per layer: weighted weight/bias curvature and activation damage per bit-width."""

    def __init__(self, engine: QuantEngine, space: SearchSpace) -> None:
        self.engine, self.space = engine, space
        self.w = {s.name: torch.zeros_like(engine.layers[s.name].w_float) for s in space.layers}
        self.b = {s.name: torch.zeros_like(engine.layers[s.name].b_float) for s in space.layers}
        # float64 sums on the device: the batches add up without a host sync, in the precision
        # (and the order) of the Python floats they replace
        zero = torch.zeros((), dtype=torch.float64, device=engine.device)
        self.act: dict[str, dict[int, torch.Tensor]] = {s.name: {a: zero for a in s.act_bits} for s in space.layers}
        self.n = 0

    def add_act(self, name: str, x: torch.Tensor, weight: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Add ``weight(noise)`` (a float64 scalar tensor) of every activation width (``weight`` applies the curvature)."""
        for a in self.act[name]:
            if a < FLOAT_BITS:
                self.act[name][a] = self.act[name][a] + weight(_act_noise(x.detach(), self.engine.act_params[name][a]))

    def table(self, source: str, per_tensor: bool) -> Sensitivities:
        """The damage table; ``per_tensor`` uses the mean curvature of each tensor (HAWQ)."""
        n = max(self.n, 1)
        weight: dict[str, dict[int, float]] = {}
        act: dict[str, dict[int, float]] = {}
        sparsity: dict[str, dict[float, float]] = {}
        for s in self.space.layers:
            ql = self.engine.layers[s.name]
            cw, cb = self.w[s.name] / n, self.b[s.name] / n
            if per_tensor:
                cw, cb = torch.full_like(cw, float(cw.mean())), torch.full_like(cb, float(cb.mean()))
            weight[s.name] = {}
            for b in s.nonzero_bits:
                delta = ql.bank[ql.bank_bits.index(b)] - ql.w_float
                weight[s.name][b] = 0.5 * float((cw * delta**2).sum())
            act[s.name] = {a: 0.5 * float(v) / n for a, v in self.act[s.name].items()}
            # a pruned channel loses its weights and its bias
            per_channel = (cw * ql.w_float**2).reshape(cw.shape[0], -1).sum(1) + cb * ql.b_float**2
            sparsity[s.name] = {}
            for lv in s.sparsity_levels:
                k = int(round(lv * s.out_channels))
                pruned = list(s.channel_rank[s.out_channels - k :]) if k else []
                sparsity[s.name][float(lv)] = 0.5 * float(per_channel[pruned].sum()) if pruned else 0.0
        return Sensitivities.additive(self.space, sparsity, weight, act, source=source)


def _trainable_copy(engine: QuantEngine, names: Sequence[str]) -> tuple[nn.Module, dict[str, nn.Parameter]]:
    model = copy.deepcopy(engine.folded).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    params: dict[str, nn.Parameter] = {}
    for n in names:
        mod = model.get_submodule(n)
        if mod.bias is None:  # a bias-free layer: a zero bias gives the pruning term its slot
            mod.bias = nn.Parameter(mod.weight.new_zeros(mod.weight.shape[0]))
        for kind in ("weight", "bias"):
            p = getattr(mod, kind)
            p.requires_grad_(True)
            params[f"{n}.{kind}"] = p
    return model, params


def _fisher_batch(model: nn.Module, params: dict[str, nn.Parameter], cap: _Capture, acc: _Accumulator,
                  x: torch.Tensor, gen: torch.Generator) -> None:
    with torch.no_grad():
        probs = F.softmax(model(x), dim=1)
    y = torch.multinomial(probs, 1, generator=gen).squeeze(1)
    # activations: with a summed loss, the gradient at a sample's own activation is per-sample
    cap.enabled = True
    loss = F.cross_entropy(model(x.clone().requires_grad_(True)), y, reduction="sum")
    cap.enabled = False
    names = list(cap.inputs)
    grads = torch.autograd.grad(loss, [cap.inputs[n] for n in names])
    for n, g in zip(names, grads, strict=True):
        g2 = g.detach() ** 2
        acc.add_act(n, cap.inputs[n], lambda d, g2=g2: (g2 * d**2).sum().double())
    cap.inputs.clear()
    # weights: per-sample gradients (torch.func), squared and summed over the batch
    detached = {k: p.detach() for k, p in params.items()}

    def one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    per_sample = vmap(grad(one), in_dims=(None, 0, 0))(detached, x, y)
    for key, g in per_sample.items():
        layer, kind = key.rsplit(".", 1)
        target = acc.w if kind == "weight" else acc.b
        target[layer] += (g**2).sum(0)


def _logit_root(logits: torch.Tensor) -> torch.Tensor:
    """Per sample, the square root of ``diag(p) - p p^T``: the KL's Hessian in the logits."""
    p = F.softmax(logits.detach(), dim=1)
    cov = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    evals, evecs = torch.linalg.eigh(cov)
    return evecs @ torch.diag_embed(evals.clamp_min(0).sqrt()) @ evecs.transpose(1, 2)


def _hessian_batch(model: nn.Module, params: dict[str, nn.Parameter], cap: _Capture, acc: _Accumulator,
                   x: torch.Tensor, gen: torch.Generator, probes: int) -> None:
    cap.enabled = True
    logits = model(x.clone().requires_grad_(True))
    cap.enabled = False
    root = _logit_root(logits)
    names, keys = list(cap.inputs), list(params)
    tensors = [params[k] for k in keys] + [cap.inputs[n] for n in names]
    # float64 sums on the device (no host sync per probe), as the Python floats they replace
    traces = [torch.zeros((), dtype=torch.float64, device=logits.device)] * len(tensors)
    for _ in range(probes):
        eps = (torch.randint(0, 2, logits.shape, generator=gen, device=logits.device) * 2 - 1).to(logits.dtype)
        u = (root @ eps[..., None]).squeeze(-1)
        grads = torch.autograd.grad((u * logits).sum(), tensors, retain_graph=True)
        for i, g in enumerate(grads):
            traces[i] = traces[i] + (g**2).sum().double() / probes
    for k, tr in zip(keys, traces[: len(keys)], strict=True):
        layer, kind = k.rsplit(".", 1)
        target = acc.w if kind == "weight" else acc.b
        target[layer] += tr / target[layer].numel()  # mean diagonal entry, spread evenly
    for n, tr in zip(names, traces[len(keys):], strict=True):
        xin = cap.inputs[n]
        mean_curv = tr / xin.numel()
        acc.add_act(n, xin, lambda d, c=mean_curv: c * (d**2).sum().double())
    cap.inputs.clear()


def curvature_sensitivities(
    engine: QuantEngine,
    space: SearchSpace,
    inputs: Sequence[torch.Tensor],
    method: str,
    config: CurvatureConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[Sensitivities, int]:
    """Damage tables of every decision of ``space`` from the float network's curvature.

    Args:
        engine: the evaluator's quantization engine (its BN-folded float model, weight
            banks and activation grids define the noise).
        space: the search space.
        inputs: input batches (the first ``config.samples`` inputs are used).
        method: ``fisher`` or ``hessian`` (see the module docstring).
        config: samples, batch size, probes, seed.
        progress: called with the number of samples after each batch.

    Returns:
        The tables (``source`` ``fisher`` or ``hessian``) and the number of samples used.
    """
    if method not in CURVATURE_METHODS:
        raise ConfigError(f"curvature method must be one of {CURVATURE_METHODS}, got {method!r}")
    config = config or CurvatureConfig()
    data = torch.cat([to_device(x, engine.device, "a curvature input batch") for x in inputs])[: config.samples]
    if not len(data):
        raise ConfigError("curvature sensitivities need at least one input sample")
    model, params = _trainable_copy(engine, space.names)
    cap = _Capture(model, space.names)
    acc = _Accumulator(engine, space)
    gen = device_generator(engine.device, config.seed)
    try:
        for xb in data.split(config.batch_size):
            if method == "fisher":
                _fisher_batch(model, params, cap, acc, xb, gen)
            else:
                _hessian_batch(model, params, cap, acc, xb, gen, config.probes)
            acc.n += len(xb)
            if progress is not None:
                progress(len(xb))
    finally:
        cap.close()
    return acc.table(method, per_tensor=method == "hessian"), len(data)
