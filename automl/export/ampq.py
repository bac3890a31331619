"""Export the winning policy as a genuinely smaller quantized model file, and load it back.

:func:`export_policy` removes the pruned channels of the evaluated quantized network
(:func:`automl.analysis.prune.prune_model`), packs each quantized channel's integer codes
at its bit-width and writes one file; :func:`load_exported` rebuilds a runnable
``torch.fx.GraphModule`` from it alone. Not TorchScript or ``torch.export``: both keep
every weight as a float tensor (float-sized files) and TorchScript is deprecated. The
pruned, BatchNorm-folded network is traced with ``torch.fx`` and its graph stored as JSON:
``torch.nn`` leaf modules by class and constructor arguments, functions from an allow-list,
tensor methods by name. Nothing is unpickled at load.

Layout: magic ``b"AMPQEXP\\0"``, uint32 format version, uint32 header length ``H``, ``H``
bytes of zlib-compressed JSON (graph, modules, tensor table ``name -> [numpy dtype, shape]``
in file order, data length, CRC-32), then the tensors' bytes back to back. A quantized
layer ``L`` stores ``L.bits`` (uint8 per kept output channel), ``L.scale`` (float32 per
kept quantized channel, BatchNorm-correction factor folded in), ``L.codes`` (one stream:
the codes of its quantized channels plus ``2^(b-1) - 1``, at ``b`` bits each, LSB-first,
the channels of the narrowest width first and channel order within a width, padded once
to a byte), ``L.float`` (float32 rows of 32-bit channels, possibly none), ``L.bias``
(float32, correction offset folded in). Every quantized layer stores the same tensors
whatever its bits, so the header hardly depends on the policy and
:func:`container_bytes` prices it. Other modules store their ``state_dict`` unchanged.
:class:`automl.cost.model.CostModel` prices exactly these bytes (see its size convention).

A layer with an N:M pattern (``LayerPolicy.nm``) stores only its kept weights: ``L.codes``
and ``L.float`` hold, per kept output channel, the ``N`` kept values of every block of ``M``
along its reduction dimension (in row order; a block of a greedy transposable mask that
keeps fewer stores zeros at its first free positions), and ``L.index`` (uint8) names each block's
kept positions as the rank of that ``N``-subset of ``0..M-1`` in lexicographic order, at
``ceil(log2 C(M, N))`` bits per block (3 for 2:4, 7 for 4:8), LSB-first, the kept channels in
order, padded once to a byte. The mask was fitted on the unpruned layer, so the rows span
its full reduction dimension; the module's header entry ``nm`` gives the pattern, the
unpruned input width and, when upstream pruning removed inputs, the kept inputs as a hex
bit mask, which the loader drops after scattering the values back. Format version 3 holds
such layers; a file without one is written as version 2, as before.
"""

from __future__ import annotations

import copy
import functools
import inspect
import io
import itertools
import json
import math
import operator
import os
import statistics
import struct
import tempfile
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from automl.analysis.graph import trace
from automl.analysis.prune import in_keep_mask, keep_masks, prune_model
from automl.errors import ExportError, PolicyError
from automl.paths import new_file_mode
from automl.quant.device import on_cpu
from automl.quant.engine import QuantEngine, QuantLayer
from automl.quant.fake import FLOAT_BITS, weight_qmax
from automl.timing import median_time, pin_threads
from search_spaces.network import ModelAnalysis
from search_spaces.policy import Policy, parse_nm
from search_spaces.space import SearchSpace

if TYPE_CHECKING:
    from automl.cost.model import CostModel

MAGIC = b"AMPQEXP\x00"
FORMAT_VERSION = 3  # the newest: compact N:M layers; files without one are written as version 2
_READABLE = (2, FORMAT_VERSION)
AGREE_TOL = 1e-4
_PREFIX = struct.Struct("<8sII")
_MAX_CODE_BITS = 24  # codes pass through a float32 weight while pruning: exact up to 2^24
_NAMESPACES = {"_operator": operator, "torch": torch._C._VariableFunctions, "torch.functional": torch.functional,
               "torch.nn.functional": F, "torch._C._nn": torch._C._nn}  # the last: F.linear, F.gelu, attention, ...
_DENIED = {"call", "attrgetter", "itemgetter", "methodcaller"}  # operator functions that call or build callables
_HOW = "Export the model again with automl.export.ampq.export_policy."


def fake_quantize(x: torch.Tensor, scale: float, qmin: int, qmax: int) -> torch.Tensor:
    """Round ``x`` to the grid ``scale * [qmin, qmax]``: the input quantizer of a loaded layer.

    The expression :class:`~automl.quant.engine.QuantLayer` evaluates in inference, so
    both round on the same grid.
    """
    return x.mul(1.0 / scale).round_().clamp_(qmin, qmax).mul_(scale)


