"""Measure a latency table of a user's model on this machine (``automl profile-hardware``).

Every quantizable layer is rebuilt alone at several kept fractions of its input features and
output channels and timed at batch size 1, in float and in int8 (torch's quantized CPU
kernels, on the first engine that really runs here). On a CUDA device (``device="cuda"``)
the layers and networks run in float on the GPU, timed to the end of their kernels
(``torch.cuda.synchronize``); torch has no int8 convolution kernels on CUDA, so the int8
table there repeats the float one: the profile prices pruning, not bit-widths. Dimensions that cannot be pruned (the
model's input, its output, unprunable groups) are timed at full width only and the row is
repeated. The whole float network is timed too, uniformly pruned to every width
(:func:`automl.analysis.prune.prune_model`); what it takes beyond its interpolated layers
(normalisation, activations, additions, pooling, dispatch) is fitted as a fixed overhead
plus a cost per output activation element. The result is a :class:`~automl.cost.profiles.MeasuredProfile`
YAML that latency budgets use by path.
"""

from __future__ import annotations

import copy
import platform
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from automl.analysis.prune import prune_model
from automl.cost.profiles import MeasuredLayer, MeasuredProfile, interpolate, monotone_tables, save_profile
from automl.errors import ConfigError, ProfileError
from automl.quant.device import accelerator_name, on_cpu, resolve_device
from search_spaces.network import LayerInfo, ModelAnalysis
from search_spaces.policy import FLOAT_BITS, LayerPolicy, Policy

DEFAULT_WIDTHS = (0.125, 0.25, 0.5, 0.75, 1.0)
INNER = 3  # back-to-back calls per round
ENGINES = ("x86", "fbgemm", "onednn", "qnnpack")


def interleaved_ms(fns: Sequence[Callable[[], object]], repeats: int, inner: int = INNER, warmup: int = 2) -> list[float]:
    """Milliseconds of every function: the best of ``repeats`` round-robin rounds of
    ``inner`` back-to-back calls each.

    Round-robin, load from other processes hits every function alike instead of whichever
    ran during a busy second, and each function runs between others as a layer runs inside a
    network. The minimum, not the median, is kept: on a shared machine a run can only be
    slowed by neighbours, never sped up, and their load swings the median of the same
    network by 2x from one minute to the next while the minimum moves by a few percent.
    """
    from automl.export.ort import best_ms  # one timing rule for torch and ONNX Runtime (torch-free module)

    with torch.inference_mode():
        return best_ms(fns, repeats, inner, warmup)


def quantized_engine() -> str:
    """The first quantized engine whose int8 convolution and linear kernels run here."""
    import torch.ao.nn.quantized as nnq

    previous = torch.backends.quantized.engine
    for engine in ENGINES:
        if engine not in torch.backends.quantized.supported_engines:
            continue
        try:
            torch.backends.quantized.engine = engine
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                x = torch.quantize_per_tensor(torch.randn(1, 4, 6, 6), 0.05, 64, torch.quint8)
                nnq.Conv2d(4, 4, 3)(x)
                nnq.Linear(4, 2)(torch.quantize_per_tensor(torch.randn(1, 4), 0.05, 64, torch.quint8))
            return engine
        except (RuntimeError, AssertionError):
            continue
        finally:
            torch.backends.quantized.engine = previous
    raise ProfileError(
        f"none of torch's quantized engines {list(torch.backends.quantized.supported_engines)} runs an int8 "
        "convolution on this machine, so no int8 table can be measured. Use a float-only policy space."
    )


def _float_layer(layer: LayerInfo, mod: nn.Module, cin: int, cout: int) -> nn.Module:
    if layer.kind == "linear":
        return nn.Linear(cin, cout, bias=mod.bias is not None).eval()
    conv = nn.Conv1d if layer.kind == "conv1d" else nn.Conv2d
    groups = cout if layer.depthwise else layer.groups
    bias = mod.bias is not None
    return conv(cin, cout, mod.kernel_size, mod.stride, mod.padding, mod.dilation, groups, bias, mod.padding_mode).eval()


def _int8_layer(layer: LayerInfo, mod: nn.Module, cin: int, cout: int) -> nn.Module:
    import torch.ao.nn.quantized as nnq

    if layer.kind == "linear":
        return nnq.Linear(cin, cout)
    conv = nnq.Conv1d if layer.kind == "conv1d" else nnq.Conv2d
    groups = cout if layer.depthwise else layer.groups
    return conv(cin, cout, mod.kernel_size, mod.stride, mod.padding, mod.dilation, groups)


def _input(layer: LayerInfo, cin: int) -> torch.Tensor:
    if layer.kind == "linear":
        return torch.randn(1, *layer.in_shape[:-1], cin)
    return torch.randn(1, cin, *layer.in_shape[1:])


