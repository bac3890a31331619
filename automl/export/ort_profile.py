"""A latency profile measured on ONNX Runtime, the runtime the exported ONNX file ships to.

``automl profile-hardware --runtime onnxruntime`` (or a budget naming ``ort-cpu`` /
``ort-cpu-b<N>``; ``ort-cuda`` / ``ort-cuda-b<N>`` and ``ort-tensorrt`` / ``ort-tensorrt-b<N>``
for ONNX Runtime's CUDA and TensorRT execution providers on the first GPU, where the installed
onnxruntime has them, e.g. the ``onnxruntime-gpu`` package) times every quantizable layer alone, rebuilt as a one-node ONNX graph of
exactly the form :mod:`automl.export.onnx` writes, on the grid of kept input/output
fractions x kept output fractions, in two precisions:

- ``float_ms``: ``Conv``/``Gemm`` with float weights;
- ``qin_ms``: the same quantized input with float weights (a layer with a wide channel);
- ``fused_ms``: for a layer whose only consumer requantizes its output (:func:`fused_consumers`),
  the layer followed by ``Relu`` and that requantization, which the runtime fuses into an
  int8 ``QLinearConv``, less the requantization the consumer's own table already holds;
- ``int8_ms``: ``QuantizeLinear`` -> ``Clip`` -> ``DequantizeLinear`` on the input, int8
  weights -> per-channel ``DequantizeLinear``, then the ``Conv``/``Gemm`` (ONNX Runtime's
  CPU provider runs it as float after dequantizing: the output is not requantized, see
  :mod:`automl.export.onnx`), so it is usually slower than float. The tables are kept as
  measured, not capped by float: the runtime runs what the file says.

Batch 1 and one chosen batch are separate profiles (``ort-cpu``, ``ort-cpu-b64``): a
layer's cost does not scale linearly with the batch. Between measured widths the latency
is interpolated bilinearly (:class:`~automl.cost.tabulated.MeasuredProfile`). What the whole
network takes beyond its layers is fitted on the float network uniformly pruned to every
width, exported to ONNX and timed, once the layer tables are scaled by one factor fitted on
those same networks (:func:`layer_scale`); the largest relative error of the profile on those
networks is its ``stated_error``.

Profiles are cached in ``<user cache>/profiles`` under a key holding the provider, the CPU
model (or the GPU's name), the thread count, the batch, the onnxruntime version and a digest of
the model's layer shapes. A profile's ``engine`` is the execution provider it was measured on and
its description says what it prices.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from automl.cost.hardware import HardwareProfile
from automl.cost.profiles import MeasuredLayer, MeasuredProfile, load_profile, save_profile
from automl.errors import ConfigError, ProfileError
from automl.export.torch_profile import DEFAULT_WIDTHS, _grid_points, _uniform_policy, fit_overhead
from search_spaces.network import LayerInfo, ModelAnalysis

ORT_NAME = re.compile(r"^ort-(cpu|cuda|tensorrt)(?:-b(\d+))?$")
PROVIDERS = {"cpu": ("CPUExecutionProvider",), "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
             "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")}
RUNTIME = "onnxruntime"
CACHE_VERSION = 4  # bump when what a profile measures changes


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def check_provider(provider: str) -> tuple[str, ...]:
    """The ONNX Runtime execution providers, in order of preference, that ``provider`` stands for.

    Raises:
        ConfigError: ``provider`` is not ``cpu``, ``cuda`` or ``tensorrt``.
        ProfileError: the installed onnxruntime lacks that provider (the message names the ones it has).
    """
    if provider not in PROVIDERS:
        raise ConfigError(f"the ONNX Runtime provider must be one of {sorted(PROVIDERS)}, got {provider!r}; "
                          "e.g. --provider cuda")
    import onnxruntime

    available = onnxruntime.get_available_providers()
    wanted = PROVIDERS[provider][0]
    if wanted not in available:
        hint = ("install the GPU build of ONNX Runtime (pip install onnxruntime-gpu, which replaces onnxruntime) "
                "on a machine with an NVIDIA GPU and its CUDA libraries" if provider != "cpu" else "reinstall onnxruntime")
        raise ProfileError(
            f"ONNX Runtime provider {provider!r} ({wanted}) is not available in the installed onnxruntime "
            f"{onnxruntime.__version__}; it has {', '.join(available) or 'none'}. Use --provider cpu, or {hint}."
        )
    return PROVIDERS[provider]


def profile_name(provider: str, batch: int) -> str:
    """The name a budget uses for the ONNX Runtime profile of ``provider`` at ``batch``: ``ort-cuda-b64``."""
    return f"ort-{provider}" if batch == 1 else f"ort-{provider}-b{batch}"


def gpu_model() -> str:
    """The name of the first GPU, as torch reports it (``gpu`` when torch sees none)."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "gpu"