def _code_planes(codes: np.ndarray, bits: int) -> np.ndarray:
    """The ``n * bits`` bits (LSB first) of signed codes in ``[-(2^(b-1)-1), 2^(b-1)-1]``."""
    u = codes.astype(np.int64).ravel() + ((1 << (bits - 1)) - 1)
    assert u.min(initial=0) >= 0 and u.max(initial=0) < (1 << bits), "code outside its bit-width"
    return _uint_planes(u, bits)


def _uint_planes(values: np.ndarray, bits: int) -> np.ndarray:
    """The ``n * bits`` bits (LSB first) of unsigned ``values`` below ``2^bits``."""
    return ((values.astype(np.int64).ravel()[:, None] >> np.arange(bits)) & 1).astype(np.uint8).ravel()


def _planes_uint(planes: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`_uint_planes` for the first ``count`` values."""
    return (planes[: count * bits].reshape(count, bits).astype(np.int64) << np.arange(bits)).sum(axis=1)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack signed codes in ``[-(2^(b-1)-1), 2^(b-1)-1]`` into ``ceil(n * bits / 8)`` bytes."""
    return np.packbits(_code_planes(codes, bits), bitorder="little")


def _decode_planes(planes: np.ndarray, bits: int, count: int) -> np.ndarray:
    return _planes_uint(planes, bits, count) - ((1 << (bits - 1)) - 1)


def unpack_codes(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``count`` signed int64 codes of ``bits`` bits each."""
    return _decode_planes(np.unpackbits(data, count=count * bits, bitorder="little"), bits, count)


@functools.cache
def nm_index_table(n: int, m: int) -> tuple[np.ndarray, np.ndarray, int]:
    """How an N:M block's kept positions are stored.

    Returns ``(rank, positions, bits)``: ``rank[k]`` is the index of the ``m``-bit keep
    pattern ``k`` (bit ``j`` = position ``j`` kept) among the ``N``-subsets of ``0..M-1`` in
    lexicographic order, -1 where ``k`` does not keep exactly ``n``; ``positions[r]`` the
    ``n`` ascending positions of index ``r``; ``bits = ceil(log2 C(m, n))`` per stored index.
    """
    positions = np.array(list(itertools.combinations(range(m), n)), dtype=np.int64)
    rank = np.full(1 << m, -1, dtype=np.int64)
    rank[(1 << positions).sum(axis=1)] = np.arange(len(positions))
    return rank, positions, math.ceil(math.log2(len(positions)))


def _pack_uint(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``values`` below ``2^bits`` at ``bits`` bits each, LSB-first, padded to a byte."""
    return np.packbits(_uint_planes(values, bits), bitorder="little")


def _unpack_uint(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    return _planes_uint(np.unpackbits(data, count=count * bits, bitorder="little"), bits, count)


def _encode(a: Any) -> Any:
    if isinstance(a, fx.Node):
        return {"node": a.name}
    if isinstance(a, (tuple, list)):
        items = [_encode(x) for x in a]
        return {"tuple": items} if isinstance(a, tuple) else items
    if isinstance(a, dict):
        return {"dict": [[k, _encode(v)] for k, v in a.items()]}
    if isinstance(a, slice):
        return {"slice": [_encode(a.start), _encode(a.stop), _encode(a.step)]}
    if isinstance(a, torch.dtype):
        return {"dtype": str(a).removeprefix("torch.")}
    if a is None or isinstance(a, (bool, int, float, str)):
        return a
    raise ExportError(f"cannot store the value {a!r} ({type(a).__name__}) of the traced graph: expected tensors, numbers, "
                      "strings, tuples, lists, dicts, slices or dtypes (not Ellipsis). Pass such settings as plain values in forward().")


def _decode(a: Any, env: dict[str, fx.Node]) -> Any:
    if isinstance(a, list):
        return [_decode(x, env) for x in a]
    if not isinstance(a, dict):
        return a
    ((key, value),) = a.items()
    if key == "node":
        return env[value]
    if key in ("tuple", "slice"):
        items = tuple(_decode(x, env) for x in value)
        return items if key == "tuple" else slice(*items)
    if key == "dict":
        return {k: _decode(v, env) for k, v in value}
    if key == "dtype" and isinstance(getattr(torch, value, None), torch.dtype):
        return getattr(torch, value)
    raise ExportError(f"the file holds the unknown value {a!r}; it is corrupt or from a newer version. {_HOW}")


def _resolve_function(name: str) -> Any:
    """The allowed function ``"module:name"`` stands for; anything else is refused."""
    if name in ("builtins:getattr", f"{__name__}:fake_quantize"):
        return getattr if name == "builtins:getattr" else fake_quantize
    module, _, attr = name.partition(":")
    fn = getattr(_NAMESPACES[module], attr, None) if module in _NAMESPACES else None
    if fn is None or attr.startswith("_") or attr in _DENIED or getattr(fn, "__module__", None) != module:
        raise ExportError(f"the graph calls {name!r}, which an export file cannot name: expected a function of operator, "
                          "torch or torch.nn.functional (torch._C._nn). Wrap other code in a torch.nn module the model owns.")
    return fn


def _module_spec(mod: nn.Module) -> dict[str, Any]:
    """Class name and constructor arguments of a ``torch.nn`` module, read back from its attributes."""
    cls = type(mod)
    if getattr(nn, cls.__name__, None) is not cls:
        raise ExportError(f"cannot store a {cls.__module__}.{cls.__name__} module: expected a torch.nn module (fx traces "
                          "into the model's own modules). Make it traceable or build it from torch.nn modules.")
    kwargs = {}
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.name in ("device", "dtype") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if not hasattr(mod, p.name):
            raise ExportError(f"cannot rebuild {cls.__name__}: its argument {p.name!r} is not kept as an attribute")
        value = getattr(mod, p.name)
        if isinstance(value, torch.Tensor) or (value is None and isinstance(p.default, bool)):
            value = value is not None  # a flag such as bias=True is kept as the parameter itself
        kwargs[p.name] = _encode(value)
    return {"type": cls.__name__, "kwargs": kwargs}


def _graph_nodes(gm: fx.GraphModule, tensors: dict[str, np.ndarray]) -> list[list[Any]]:
    nodes = []
    for node in gm.graph.nodes:
        target: Any = node.target
        if node.op == "call_function":
            target = f"{getattr(target, '__module__', None)}:{getattr(target, '__name__', None)}"
            if _resolve_function(target) is not node.target:
                raise ExportError(f"the graph calls {node.target!r}, which is not {target!r}; it cannot be stored")
        elif node.op == "get_attr":
            tensors[f"attr:{target}"] = _array(functools.reduce(getattr, target.split("."), gm))
        nodes.append([node.name, node.op, target, _encode(node.args), _encode(node.kwargs)])
    return nodes


def _build_graph(nodes: list[list[Any]]) -> fx.Graph:
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for name, op, target, args, kwargs in nodes:
        if op == "call_function":
            target = _resolve_function(target)
        args, kwargs = _decode(args, env), _decode(kwargs, env)
        bad_method = op == "call_method" and (target.startswith("_") or not hasattr(torch.Tensor, target))
        if bad_method or (target is getattr and (len(args) != 2 or str(args[1]).startswith("_"))):
            raise ExportError(f"the file calls {target!r} {args[1:]!r}, which is not a public tensor method or attribute")
        if op == "output":
            graph.output(args[0])
        else:
            env[name] = graph.create_node(op, target, args, kwargs, name=name)
    return graph


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def _raw_op(ql: QuantLayer, has_bias: bool) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A copy of ``ql``'s op whose weight rows hold integer codes (quantized channels) or
    float weights (32-bit channels), and the per-channel bits and scales. The BatchNorm
    correction ``out * a + c`` is folded: ``a`` into scales and float rows, ``c`` into the
    bias (exact in real arithmetic, equal up to float rounding)."""
    bits = ql.bits.clone()
    shape = (-1,) + (1,) * (ql.w_float.dim() - 1)
    live = (bits > 0).to(ql.w_float.dtype)
    quant = (bits > 0) & (bits < FLOAT_BITS)
    scale = getattr(ql, "_scale", torch.ones_like(live)).detach().clamp_min(1e-12)
    if ql.qat:  # the weights Evaluator.finetune trained, quantized as its forward does
        w, b = ql.masked(ql.w_param.detach() * live.view(shape)), ql.b_param.detach() * live
    else:
        w, b = ql.weight, ql.bias
    qmax = weight_qmax(bits).view(shape)
    codes = torch.clamp(torch.round(w / scale.view(shape)), -qmax, qmax)
    if ql.correction is not None:
        a, c = (t.detach() for t in ql.correction)
        w, scale, b = w * a.view(shape), scale * a, b * a + c
    op = copy.deepcopy(ql.op)
    op.weight = nn.Parameter(torch.where(quant.view(shape), codes, w), requires_grad=False)
    # Fine-tuning trains a bias even where the float layer had none: keep it if it is used.
    op.bias = nn.Parameter(b.clone(), requires_grad=False) if has_bias or bool(b.any()) else None
    return op, bits, torch.where(quant, scale, torch.ones_like(scale))


def _check_policy(analysis: ModelAnalysis, policy: Policy, layers: dict[str, QuantLayer]) -> dict[int, np.ndarray]:
    masks = keep_masks(analysis, policy)
    for layer in analysis.layers:
        if layer.name not in layers:
            raise ExportError(f"layer {layer.name!r} is not quantized in the given model: expected the network of "
                              "QuantEngine.apply() or Evaluator.finetune(), got one without a QuantLayer there")
        kept = masks[layer.out_group]
        if layers[layer.name].nm != policy[layer.name].nm:
            raise PolicyError(f"layer {layer.name!r}: the model runs N:M pattern {layers[layer.name].nm or 'dense'!r}, the "
                              f"policy asks {policy[layer.name].nm or 'dense'!r}. Pass the policy applied to this model.")
        runs, want = _array(layers[layer.name].bits), np.asarray(policy[layer.name].weight_bits)
        if (runs[kept] != want[kept]).any() or (runs[~kept] != 0).any():
            raise PolicyError(f"layer {layer.name!r}: the model runs channel bits {runs.tolist()}, the policy (coupling "
                              f"applied) asks {np.where(kept, want, 0).tolist()}. Pass the policy applied to this model.")
        wide = sorted({int(b) for b in want[kept]} & set(range(_MAX_CODE_BITS + 1, FLOAT_BITS)))
        if wide:
            raise ExportError(f"layer {layer.name!r} has {wide}-bit weights; export stores codes of at most "
                              f"{_MAX_CODE_BITS} bits. Allow 32 (float) instead of such widths.")
    return masks


def _quant_tensors(
    name: str, rows: np.ndarray, bits: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
    nm: tuple[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The tensors of one quantized layer from its kept channels' ``rows`` (codes, or float
    weights for 32-bit channels); ``nm`` = (pattern, keep mask of ``rows``) stores only the kept values."""
    bits_np = _array(bits).astype(np.int64)
    quant = bits_np < FLOAT_BITS
    index = {}
    if nm is not None:
        n, m, _ = parse_nm(nm[0])
        rank, _, index_bits = nm_index_table(n, m)
        keep = _exactly_n(nm[1].reshape(len(rows), -1, m), n)
        ranks = rank[(keep.astype(np.int64) << np.arange(m)).sum(axis=2)]
        keep = keep.reshape(rows.shape)
        assert (ranks >= 0).all() and not rows[~keep].any(), f"{name}: a weight outside its {nm[0]} mask is not 0"
        rows = rows[keep].reshape(len(rows), -1)
        index = {f"{name}.index": _pack_uint(ranks, index_bits)}
    planes = [_code_planes(rows[bits_np == b].round().astype(np.int64), b) for b in sorted({int(x) for x in bits_np[quant]})]
    out = {f"{name}.bits": bits_np.astype(np.uint8), f"{name}.scale": _array(scale)[quant].astype(np.float32),
           f"{name}.codes": np.packbits(np.concatenate([np.zeros(0, np.uint8), *planes]), bitorder="little"),
           f"{name}.float": rows[~quant].astype(np.float32), **index}
    if bias is not None:
        out[f"{name}.bias"] = _array(bias).astype(np.float32)
    return out


def _exactly_n(blocks: np.ndarray, n: int) -> np.ndarray:
    """``blocks`` (``[..., M]`` bool, at most ``n`` kept each) with the first unkept positions
    added until each keeps exactly ``n``: a greedy transposable mask can keep fewer in a
    block, and storage holds ``n`` values per block whatever (the added ones are zeros)."""
    m = blocks.shape[-1]
    assert int(blocks.sum(axis=-1).max(initial=0)) <= n, "a block keeps more than N weights"
    score = blocks * (2 * m) + (m - np.arange(m))  # kept first, then lower positions
    chosen = np.argsort(-score, axis=-1, kind="stable")[..., :n]
    out = np.zeros_like(blocks)
    np.put_along_axis(out, chosen, True, axis=-1)
    return out


def _nm_layer(
    ql: QuantLayer, full: torch.Tensor, analysis: ModelAnalysis, name: str, masks: dict[int, np.ndarray]
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """An N:M layer's header entry and, over its kept output channels, its unpruned-input rows and keep mask."""
    assert ql.nm_keep is not None
    out_keep = masks[analysis.layer(name).out_group]
    in_keep = in_keep_mask(analysis, name, masks)
    spec: dict[str, Any] = {"pattern": ql.nm, "in_features": int(full.shape[1]), "in_keep": None}
    if not in_keep.all():
        assert in_keep.size == full.shape[1], "only ungrouped layers lose inputs"
        spec["in_keep"] = np.packbits(in_keep, bitorder="little").tobytes().hex()
    rows = _array(full.reshape(full.shape[0], -1))[out_keep]
    keep = _array(ql.nm_keep.reshape(full.shape[0], -1)).astype(bool)[out_keep]
    return spec, rows, keep


def _pruned_graph(
    qmodel: nn.Module, analysis: ModelAnalysis, policy: Policy, layers: dict[str, QuantLayer]
) -> tuple[fx.GraphModule, dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """The traced, pruned float skeleton (raw codes as weights) and per layer (bits, scales,
    raw weight before pruning)."""
    # every QuantLayer is replaced below: not copying it (with its weight banks) saves most of the copy
    skeleton = copy.deepcopy(qmodel, {id(ql): nn.Identity() for ql in layers.values()}).eval()
    per_channel = {}
    for layer in analysis.layers:
        op, bits, scale = _raw_op(layers[layer.name], layer.bias_params > 0 or layer.folded_bn is not None)
        per_channel[layer.name] = (bits, scale, op.weight.detach())
        skeleton.set_submodule(layer.name, op)
    # Folded BatchNorms are Identity in the quantized model: only the remaining ones follow a group.
    bn = nn.modules.batchnorm._BatchNorm
    groups = tuple(
        replace(g, followers=tuple(f for f in g.followers if isinstance(skeleton.get_submodule(f), bn)))
        for g in analysis.groups
    )
    gm = trace(prune_model(skeleton, replace(analysis, groups=groups), policy))
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        if isinstance(gm.get_submodule(node.target), nn.Identity):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
        elif node.target in layers and (act := layers[node.target].act) is not None:
            with gm.graph.inserting_before(node):
                quantized = gm.graph.call_function(fake_quantize, (node.args[0], float(act[0]), int(act[1]), int(act[2])))
            node.replace_input_with(node.args[0], quantized)
    gm.delete_all_unused_submodules()
    return gm, per_channel


def _encode_network(qmodel: nn.Module, analysis: ModelAnalysis, policy: Policy) -> tuple[dict, dict[str, np.ndarray]]:
    """The header fields and tensors of the pruned, packed network (encoded from a copy on the CPU)."""
    qmodel = on_cpu(qmodel)
    layers = {n: m for n, m in qmodel.named_modules() if isinstance(m, QuantLayer)}
    masks = _check_policy(analysis, policy, layers)
    gm, per_channel = _pruned_graph(qmodel, analysis, policy, layers)
    tensors: dict[str, np.ndarray] = {}
    modules: dict[str, Any] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target in modules:
            continue
        mod = gm.get_submodule(node.target)
        spec = _module_spec(mod)
        if node.target in layers:
            keep = torch.from_numpy(masks[analysis.layer(node.target).out_group])
            spec["quantized"] = True
            bits, scale, full = per_channel[node.target]
            nm = None
            if layers[node.target].nm:
                spec["nm"], rows, nm_keep = _nm_layer(layers[node.target], full, analysis, node.target, masks)
                nm = (layers[node.target].nm, nm_keep)
            else:
                rows = _array(mod.weight.detach().reshape(mod.weight.shape[0], -1))
            tensors.update(_quant_tensors(node.target, rows, bits[keep], scale[keep], mod.bias, nm))
        else:
            spec["state"] = list(mod.state_dict())
            tensors.update({f"{node.target}.{k}": _array(v) for k, v in mod.state_dict().items()})
        modules[node.target] = spec
    header = {"format": "automl-mpq-export", "nodes": _graph_nodes(gm, tensors), "modules": modules,
              "input_shape": list(analysis.input_shape), "policy_key": policy.key(), "torch": torch.__version__}
    return header, tensors


def _header_blob(header: dict[str, Any], tensors: dict[str, np.ndarray], data: bytes) -> bytes:
    """The compressed header; the tensor table lists dtype and shape (offsets follow from the order)."""
    table = {k: [a.dtype.str, list(a.shape)] for k, a in tensors.items()}
    header = {**header, "tensors": table, "data_bytes": len(data), "data_crc32": zlib.crc32(data)}
    return zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)


def _write(path: Path, header: dict[str, Any], tensors: dict[str, np.ndarray]) -> tuple[int, int]:
    data = b"".join(np.ascontiguousarray(a).tobytes() for a in tensors.values())
    head = _header_blob(header, tensors, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the oldest version that holds the file, so that dense files stay readable by older releases
    version = FORMAT_VERSION if any("nm" in spec for spec in header["modules"].values()) else 2
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, new_file_mode())  # mkstemp makes 0600; the file reads like any other the user writes
    with os.fdopen(fd, "wb") as f:  # written aside and renamed: a crash never leaves half a file
        f.write(_PREFIX.pack(MAGIC, version, len(head)) + head + data)
    os.replace(tmp, path)
    return _PREFIX.size + len(head), len(data)


def container_bytes(
    model: nn.Module, analysis: ModelAnalysis, space: SearchSpace, sample_input: torch.Tensor, *,
    power_of_two: bool = False, samples: int = 3, engine: QuantEngine | None = None,
) -> float:
    """Bytes of an export of ``model`` that no layer's tensors account for, for the cost model.

    The 16-byte prefix and the compressed header (graph, module arguments, tensor table,
    activation grids); the constant tensors the graph reads (a class token, a layer scale) are
    priced by the analysis (``ModelAnalysis.unquantized``). Every policy's file has the
    same tensors and graph nodes (only channel counts, shapes and activation scales differ),
    so this is measured on a few random policies of ``space`` (fixed seed) and their median
    taken: how well zlib compresses those numbers varies a little from policy to policy.
    Weights are quantized with max clipping and activation ranges come from ``sample_input``
    alone (neither changes the header's length beyond that noise), unless ``engine`` is given:
    the evaluator's engine of the same model and space, on any device, whose weight banks then
    serve (it is left applying the last of those policies).
    """
    if engine is None:
        engine = QuantEngine(model, analysis, space, [sample_input], weight_method="max", act_method="minmax",
                             power_of_two=power_of_two, device="cpu")
    rng = np.random.default_rng(0)
    sizes = []
    for _ in range(samples):
        policy = space.resolve(space.sample(rng))
        header, tensors = _encode_network(engine.apply(policy), analysis, policy)
        data = b"".join(np.ascontiguousarray(a).tobytes() for a in tensors.values())
        sizes.append(_PREFIX.size + len(_header_blob(header, tensors, data)))
    return float(statistics.median(sizes))


def read_export(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header and raw tensors (codes still packed) of an export file; :class:`ExportError`
    if it is not an automl-mpq export, has another format version, or is truncated or corrupt."""
    blob = Path(path).read_bytes()
    if len(blob) < _PREFIX.size or blob[:8] != MAGIC:
        raise ExportError(f"{path} is not an automl-mpq export: expected it to start with {MAGIC!r}, got {blob[:8]!r}. {_HOW}")
    _, version, head_len = _PREFIX.unpack_from(blob)
    if version not in _READABLE:
        raise ExportError(f"{path} has export format version {version}, expected {' or '.join(map(str, _READABLE))}: load "
                          f"it with the automl-mpq that wrote it. {_HOW}")
    try:
        header = json.loads(zlib.decompress(blob[_PREFIX.size : _PREFIX.size + head_len]))
        data = blob[_PREFIX.size + head_len :]
        expected, crc = int(header["data_bytes"]), int(header["data_crc32"])
    except (zlib.error, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{path} has a corrupt header ({type(exc).__name__}: {exc}). {_HOW}") from exc
    if len(data) != expected or zlib.crc32(data) != crc:
        raise ExportError(f"{path} is corrupt: expected {expected} data bytes with CRC-32 {crc:#010x}, got {len(data)} "
                          f"with CRC-32 {zlib.crc32(data):#010x} (truncated or modified). {_HOW}")
    out, offset = {}, 0
    try:
        for k, (dt, sh) in header["tensors"].items():
            count = int(np.prod(sh))
            out[k] = np.frombuffer(data, dt, count, offset).reshape(sh)
            offset += count * np.dtype(dt).itemsize
    except (ValueError, TypeError) as exc:
        raise ExportError(f"{path} has a corrupt tensor table ({type(exc).__name__}: {exc}). {_HOW}") from exc
    return header, out


def _dequantize(name: str, mod: nn.Module, tensors: dict[str, np.ndarray], nm: dict[str, Any] | None = None) -> None:
    rows, scale, quant = stored_rows(name, mod, tensors, nm)
    rows = torch.where(quant[:, None], rows * scale[:, None], rows)
    with torch.no_grad():
        mod.weight.copy_(rows.view_as(mod.weight))
        if mod.bias is not None:
            mod.bias.copy_(torch.from_numpy(tensors[f"{name}.bias"].copy()))


def stored_rows(name: str, mod: nn.Module, tensors: dict[str, np.ndarray],
                nm: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A stored layer's weight rows as the file holds them: integer codes of its quantized channels and
    float weights of its 32-bit ones (``[C, K]``, N:M values scattered back), the per-channel scale
    (1 for 32-bit channels) and which channels are quantized."""
    bits = torch.from_numpy(tensors[f"{name}.bits"].astype(np.int64))
    width = mod.weight[0].numel()
    if nm is not None:
        n, m, _ = parse_nm(nm["pattern"])
        width = int(nm["in_features"]) * math.prod(mod.weight.shape[2:]) * n // m
    rows = torch.zeros(mod.weight.shape[0], width)
    quant = bits < FLOAT_BITS
    scale = torch.ones(len(bits))
    scale[quant] = torch.from_numpy(tensors[f"{name}.scale"].copy())
    planes, start = np.unpackbits(tensors[f"{name}.codes"], bitorder="little"), 0
    for b in sorted({int(x) for x in bits[quant]}):
        sel = bits == b
        count = int(sel.sum()) * rows.shape[1]
        codes = _decode_planes(planes[start:], b, count)
        start += count * b
        rows[sel] = torch.from_numpy(codes.astype(np.float32)).view(-1, rows.shape[1])
    if not bool(quant.all()):
        rows[~quant] = torch.from_numpy(tensors[f"{name}.float"].copy())
    if nm is not None:
        rows = _nm_scatter(rows, tensors[f"{name}.index"], nm, mod.weight.shape)
    return rows, scale, quant


def _nm_scatter(values: torch.Tensor, index: np.ndarray, nm: dict[str, Any], shape: torch.Size) -> torch.Tensor:
    """The rows of a loaded N:M layer: its kept ``values`` put back at their blocks' positions
    over the unpruned reduction dimension, then the inputs pruned upstream dropped."""
    n, m, _ = parse_nm(nm["pattern"])
    _, positions, index_bits = nm_index_table(n, m)
    channels, in_features = shape[0], int(nm["in_features"])
    k_full = in_features * math.prod(shape[2:])
    blocks = k_full // m
    ranks = _unpack_uint(index, index_bits, channels * blocks)
    if ranks.size and ranks.max() >= len(positions):
        raise ExportError(f"the file's {nm['pattern']} index names block pattern {int(ranks.max())}, of only "
                          f"{len(positions)}: it is corrupt. {_HOW}")
    cols = positions[ranks].reshape(channels, blocks, n) + (np.arange(blocks) * m)[None, :, None]
    full = torch.zeros(channels, k_full).scatter_(1, torch.from_numpy(cols.reshape(channels, -1)), values)
    full = full.view(channels, in_features, -1)
    if nm["in_keep"] is not None:
        keep = np.unpackbits(np.frombuffer(bytes.fromhex(nm["in_keep"]), np.uint8), count=in_features, bitorder="little")
        if int(keep.sum()) != shape[1]:
            raise ExportError(f"the file's N:M input mask keeps {int(keep.sum())} inputs, its layer has {shape[1]}: it is "
                              f"corrupt. {_HOW}")
        full = full[:, torch.from_numpy(keep.astype(bool))]
    return full.reshape(channels, -1)


def load_exported(path: str | os.PathLike[str]) -> fx.GraphModule:
    """Rebuild an exported network (eval mode) from the file alone, without the model's class.

    Weights are dequantized (codes x scale) into plain ``torch.nn`` layers; the graph calls
    :func:`fake_quantize` with the stored activation parameters before each of them. Raises :class:`ExportError` for a file that is
    not a readable export or names a module or function outside the allowed set.
    """
    header, tensors = read_export(path)
    root: dict[str, Any] = {}
    for name, spec in header["modules"].items():
        kwargs = {k: _decode(v, {}) for k, v in spec["kwargs"].items()}
        cls = getattr(nn, spec["type"], None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ExportError(f"{path} names the module type {spec['type']!r}, which is not a torch.nn module. {_HOW}")
        mod = cls(**kwargs)
        if spec.get("quantized"):
            _dequantize(name, mod, tensors, spec.get("nm"))
        else:
            mod.load_state_dict({k: torch.from_numpy(tensors[f"{name}.{k}"].copy()) for k in spec["state"]})
        root[name] = mod
    root.update({k[5:]: torch.from_numpy(v.copy()) for k, v in tensors.items() if k.startswith("attr:")})
    return fx.GraphModule(root, _build_graph(header["nodes"]), class_name="ExportedNetwork").eval()


@dataclass(frozen=True)
class ExportReport:
    """What an exported file really is and does.

    Attributes:
        file_bytes: size on disk, ``header_bytes`` (magic, version, compressed JSON) plus
            ``payload_bytes`` (codes, per-channel bits and scales, biases, float tensors).
        predicted_bytes: the cost model's size of the policy (``None`` without one).
        float_file_bytes: ``torch.save`` of the float model's ``state_dict``.
        params_* / channels_*: parameters of the float model and of the loaded network;
            output channels over the quantizable layers.
        max_abs_diff: largest output difference, loaded file vs in-memory quantized model.
        agreement: fraction of samples whose outputs agree within ``AGREE_TOL``; the rest
            hit an activation rounding tie that float rounding tipped the other way.
        latency_*_ms: median forward time on the sample batch with ``threads`` threads.
        prediction_agreement: fraction of samples whose top class (argmax) is the same for the
            file and the in-memory model; ``None`` when the output is not one score per class.
    """

    path: str
    file_bytes: int
    payload_bytes: int
    header_bytes: int
    predicted_bytes: float | None
    float_file_bytes: int
    params_float: int
    params_exported: int
    channels_float: int
    channels_exported: int
    max_abs_diff: float
    agreement: float
    latency_exported_ms: float
    latency_float_ms: float
    threads: int
    prediction_agreement: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields plus ``real_over_predicted``, ``size_ratio`` and ``latency_ratio`` (over float)."""
        real = None if self.predicted_bytes is None else self.file_bytes / self.predicted_bytes
        size, latency = self.file_bytes / self.float_file_bytes, self.latency_exported_ms / self.latency_float_ms
        return {**asdict(self), "real_over_predicted": real, "size_ratio": size, "latency_ratio": latency}


def _median_ms(fns: list[Any], repeats: int, threads: int) -> list[float]:
    """Median milliseconds of each function; rounds alternate between them so load hits all alike."""
    previous = torch.get_num_threads()
    pin_threads(threads)
    try:
        with torch.inference_mode():
            rounds = [[median_time(fn, 1, warmup=0 if r else 1) for fn in fns] for r in range(repeats)]
    finally:
        pin_threads(previous)
    return [statistics.median(t) * 1e3 for t in zip(*rounds, strict=True)]


def export_policy(
    qmodel: nn.Module | QuantEngine,
    analysis: ModelAnalysis,
    policy: Policy,
    path: str | os.PathLike[str],
    *,
    sample_input: torch.Tensor,
    float_model: nn.Module,
    cost_model: CostModel | None = None,
    threads: int = 1,
    repeats: int = 20,
) -> ExportReport:
    """Write ``qmodel`` with ``policy``'s pruned channels removed and weights packed; measure it.

    Args:
        qmodel: the quantized network that was evaluated: ``engine.apply(policy)`` (after
            ``engine.reestimate_batchnorm`` if used) or what ``Evaluator.finetune`` returns;
            a :class:`QuantEngine` stands for its current ``qmodel``. Never modified.
        analysis: the float model's analysis.
        policy: the policy applied to ``qmodel``.
        path: the file to write (replaced atomically).
        sample_input: the batch on which outputs are compared and latency is measured.
        float_model: the original float network, baseline of latency and file size.
        cost_model: prices the predicted size when given.
        threads: intra-op threads (restored afterwards).
        repeats: timed runs per model.

    Raises:
        PolicyError: ``policy`` is not what ``qmodel`` runs.
        ExportError: the network holds something the file format cannot name.
    """
    if isinstance(qmodel, QuantEngine):
        qmodel = qmodel.qmodel
    # the file is written, loaded back and timed on the CPU, whatever device the search ran on
    qmodel, float_model, sample_input = on_cpu(qmodel), on_cpu(float_model), sample_input.detach().cpu()
    path = Path(path)
    header_bytes, payload_bytes = _write(path, *_encode_network(qmodel, analysis, policy))
    loaded = load_exported(path)
    with torch.no_grad():
        from_file, in_memory = loaded(sample_input), qmodel(sample_input)
    diff = (from_file - in_memory).abs().reshape(len(sample_input), -1).amax(dim=1)
    scores = from_file.ndim == 2 and from_file.shape[1] > 1
    same_class = float((from_file.argmax(1) == in_memory.argmax(1)).float().mean()) if scores else None
    buffer = io.BytesIO()
    torch.save(float_model.state_dict(), buffer)
    baseline = copy.deepcopy(float_model).eval()
    exported_ms, float_ms = _median_ms([lambda: loaded(sample_input), lambda: baseline(sample_input)], repeats, threads)
    return ExportReport(
        path=str(path),
        file_bytes=path.stat().st_size,
        payload_bytes=payload_bytes,
        header_bytes=header_bytes,
        predicted_bytes=None if cost_model is None else float(cost_model.price(policy).size_bytes),
        float_file_bytes=len(buffer.getvalue()),
        params_float=sum(p.numel() for p in float_model.parameters()),
        params_exported=sum(p.numel() for p in loaded.parameters()),
        channels_float=sum(layer.out_channels for layer in analysis.layers),
        channels_exported=sum(loaded.get_submodule(n).weight.shape[0] for n in analysis.names),
        max_abs_diff=float(diff.max()),
        agreement=float((diff <= AGREE_TOL).float().mean()),
        latency_exported_ms=exported_ms,
        latency_float_ms=float_ms,
        threads=threads,
        prediction_agreement=same_class,
    )