def _synced(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """``fn`` that returns once the device has finished its work (CUDA kernels run asynchronously)."""
    if device.type != "cuda":
        return fn

    def call() -> object:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return call


def _layer_calls(layer: LayerInfo, mod: nn.Module, cin: int, cout: int,
                 device: torch.device | None = None) -> tuple[Callable[[], object], ...]:
    """``(float call, int8 call)`` of the layer rebuilt with ``cin`` inputs and ``cout`` outputs
    (on a CUDA ``device`` both are the float layer there: torch has no CUDA int8 kernels)."""
    x = _input(layer, cin)
    fl = _float_layer(layer, mod, cin, cout)
    if device is not None and device.type == "cuda":
        x, fl = x.to(device), fl.to(device)
        run = _synced(lambda: fl(x), device)
        return run, run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = _int8_layer(layer, mod, cin, cout)
        qx = torch.quantize_per_tensor(x, 0.05, 64, torch.quint8)
    return (lambda: fl(x)), (lambda: q(qx))


def _prunable_dims(analysis: ModelAnalysis, layer: LayerInfo) -> tuple[bool, bool]:
    groups = {g.gid: g for g in analysis.groups}
    out = groups[layer.out_group].prunable
    inp = any(groups[s.group].prunable for s in layer.in_segments)
    return inp and not layer.depthwise, out


def _grid_points(
    analysis: ModelAnalysis, layer: LayerInfo, widths: Sequence[float]
) -> tuple[dict[tuple[float, float], tuple[int, int]], bool, bool]:
    """The ``(in width, out width) -> (inputs, outputs)`` configurations worth timing."""
    in_total = sum(s.channels * s.features_per_channel for s in layer.in_segments)
    in_prunable, out_prunable = _prunable_dims(analysis, layer)
    points = {}
    for wi in widths if in_prunable else [1.0]:
        for wo in widths if out_prunable else [1.0]:
            cout = max(1, round(wo * layer.out_channels))
            points[wi, wo] = (cout if layer.depthwise else max(1, round(wi * in_total)), cout)
    return points, in_prunable, out_prunable


def _uniform_keep(analysis: ModelAnalysis, width: float) -> dict[int, int]:
    """Channels kept per group when every prunable group keeps ``width`` of its channels."""
    return {g.gid: max(1, round(width * g.channels)) if g.prunable else g.channels for g in analysis.groups}


def _uniform_policy(analysis: ModelAnalysis, width: float) -> Policy:
    keep = _uniform_keep(analysis, width)
    return Policy(tuple(
        (lay.name, LayerPolicy(FLOAT_BITS, (FLOAT_BITS,) * keep[lay.out_group] + (0,) * (lay.out_channels - keep[lay.out_group])))
        for lay in analysis.layers
    ))


def _uniform_features(analysis: ModelAnalysis, width: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Kept input and output fractions ``[1, L]`` and output activation elements at ``width``."""
    keep = _uniform_keep(analysis, width)
    fi, fo, elems = [], [], 0.0
    for lay in analysis.layers:
        in_total = sum(s.channels * s.features_per_channel for s in lay.in_segments)
        fi.append(sum(keep[s.group] * s.features_per_channel for s in lay.in_segments) / in_total)
        fo.append(keep[lay.out_group] / lay.out_channels)
        elems += keep[lay.out_group] * float(np.prod(lay.out_shape)) / lay.out_channels
    return np.array([fi]), np.array([fo]), elems


def measure_layers(
    model: nn.Module, analysis: ModelAnalysis, widths: Sequence[float], repeats: int, sample: torch.Tensor,
    device: torch.device | None = None,
) -> tuple[tuple[MeasuredLayer, ...], list[float]]:
    """Time every layer on the ``widths x widths`` grid (rows: input fraction, columns:
    output) and the whole network uniformly pruned to each width, all round-robin, on
    ``device`` (default: the CPU; the networks are copies there, ``model`` stays where it is).

    Returns:
        The layers' tables and the whole network's milliseconds at each width.
    """
    device = device or torch.device("cpu")
    model = on_cpu(model)
    sample = sample.detach().cpu()
    modules = dict(model.named_modules())
    plans = [(layer, *_grid_points(analysis, layer, widths)) for layer in analysis.layers]
    calls: list[Callable[[], object]] = []
    index: dict[tuple[str, float, float], int] = {}
    for layer, points, _, _ in plans:
        for (wi, wo), (cin, cout) in points.items():
            index[layer.name, wi, wo] = len(calls)
            calls.extend(_layer_calls(layer, modules[layer.name], cin, cout, device))
    nets = [model if w == 1.0 else prune_model(model, analysis, _uniform_policy(analysis, w)).eval() for w in widths]
    if device.type != "cpu":
        nets, sample = [copy.deepcopy(net).to(device) for net in nets], sample.to(device)
    calls.extend(_synced(lambda net=net: net(sample), device) for net in nets)
    ms = interleaved_ms(calls, repeats)
    layers = []
    for layer, _, in_p, out_p in plans:

        def grid(k: int, name: str = layer.name, in_p: bool = in_p, out_p: bool = out_p) -> tuple[tuple[float, ...], ...]:
            return tuple(
                tuple(ms[index[name, wi if in_p else 1.0, wo if out_p else 1.0] + k] for wo in widths) for wi in widths
            )

        in_total = sum(s.channels * s.features_per_channel for s in layer.in_segments)
        layers.append(MeasuredLayer(layer.name, int(in_total), layer.out_channels, grid(0), grid(1)))
    return tuple(layers), ms[-len(widths):]


def fit_overhead(
    analysis: ModelAnalysis, layers: Sequence[MeasuredLayer], widths: Sequence[float], whole_ms: Sequence[float]
) -> tuple[float, float]:
    """``(fixed ms, us per thousand output activation elements)``: what the uniformly pruned
    networks took beyond their interpolated layers, fitted by non-negative least squares."""
    fl, _ = monotone_tables(layers, analysis.names)
    rows, rest = [], []
    for w, total in zip(widths, whole_ms, strict=True):
        fi, fo, elems = _uniform_features(analysis, w)
        rows.append([1.0, elems / 1e3])
        rest.append(total - float(interpolate(fl, widths, fi, fo).sum()))
    (fixed, per_kelem), _ = nnls(np.array(rows), np.maximum(np.array(rest), 0.0))
    return float(fixed), float(per_kelem * 1e3)


def profile_hardware(
    model: nn.Module,
    sample_input: torch.Tensor,
    analysis: ModelAnalysis,
    out_path: str | Path,
    threads: int = 1,
    widths: Sequence[float] = DEFAULT_WIDTHS,
    repeats: int = 25,
    name: str | None = None,
    device: str | torch.device = "cpu",
) -> Path:
    """Measure ``model``'s layers on this machine and write a measured profile YAML.

    Args:
        model: the float network (random weights time the same as trained ones).
        sample_input: a batch like the model's input (only its first sample is used).
        analysis: ``analyse(model, sample_input)``.
        out_path: where the profile YAML goes.
        threads: torch intra-op threads while timing (pin it: latency depends on it).
        widths: kept fractions to time, increasing and ending at 1.0.
        repeats: round-robin rounds per configuration (see :func:`interleaved_ms`).
        name: the profile's name (default ``measured-<host>-<threads>t``, ``measured-<host>-cuda`` on a GPU).
        device: ``cpu`` (float and int8 kernels) or a CUDA device (``cuda``, ``cuda:N``, ``auto``):
            float on that GPU, see the module docstring.

    Returns:
        ``out_path``. Use it as ``latency<=2ms@<out_path>`` in a budget.

    Raises:
        ConfigError: bad widths, threads or repeats, or a device this machine does not have.
    """
    widths = tuple(float(w) for w in widths)
    if len(widths) < 2 or list(widths) != sorted(set(widths)) or widths[-1] != 1.0 or widths[0] <= 0:
        raise ConfigError(f"widths must increase from above 0 to exactly 1.0 with at least two entries, got {widths}")
    if threads < 1 or repeats < 1:
        raise ConfigError(f"threads and repeats must be >= 1, got threads={threads}, repeats={repeats}")
    where = resolve_device(device)
    previous_threads, previous_engine = torch.get_num_threads(), torch.backends.quantized.engine
    engine = quantized_engine() if where.type == "cpu" else f"cuda-float ({accelerator_name(where)})"
    torch.set_num_threads(threads)
    if where.type == "cpu":
        torch.backends.quantized.engine = engine
    was_training = model.training
    model.eval()
    try:
        layers, whole = measure_layers(model, analysis, widths, repeats, sample_input[:1], where)
    finally:
        torch.set_num_threads(previous_threads)
        torch.backends.quantized.engine = previous_engine
        model.train(was_training)
    fixed, per_kelem = fit_overhead(analysis, layers, widths, whole)
    on = (f"{platform.node()} ({platform.processor() or platform.machine()}), {threads} thread(s)" if where.type == "cpu"
          else f"{accelerator_name(where)} ({where}) with torch CUDA float kernels (int8 table = float)")
    profile = MeasuredProfile(
        name=name or f"measured-{platform.node() or 'host'}-{threads}t" + ("" if where.type == "cpu" else "-cuda"),
        widths=widths,
        layers=layers,
        overhead_ms=fixed,
        overhead_us_per_kelem=per_kelem,
        engine=engine,
        threads=threads,
        description=(
            f"measured on {on}, batch 1, torch {torch.__version__}, int8 engine {engine}, best of {repeats} "
            f"round-robin rounds of {INNER} calls"
        ),
    )
    return save_profile(profile, out_path)