def _digest(analysis: ModelAnalysis) -> str:
    shapes = [[lay.name, lay.kind, list(lay.in_shape), list(lay.out_shape), lay.groups, list(lay.kernel_size)]
              for lay in analysis.layers]
    return hashlib.sha1(json.dumps(shapes).encode()).hexdigest()[:10]


def cache_path(analysis: ModelAnalysis, threads: int, batch: int, cache_dir: Path | None = None,
               provider: str = "cpu") -> Path:
    """Where the profile of this model, provider, processor, thread count and batch is cached."""
    import onnxruntime

    from automl.paths import default_cache_dir

    where = cpu_model() if provider == "cpu" else f"{provider}-{gpu_model()}"
    where = re.sub(r"[^a-z0-9]+", "-", where.lower()).strip("-")[:40]
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "profiles"
    return base / f"ort{onnxruntime.__version__}-{where}-{threads}t-b{batch}-{_digest(analysis)}-v{CACHE_VERSION}.yaml"


def fused_consumers(analysis: ModelAnalysis) -> dict[str, str]:
    """Layer -> its only consumer, for layers whose output channels no other layer writes or
    reads (no residual addition): there the consumer's input quantizer directly follows the
    layer (through its activation function), the pattern ONNX Runtime fuses into ``QLinearConv``."""
    out = {}
    for g in analysis.groups:
        if len(g.producers) == 1 and len(g.consumers) == 1 and analysis.layer(g.producers[0]).kind != "linear":
            out[g.producers[0]] = g.consumers[0]
    return out


