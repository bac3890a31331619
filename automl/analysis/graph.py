"""Trace a network with ``torch.fx`` and record its quantizable layers and channel coupling.

Why our own tracer rather than a pruning library: the search needs exactly two facts per
channel (which layers' outputs share it, which layers' inputs read it, and with how many
features), in a torch-free record that the cost model prices thousands of times a second.
``torch.fx`` gives the data flow; the rules below are about 150 lines and are tested on
residual, depthwise, concatenating and flattening networks.
"""

from __future__ import annotations

import inspect
import math
import operator
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from automl.errors import AnalysisError
from search_spaces.network import ChannelGroup, LayerInfo, ModelAnalysis, Segment

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
# f(0) == 0 and per-channel: a pruned (all-zero) channel stays zero through these.
ZERO_PRESERVING_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.SiLU, nn.GELU, nn.Tanh, nn.Hardtanh, nn.Dropout,
    nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
)
ZERO_PRESERVING_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.hardswish, F.silu, F.gelu, torch.tanh, F.dropout,
    F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    torch.flatten, operator.getitem,
}
ZERO_PRESERVING_METHODS = {"relu", "flatten", "view", "reshape", "contiguous", "mean", "sum", "amax", "clone"}
# Per-element functions that do not keep zero at zero (sigmoid(0) = 0.5): a pruned channel becomes a
# constant, harmless only where it multiplies a channel that is zero (SE gating) and is not read otherwise.
NONZERO_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)
NONZERO_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus, torch.exp}
NONZERO_METHODS = {"sigmoid", "sigmoid_", "exp"}
DIV_OPS = {operator.truediv, operator.itruediv, torch.div, "div", "div_"}
ADD_OPS = {operator.add, operator.iadd, torch.add}
MUL_OPS = {operator.mul, operator.imul, torch.mul}
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def make(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class _Layout:
    """Channel layout of a traced tensor: its channel dimension as segments of groups."""

    segments: list[Segment]
    dim: int  # 1 for (N, C, ...) maps, -1 for (..., F) vectors
    # why a pruned (zero) channel of this tensor is no longer zero ("" when it is): a gate such as a
    # sigmoid; harmless where it multiplies a zero channel, blocking where a layer reads it
    nonzero: str = ""


@dataclass
class _State:
    uf: _UnionFind = field(default_factory=_UnionFind)
    channels: dict[int, int] = field(default_factory=dict)
    producers: dict[int, list[str]] = field(default_factory=dict)
    consumers: dict[int, list[str]] = field(default_factory=dict)
    followers: dict[int, list[str]] = field(default_factory=dict)
    blocked: dict[int, str] = field(default_factory=dict)

    def new_group(self, channels: int, producer: str | None = None, blocked: str | None = None) -> int:
        gid = self.uf.make()
        self.channels[gid] = channels
        self.producers[gid] = [producer] if producer else []
        if blocked:
            self.blocked[gid] = blocked
        return gid

    def block(self, layout: _Layout | None, reason: str) -> None:
        if layout is not None:
            for seg in layout.segments:
                self.blocked.setdefault(seg.group, reason)


def _drop_checks(graph: fx.Graph) -> None:
    """Erase shape checks (``torch._assert``) and the size arithmetic only they used: the traced
    input satisfied them, and an export file cannot name them."""
    dead = [n for n in graph.nodes if n.op == "call_function" and n.target is torch._assert and not n.users]
    while dead:
        node = dead.pop()
        inputs = node.all_input_nodes
        graph.erase_node(node)
        for i in inputs:
            pure = (i.op == "call_function" and getattr(i.target, "__module__", None) in ("_operator", "builtins")) or (
                i.op == "call_method" and i.target in ("size", "dim"))
            if pure and not i.users:
                dead.append(i)


def trace(model: nn.Module, tracer: fx.Tracer | None = None) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` of ``model`` (by ``tracer``, default ``fx.Tracer()``) with one input.

    The arguments of ``forward`` after the first that have defaults (an attention mask left at
    ``None``, a flag) are traced at their defaults, and the placeholders and checks fx keeps for
    them are dropped.
    """
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    concrete = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    tracer = tracer or fx.Tracer()
    graph = tracer.trace(model, concrete_args=concrete or None)
    _drop_checks(graph)
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    if not concrete:
        return gm
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    special = set(placeholders[1:])
    for node in gm.graph.nodes:
        inputs = node.all_input_nodes
        if node.op != "placeholder" and inputs and all(i in special for i in inputs):
            special.add(node)
    for node in reversed(list(gm.graph.nodes)):
        if node in special and all(u in special for u in node.users):
            gm.graph.erase_node(node)
    gm.recompile()
    return gm


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []
    for a in node.args:
        if isinstance(a, fx.Node):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if isinstance(x, fx.Node))
    out.extend(v for v in node.kwargs.values() if isinstance(v, fx.Node))
    return out


def _channels_of(layout: _Layout) -> int:
    return sum(s.channels * s.features_per_channel for s in layout.segments)


class _Analyser:
    def __init__(self, model: nn.Module, sample_input: torch.Tensor) -> None:
        self.model = model
        try:
            self.gm = trace(model)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means the same thing
            raise AnalysisError(
                f"could not trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}). "
                "Channel coupling needs a traceable forward(); move data-dependent control flow out of forward() "
                "or analyse a traceable wrapper."
            ) from exc
        with torch.no_grad():
            ShapeProp(self.gm).propagate(sample_input)
        self.modules = dict(self.gm.named_modules())
        self.st = _State()
        self.layouts: dict[fx.Node, _Layout | None] = {}
        self.layers: list[dict] = []
        self.notes: list[str] = []
        self.folded: dict[str, str] = {}
        self.split_followers: list[tuple[str, tuple[Segment, ...]]] = []

    # rules -------------------------------------------------------------------------
    def _fresh(self, node: fx.Node, reason: str) -> _Layout | None:
        shape = _shape(node)
        if shape is None or len(shape) < 2:
            return None
        return _Layout([Segment(self.st.new_group(shape[1], blocked=reason), shape[1])], 1)

    def _layer(self, node: fx.Node, mod: nn.Module) -> _Layout:
        name = str(node.target)
        src = self.layouts.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        in_shape = _shape(node.args[0]) or ()
        out_shape = _shape(node) or ()
        if isinstance(mod, nn.Linear):
            ok = src is not None and (src.dim == -1 or len(in_shape) == 2) and _channels_of(src) == mod.in_features
            kind, cin, cout, groups = "linear", mod.in_features, mod.out_features, 1
            kernel, stride = (1,), (1,)
            macs = mod.in_features * mod.out_features * math.prod(out_shape[1:-1] or (1,))
        else:
            ok = src is not None and src.dim == 1 and _channels_of(src) == mod.in_channels
            kind = "conv1d" if isinstance(mod, nn.Conv1d) else "conv2d"
            cin, cout, groups = mod.in_channels, mod.out_channels, mod.groups
            kernel, stride = tuple(mod.kernel_size), tuple(mod.stride)
            macs = math.prod(out_shape[1:]) * (cin // groups) * math.prod(kernel)
        if ok and src is not None and src.nonzero:
            self.st.block(src, f"{src.nonzero}, and {name} reads it")
        if not ok:
            self.st.block(src, f"layout of the input of {name} is not understood")
            src = _Layout([Segment(self.st.new_group(cin, blocked=f"input of {name} not traced"), cin)], 1)
        gid = self.st.new_group(cout, producer=name)
        for seg in src.segments:
            self.st.consumers.setdefault(seg.group, []).append(name)
        if groups > 1:
            if groups == cin == cout and len(src.segments) == 1 and src.segments[0].features_per_channel == 1:
                self.st.uf.union(gid, src.segments[0].group)  # depthwise: output c reads only input c
            else:
                self.st.block(src, f"grouped convolution {name}")
                self.st.blocked[gid] = f"grouped convolution {name}"
        weight = mod.weight.numel()
        bias = mod.bias.numel() if mod.bias is not None else 0
        self.layers.append(
            dict(
                name=name, kind=kind, in_channels=cin, out_channels=cout, kernel_size=kernel, stride=stride,
                groups=groups, in_shape=tuple(in_shape[1:]), out_shape=tuple(out_shape[1:]), weight_params=weight,
                bias_params=bias, macs=int(macs), out_group=gid, in_segments=tuple(src.segments),
            )
        )
        return _Layout([Segment(gid, cout)], -1 if kind == "linear" else 1)

    def _call_module(self, node: fx.Node) -> _Layout | None:
        mod = self.modules[str(node.target)]
        src = self.layouts.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        if isinstance(mod, QUANTIZABLE):
            return self._layer(node, mod)
        if isinstance(mod, BATCHNORMS):
            if src is None:
                return src
            if len(src.segments) != 1:  # on a concatenation: each segment's channels follow its own group
                if src.dim != 1 or any(seg.features_per_channel != 1 for seg in src.segments):
                    self.st.block(src, f"BatchNorm {node.target} on features that are not channels")
                    return src
                self.split_followers.append((str(node.target), tuple(src.segments)))
                return src
            self.st.followers.setdefault(src.segments[0].group, []).append(str(node.target))
            parent = node.args[0]
            if (
                isinstance(parent, fx.Node)
                and parent.op == "call_module"
                and isinstance(self.modules[str(parent.target)], (nn.Conv1d, nn.Conv2d))
                and len(parent.users) == 1
            ):
                self.folded[str(parent.target)] = str(node.target)
            return src
        if isinstance(mod, nn.Flatten):
            return self._flatten(node, src)
        if isinstance(mod, ZERO_PRESERVING_MODULES):
            return src
        if isinstance(mod, NONZERO_MODULES) and src is not None:
            return replace(src, nonzero=src.nonzero or f"{type(mod).__name__} {node.target} turns a pruned channel into a constant")
        self.st.block(src, f"module {node.target} ({type(mod).__name__}) is not known to keep zero channels at zero")
        return self._fresh(node, f"output of {node.target}")

    def _flatten(self, node: fx.Node, src: _Layout | None) -> _Layout | None:
        shape_in = _shape(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        shape_out = _shape(node)
        if src is None or shape_in is None or shape_out is None:
            return None
        if src.dim == 1 and len(shape_out) == 2 and len(shape_in) >= 2:
            spatial = math.prod(shape_in[2:])
            if shape_out[1] == shape_in[1] * spatial:
                return _Layout([Segment(s.group, s.channels, s.features_per_channel * spatial) for s in src.segments], 1)
        if shape_out == shape_in:
            return src
        self.st.block(src, f"reshape at {node.name}")
        return self._fresh(node, f"reshape at {node.name}")

    def _constant_operands(self, node: fx.Node, base: _Layout) -> None:
        """Block ``base`` where a constant tensor (a parameter the graph reads) varies along its channels:
        the physically pruned network would keep the constant's full width."""
        for t in _tensor_args(node):
            if t.op != "get_attr":
                continue
            shape = _shape(t) or ()
            dim = len(shape) - 1 if base.dim == -1 else len(shape) - (len(_shape(node) or ()) - 1)
            if 0 <= dim < len(shape) and shape[dim] > 1:
                self.st.block(base, f"per-channel constant {t.target} at {node.name} (kept whole by the export)")

    def _elementwise(self, node: fx.Node, tensors: list[fx.Node]) -> _Layout | None:
        layouts = [self.layouts.get(t) for t in tensors]
        is_mul = node.target in MUL_OPS or node.target == "mul"
        if len(tensors) == 1 and not is_mul:
            if layouts[0] is not None and not any(t.op == "get_attr" for t in _tensor_args(node)):
                lay = layouts[0]  # a scalar added: every channel, a pruned one too, becomes non-zero
                return replace(lay, nonzero=lay.nonzero or f"a constant added at {node.name}")
            self.st.block(layouts[0], f"adding a constant at {node.name}")
            return self._fresh(node, f"constant added at {node.name}")
        known = [lay for lay in layouts if lay is not None]
        out_shape = _shape(node)
        full = [lay for lay, t in zip(layouts, tensors, strict=True) if lay is not None and _shape(t) == out_shape]
        base = full[0] if full else (known[0] if known else None)
        if base is None:
            return None
        if is_mul:  # a zero channel times anything is zero: gates (SE) follow the gated channel's group
            zeros = [lay for lay in known if not lay.nonzero]
            base = next((lay for lay in full if not lay.nonzero), zeros[0] if zeros else base)
        self._constant_operands(node, base)
        for lay in known:
            if lay is base:
                continue
            if [s.channels for s in lay.segments] == [s.channels for s in base.segments]:
                for a, b in zip(lay.segments, base.segments, strict=True):
                    self.st.uf.union(a.group, b.group)
            else:
                self.st.block(lay, f"broadcast at {node.name}")
                self.st.block(base, f"broadcast at {node.name}")
        if not is_mul:
            taint = next((lay.nonzero for lay in known if lay.nonzero), "")
            if len(known) < len(tensors):  # a tensor the analysis does not follow (a constant) is added
                taint = taint or f"a tensor added at {node.name}"
            return replace(base, nonzero=taint) if taint and not base.nonzero else base
        return base

    def _call(self, node: fx.Node) -> _Layout | None:
        tensors = [t for t in _tensor_args(node) if _shape(t) is not None]
        src = self.layouts.get(tensors[0]) if tensors else None
        target = node.target
        if target in ADD_OPS or target in MUL_OPS or target in ("add", "mul", "add_", "mul_"):
            return self._elementwise(node, tensors)
        if target in DIV_OPS and len(tensors) == 1 and tensors[0] is node.args[0] and src is not None:
            return src  # divided by a number: zero stays zero
        if (target in NONZERO_FUNCTIONS or target in NONZERO_METHODS) and src is not None:
            name = getattr(target, "__name__", target)
            return replace(src, nonzero=src.nonzero or f"{name} at {node.name} turns a pruned channel into a constant")
        if target is torch.cat:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            parts = [self.layouts.get(t) for t in node.args[0]]  # type: ignore[union-attr]
            if dim == 1 and all(p is not None and p.dim == 1 for p in parts):
                taint = next((p.nonzero for p in parts if p.nonzero), "")  # type: ignore[union-attr]
                return _Layout([s for p in parts for s in p.segments], 1, taint)  # type: ignore[union-attr]
            for p in parts:
                self.st.block(p, f"concatenation on dim {dim} at {node.name}")
            return self._fresh(node, f"concatenation at {node.name}")
        if target in (torch.flatten, "flatten", "view", "reshape"):
            return self._flatten(node, src)
        if target in (F.conv1d, F.conv2d, F.linear):
            self.notes.append(f"functional {node.name} is not quantized (use an nn.Module layer)")
        if target in ZERO_PRESERVING_FUNCTIONS or target in ZERO_PRESERVING_METHODS:
            shape_in = _shape(tensors[0]) if tensors else None
            shape_out = _shape(node)
            if src is not None and shape_in and shape_out and len(shape_out) >= 2 and shape_out[1] == shape_in[1]:
                return src
            if src is not None and shape_out is not None and len(shape_out) == 2 and src.dim == 1:
                if shape_out[1] == _channels_of(src) // max(1, math.prod(shape_in[2:]) if shape_in else 1):
                    return src
        if node.op == "call_method" and target in ("size", "dim"):
            return None
        if src is not None:
            self.st.block(src, f"operation {target} at {node.name}")
        return self._fresh(node, f"operation {target} at {node.name}")

    # driver --------------------------------------------------------------------------
    def run(self) -> ModelAnalysis:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape = _shape(node)
                if shape is None or len(shape) < 2:
                    raise AnalysisError(f"the sample input must be a batched tensor, got shape {shape}")
                lay = _Layout([Segment(self.st.new_group(shape[1], blocked="model input"), shape[1])], 1)
                self.layouts[node] = lay
            elif node.op == "call_module":
                self.layouts[node] = self._call_module(node)
            elif node.op in ("call_function", "call_method"):
                self.layouts[node] = self._call(node)
            elif node.op == "output":
                for t in _tensor_args(node):
                    self.st.block(self.layouts.get(t), "model output")
            else:
                self.layouts[node] = None
        return self._finish()

    def _finish(self) -> ModelAnalysis:
        st = self.st
        roots = sorted({st.uf.find(g) for g in st.channels})
        renumber = {r: i for i, r in enumerate(roots)}
        merged: dict[int, dict] = {
            renumber[r]: dict(channels=st.channels[r], producers=[], consumers=[], followers=[], reason="")
            for r in roots
        }
        for g in st.channels:
            m = merged[renumber[st.uf.find(g)]]
            if st.channels[g] != m["channels"]:
                m["reason"] = m["reason"] or "coupled tensors disagree in channel count"
            m["producers"] += st.producers.get(g, [])
            m["consumers"] += st.consumers.get(g, [])
            m["followers"] += st.followers.get(g, [])
            if g in st.blocked and not m["reason"]:
                m["reason"] = st.blocked[g]
        groups = tuple(
            ChannelGroup(
                gid=i, channels=m["channels"], producers=tuple(dict.fromkeys(m["producers"])),
                consumers=tuple(dict.fromkeys(m["consumers"])), followers=tuple(dict.fromkeys(m["followers"])),
                prunable=not m["reason"] and bool(m["producers"]), reason=m["reason"] or ("" if m["producers"] else "no producer"),
            )
            for i, m in sorted(merged.items())
        )
        layers = []
        for i, d in enumerate(self.layers):
            d = dict(d)
            d["out_group"] = renumber[st.uf.find(d["out_group"])]
            d["in_segments"] = tuple(
                Segment(renumber[st.uf.find(s.group)], s.channels, s.features_per_channel) for s in d["in_segments"]
            )
            d["folded_bn"] = self.folded.get(d["name"])
            layers.append(LayerInfo(index=i, **d))
        if not layers:
            raise AnalysisError(
                f"{type(self.model).__name__} has no Conv1d, Conv2d or Linear layer, so there is nothing to quantize "
                "or prune. automl-mpq searches over nn.Conv1d/nn.Conv2d/nn.Linear modules."
            )
        unquantized = _kept_float(self.model, {d.name for d in layers} | set(self.folded.values()))
        sample_shape = _shape(next(n for n in self.gm.graph.nodes if n.op == "placeholder")) or ()
        return ModelAnalysis(
            layers=tuple(layers), groups=groups, unquantized=unquantized, input_shape=tuple(sample_shape[1:]),
            notes=tuple(self.notes), split_followers=tuple(
                (name, tuple(Segment(renumber[st.uf.find(seg.group)], seg.channels) for seg in segs))
                for name, segs in self.split_followers),
        )


def _kept_float(model: nn.Module, priced: set[str]) -> tuple[tuple[str, str, int], ...]:
    """Every parameter and persistent buffer outside the quantized layers and folded BatchNorms, with its bytes.

    A module without children is one entry (its name, its type, the bytes of all its tensors:
    a LayerNorm, an unfolded BatchNorm with its running statistics); a module with children
    lists each tensor it holds itself (a ViT's class token and position embedding, a ConvNeXt
    block's layer scale) under the tensor's qualified name.
    """
    out = []
    for name, mod in model.named_modules():
        if name in priced:
            continue
        own = [(n, t) for n, t in mod.named_parameters(recurse=False)]
        own += [(n, b) for n, b in mod.named_buffers(recurse=False) if n not in mod._non_persistent_buffers_set]
        own = [(n, t) for n, t in own if t is not None]
        if not own:
            continue
        if list(mod.children()):
            out += [(f"{name}.{n}" if name else n, type(mod).__name__, t.numel() * t.element_size()) for n, t in own]
        else:
            out.append((name, type(mod).__name__, sum(t.numel() * t.element_size() for _, t in own)))
    return tuple(out)


def analyse(model: nn.Module, sample_input: torch.Tensor) -> ModelAnalysis:
    """Analyse ``model`` on ``sample_input`` (a batch of at least one sample).

    Returns per-layer shapes, parameter counts and MACs, the channel groups that must be
    pruned together, and the layers that stay at full precision.
    """
    was_training = model.training
    model.eval()
    try:
        return _Analyser(model, sample_input).run()
    finally:
        model.train(was_training)