def _requant_graph(shape: Sequence[int]) -> bytes:
    """``Clip -> QuantizeLinear -> DequantizeLinear`` of a tensor: what a consumer's int8 table
    pays for its input and a fused producer already did."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "z"),
             numpy_helper.from_array(np.array(0, np.uint8), "lo"), numpy_helper.from_array(np.array(15, np.uint8), "hi")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("Clip", ["q", "lo", "hi"], ["c"]),
             helper.make_node("DequantizeLinear", ["c", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "requant", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _layer_graph(layer: LayerInfo, mod: nn.Module, cin: int, cout: int, batch: int, int8: bool,
                 fused: bool = False, float_weights: bool = False) -> bytes:
    """One layer as ONNX bytes, in the node pattern the exporter writes (see the module docstring);
    ``fused``: followed by ``Relu`` and the consumer's requantization, as inside the network."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    linear = layer.kind == "linear"
    groups = cout if layer.depthwise else layer.groups
    w_shape = (cout, cin) if linear else (cout, cin // groups, *mod.kernel_size)
    in_shape = [batch, *layer.in_shape[:-1], cin] if linear else [batch, cin, *layer.in_shape[1:]]
    inits = [numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b")]
    nodes, x, w = [], "x", "w"
    if int8:
        inits += [numpy_helper.from_array(np.array(0, np.uint8), "lo"),
                  numpy_helper.from_array(np.array(15, np.uint8), "hi"),
                  numpy_helper.from_array(np.array(0.05, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.uint8), "z"),
                  numpy_helper.from_array(rng.integers(-7, 8, w_shape).astype(np.int8), "wq"),
                  numpy_helper.from_array(rng.uniform(0.001, 0.01, cout).astype(np.float32), "ws"),
                  numpy_helper.from_array(np.zeros(cout, np.int8), "wz")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),  # integer-domain clip, as exported
                  helper.make_node("Clip", ["xq", "lo", "hi"], ["xc"]),
                  helper.make_node("DequantizeLinear", ["xc", "s", "z"], ["xd"])]
        x, w = "xd", "wd"
        if float_weights:
            inits.append(numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32), "wd"))
        else:
            nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0))
    else:
        inits.append(numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32), "w"))
    if linear:
        nodes.append(helper.make_node("Gemm", [x, w, "b"], ["y"], transB=1))
    else:
        k = len(mod.kernel_size)
        pads = list(mod.padding) * 2 if isinstance(mod.padding, tuple) else None
        if pads is None:
            raise ProfileError(f"layer {layer.name!r} uses padding={mod.padding!r}; the ONNX profile needs explicit padding")
        y = "conv" if fused else "y"
        nodes.append(helper.make_node("Conv", [x, w, "b"], [y], group=groups, kernel_shape=list(mod.kernel_size),
                                      strides=list(mod.stride), pads=pads, dilations=list(mod.dilation)[:k]))
        if fused:
            inits.append(numpy_helper.from_array(np.array(0.02, np.float32), "so"))
            nodes += [helper.make_node("Relu", ["conv"], ["r"]), helper.make_node("QuantizeLinear", ["r", "so", "z"], ["rq"]),
                      helper.make_node("Clip", ["rq", "lo", "hi"], ["rc"]),
                      helper.make_node("DequantizeLinear", ["rc", "so", "z"], ["y"])]
    graph = helper.make_graph(nodes, layer.name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _null_graph(shape: Sequence[int]) -> bytes:
    """A graph that only reads its input and returns one number: what a run costs by itself
    (binding the input, dispatch), which a layer inside a network does not pay."""
    from onnx import TensorProto, helper

    node = helper.make_node("ReduceMax", ["x"], ["y"], keepdims=0)
    graph = helper.make_graph([node], "null", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _measure(model: nn.Module, analysis: ModelAnalysis, sample: torch.Tensor, widths: Sequence[float], batch: int,
             threads: int, repeats: int, inner: int,
             providers: Sequence[str] = ("CPUExecutionProvider",)) -> tuple[tuple[MeasuredLayer, ...], list[float]]:
    from automl.analysis.prune import prune_model
    from automl.export import ort
    from automl.export.onnx import to_onnx_bytes

    def call(blob: bytes, x: np.ndarray) -> Any:
        return ort.runner(ort.session(blob, threads, providers), x)

    modules = dict(model.named_modules())
    fusable = fused_consumers(analysis)
    calls, index, plans = [], {}, []
    for layer in analysis.layers:
        points, in_p, out_p = _grid_points(analysis, layer, widths)
        plans.append((layer, in_p, out_p))
        for (wi, wo), (cin, cout) in points.items():
            index[layer.name, wi, wo] = len(calls)
            shape = [batch, *layer.in_shape[:-1], cin] if layer.kind == "linear" else [batch, cin, *layer.in_shape[1:]]
            x = np.random.default_rng(1).uniform(0, 1, shape).astype(np.float32)
            for int8 in (False, True):
                blob = _layer_graph(layer, modules[layer.name], cin, cout, batch, int8)
                calls.append(call(blob, x))
            calls.append(call(_null_graph(shape), x))
            blob = _layer_graph(layer, modules[layer.name], cin, cout, batch, True, float_weights=True)
            calls.append(call(blob, x))
            if layer.name in fusable:
                blob = _layer_graph(layer, modules[layer.name], cin, cout, batch, True, fused=True)
                calls.append(call(blob, x))
                out_shape = [batch, cout, *layer.out_shape[1:]]
                y = np.random.default_rng(2).uniform(0, 1, out_shape).astype(np.float32)
                calls.append(call(_requant_graph(out_shape), y))
    x = sample[:1].detach().cpu().expand(batch, *sample.shape[1:]).contiguous()
    for w in widths:
        net = model if w == 1.0 else prune_model(model, analysis, _uniform_policy(analysis, w))
        calls.append(call(to_onnx_bytes(net.eval(), x[:1]), x.numpy()))
    ms = ort.best_ms(calls, repeats, inner=inner)
    layers = []
    for layer, in_p, out_p in plans:

        def grid(k: int, name: str = layer.name, in_p: bool = in_p, out_p: bool = out_p) -> tuple[tuple[float, ...], ...]:
            def at(wi: float, wo: float) -> float:
                i = index[name, wi if in_p else 1.0, wo if out_p else 1.0]
                if k == 4:  # fused: less the null run and the requantization the consumer's table holds
                    return max(ms[i + 4] - ms[i + 2] - max(ms[i + 5] - ms[i + 2], 0.0), 0.0)
                return max(ms[i + k] - ms[i + 2], 0.0)  # less what a run of the null graph costs

            return tuple(tuple(at(wi, wo) for wo in widths) for wi in widths)

        in_total = sum(s.channels * s.features_per_channel for s in layer.in_segments)
        fused = (grid(4), fusable[layer.name]) if layer.name in fusable else (None, "")
        layers.append(MeasuredLayer(layer.name, int(in_total), layer.out_channels, grid(0), grid(1), *fused, grid(3)))
    return tuple(layers), ms[-len(widths):]


def measure_ort_profile(
    model: nn.Module,
    sample_input: torch.Tensor,
    analysis: ModelAnalysis,
    *,
    batch: int = 1,
    threads: int = 1,
    widths: Sequence[float] = DEFAULT_WIDTHS,
    repeats: int | None = None,
    name: str | None = None,
    provider: str = "cpu",
) -> MeasuredProfile:
    """Measure ``model``'s layers in ONNX Runtime at ``batch`` samples per run (see the module docstring).

    ``repeats`` round-robin rounds (default 15 at batch 1, 3 above); at batch 1 each round
    makes 3 calls per configuration, above it 2. ``provider`` is the execution provider timed:
    ``cpu``, ``cuda`` or ``tensorrt`` (the first GPU; nodes it cannot run fall back to the CPU,
    as they would in a deployment with the same providers).

    Raises:
        ConfigError: a bad batch, thread count, repeat count or provider name.
        ProfileError: the installed onnxruntime lacks ``provider`` (the message names those it has).
    """
    widths = tuple(float(w) for w in widths)
    if batch < 1 or threads < 1 or (repeats is not None and repeats < 1):
        raise ConfigError(f"batch, threads and repeats must be >= 1, got batch={batch}, threads={threads}, repeats={repeats}")
    providers = check_provider(provider)
    repeats = repeats or (15 if batch == 1 else 3)
    was_training = model.training
    model.eval()
    try:
        layers, whole = _measure(model, analysis, sample_input, widths, batch, threads, repeats, 3 if batch == 1 else 2,
                                 providers)
    finally:
        model.train(was_training)
    alpha = layer_scale(analysis, layers, widths, whole)
    layers = tuple(_scaled(m, alpha) for m in layers)
    fixed, per_kelem = fit_overhead(analysis, layers, widths, whole)
    where = (f"CPU provider on {cpu_model()}, {threads} thread(s)" if provider == "cpu" else
             f"{providers[0]} on {gpu_model()} (inputs and outputs bound on the GPU; unsupported nodes on the CPU)")
    profile = MeasuredProfile(
        name=name or profile_name(provider, batch), widths=widths, layers=layers,
        overhead_ms=fixed, overhead_us_per_kelem=per_kelem, engine=providers[0], threads=threads,
        runtime=RUNTIME, batch=batch, int8_capped=False,
        description=(f"ONNX Runtime {where}, batch {batch}: milliseconds per "
                     f"run of {batch} sample(s); int8 = the exporter's QDQ layer; best of {repeats} round-robin rounds; "
                     f"layer tables scaled by {alpha:.3f} to the whole networks timed in the same run"),
    )
    return replace(profile, stated_error=_uniform_error(profile, analysis, widths, whole))


def layer_scale(analysis: ModelAnalysis, layers: Sequence[MeasuredLayer], widths: Sequence[float],
                whole_ms: Sequence[float]) -> float:
    """The factor that brings the layers timed alone to what they take inside the network.

    A layer run as its own graph pays costs it does not pay inside the network (a run's
    input and output handling beyond the null graph, cold caches, which a loaded machine
    makes worse). The uniformly pruned networks timed in the same run give the factor:
    non-negative least squares of ``whole = alpha * sum(layers) + fixed + per-element cost``.
    """
    from scipy.optimize import nnls

    from automl.cost.profiles import interpolate, monotone_tables
    from automl.export.torch_profile import _uniform_features

    fl, _ = monotone_tables(layers, analysis.names)
    rows = []
    for w in widths:
        fi, fo, elems = _uniform_features(analysis, w)
        rows.append([float(interpolate(fl, widths, fi, fo).sum()), 1.0, elems / 1e3])
    (alpha, _, _), _ = nnls(np.array(rows), np.asarray(whole_ms, dtype=float))
    return float(alpha) if alpha > 0 else 1.0


def _scaled(m: MeasuredLayer, alpha: float) -> MeasuredLayer:
    def scale(t: tuple[tuple[float, ...], ...] | None) -> tuple[tuple[float, ...], ...] | None:
        return None if t is None else tuple(tuple(alpha * v for v in row) for row in t)

    return replace(m, float_ms=scale(m.float_ms), int8_ms=scale(m.int8_ms), fused_ms=scale(m.fused_ms),
                   qin_ms=scale(m.qin_ms))


def _uniform_error(profile: MeasuredProfile, analysis: ModelAnalysis, widths: Sequence[float], whole: Sequence[float]) -> float:
    """Largest relative error of ``profile`` on the uniformly pruned float networks it timed."""
    from automl.cost.model import CostModel
    from search_spaces import SearchSpace, SpaceConfig

    space = SearchSpace.build(analysis, SpaceConfig(weight_bits=(0, 32), act_bits=(32,), n_groups=1, pinned_bits=32))
    cm = CostModel(analysis, space, [profile])
    key = f"latency@{profile.name}"
    errors = []
    for w, ms in zip(widths, whole, strict=True):
        errors.append(abs(cm.price(_uniform_policy(analysis, w)).value(key) - ms) / ms)
    return float(max(errors))


def ort_profile(model: nn.Module, sample_input: torch.Tensor, analysis: ModelAnalysis, *, batch: int = 1,
                threads: int = 1, force: bool = False, name: str | None = None, cache_dir: Path | None = None,
                widths: Sequence[float] = DEFAULT_WIDTHS, repeats: int | None = None,
                provider: str = "cpu") -> tuple[MeasuredProfile, Path]:
    """The cached ONNX Runtime profile of this model, provider, processor, thread count and batch;
    measured on a miss (see :func:`measure_ort_profile`)."""
    check_provider(provider)  # before a cache lookup: a cached GPU profile is no use where the provider is missing
    path = cache_path(analysis, threads, batch, cache_dir, provider)
    if path.is_file() and not force:
        profile = load_profile(path)
        assert isinstance(profile, MeasuredProfile)
    else:
        profile = measure_ort_profile(model, sample_input, analysis, batch=batch, threads=threads, widths=widths,
                                      repeats=repeats, provider=provider)
        save_profile(profile, path)
    if name is not None and profile.name != name:
        profile = replace(profile, name=name)
    return profile, path


def resolve_profiles(refs: Iterable[str | Path], model: nn.Module, sample_input: torch.Tensor, analysis: ModelAnalysis,
                     threads: int = 1) -> tuple[HardwareProfile, ...]:
    """Load every profile reference; ``ort-cpu`` and ``ort-cpu-b<N>`` are this model's cached
    ONNX Runtime profiles at batch 1 and ``N`` (measured on first use, a few seconds to a minute),
    ``ort-cuda[-b<N>]`` and ``ort-tensorrt[-b<N>]`` the same on a GPU provider."""
    out: list[HardwareProfile] = []
    for ref in dict.fromkeys(refs):
        match = ORT_NAME.match(str(ref))
        if match:
            out.append(ort_profile(model, sample_input, analysis, batch=int(match.group(2) or 1), threads=threads,
                                   name=str(ref), provider=match.group(1))[0])
        else:
            out.append(load_profile(ref))
    return tuple(out)


def describe(profile: MeasuredProfile) -> dict[str, Any]:
    """Summary figures of a measured profile: whole-network float vs int8 at full width."""
    fl = sum(np.asarray(m.float_ms)[-1, -1] for m in profile.layers)
    q8 = sum(np.asarray(m.int8_ms)[-1, -1] for m in profile.layers)
    return {"name": profile.name, "runtime": profile.runtime, "engine": profile.engine, "batch": profile.batch,
            "threads": profile.threads,
            "layers_float_ms": float(fl), "layers_int8_ms": float(q8), "overhead_ms": profile.overhead_ms,
            "stated_error": profile.stated_error}
