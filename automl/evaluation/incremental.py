"""Incremental evaluation: reuse the activations of the layers a new policy did not change.

The engine's quantized model is traced once with ``torch.fx`` (every :class:`QuantLayer`
and every module carrying a hook is a leaf) into an ordered list of nodes. A *cut* sits
just before each quantized layer's call; the values alive at a cut (produced before it,
read after it) are everything the rest of the network needs, so residual branches are
captured by construction (before the second convolution of a residual block both the
block's input and the first convolution's output are alive, and both are stored).

What flows across cut ``c`` depends only on the input batch and on the state of the
layers before it: their weight and activation bit-widths, the group masks applied by
hooks on un-folded BatchNorms, and at fidelity 2 their BatchNorm corrections, which are
themselves measured on the calibration batch flowing through that same prefix. So a
*prefix key* (a hash chain over those choices, layer by layer in execution order) names
the activations at a cut exactly, and an LRU of ``(tag, batch, prefix key) -> values``
lets a policy that differs from an earlier one first at layer ``j`` run layers ``j..``
only (activations are stored from the second time a prefix is seen on, see
:meth:`ActivationCache.admit`). Fidelity 2 reuses prefixes twice: the calibration pass that re-estimates the
BatchNorm statistics starts at the deepest cached cut too (the prefix's corrections are
restored from the cache entry), and the validation pass then starts at its own deepest
cached cut. Corrections of suffix layers are recomputed, as they must be, since they
depend on everything upstream.

The values are the very tensors a full forward pass computes (no copy, unless the graph
has an in-place operation that could overwrite a stored tensor, in which case they are
cloned), so an incremental evaluation is bit-for-bit a full one on the same batches.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from automl.quant.engine import QuantEngine, QuantLayer
from search_spaces.policy import Policy

_INPLACE_OPS = {"add_", "mul_", "relu_", "clamp_", "sub_", "div_", "copy_", "fill_", "zero_", "masked_fill_"}


class _LeafTracer(fx.Tracer):
    """Keeps quantized layers and hooked modules opaque (their forward has Python control flow)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, QuantLayer) or m._forward_hooks or m._forward_pre_hooks:
            return True
        return super().is_leaf_module(m, module_qualified_name)


@dataclass(frozen=True)
class CacheStats:
    """How the activation cache fared.

    Attributes:
        hits / misses: passes of one batch that started from a cached cut / from the input.
        evictions: entries dropped to stay under the memory limit.
        bytes: bytes held now.
        layers_run / layers_total: quantized layers executed versus a full pass would have.
    """

    hits: int
    misses: int
    evictions: int
    bytes: int
    layers_run: int
    layers_total: int

    def to_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions, "bytes": self.bytes,
                "layers_run": self.layers_run, "layers_total": self.layers_total}


class ActivationCache:
    """A byte-bounded LRU of activation tuples."""

    def __init__(self, limit_bytes: int, max_seen: int = 200_000) -> None:
        self.limit = int(limit_bytes)
        self._seen: set[tuple[Any, ...]] = set()
        self.max_seen = max_seen
        self._data: OrderedDict[tuple[Any, ...], tuple[tuple[Any, ...], dict[str, Any] | None, int]] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    @staticmethod
    def _size(values: tuple[Any, ...]) -> int:
        return sum(v.numel() * v.element_size() for v in values if isinstance(v, torch.Tensor))

    def get(self, key: tuple[Any, ...], count: bool = True) -> tuple[tuple[Any, ...], dict[str, Any] | None] | None:
        """The values stored under ``key`` (now the most recently used), or ``None``."""
        found = self._data.get(key)
        if found is None:
            self.misses += count
            return None
        self.hits += count
        self._data.move_to_end(key)
        return found[0], found[1]

    def admit(self, key: tuple[Any, ...]) -> bool:
        """Whether to store ``key``: only a prefix seen before (its second sight).

        Keeping a pass's activations alive costs memory traffic (fresh pages instead of
        reused ones, about a fifth of a cold evaluation on ResNet-20). A sampler that
        changes every layer at once (multivariate TPE) never repeats a deep prefix, so
        storing on first sight would only cost; a prefix that recurs (the pinned first
        layer, the earlier layers of an RL episode, a one-layer mutation of a policy
        evaluated twice) is stored from its second pass on.
        """
        if key in self._data:
            return False
        if key in self._seen:
            return True
        if len(self._seen) >= self.max_seen:
            self._seen.clear()
        self._seen.add(key)
        return False

    def put(self, key: tuple[Any, ...], values: tuple[Any, ...], extra: dict[str, Any] | None = None) -> None:
        size = self._size(values)
        if size > self.limit or key in self._data:
            return
        self._data[key] = (values, extra, size)
        self.bytes += size
        while self.bytes > self.limit:
            _, (_, _, dropped) = self._data.popitem(last=False)
            self.bytes -= dropped
            self.evictions += 1

    def clear(self) -> None:
        """Drop every stored activation and every remembered prefix."""
        self._data.clear()
        self._seen.clear()
        self.bytes = 0


class StagedModel:
    """The engine's model as an ordered node list with a cut before every quantized layer.

    Args:
        engine: the engine whose ``qmodel`` is traced (its layers keep changing state;
            the trace holds references to the same modules).

    Raises:
        torch.fx.proxy.TraceError (or another exception of the tracer): the model cannot
            be traced; the evaluator then falls back to full forward passes.
    """

    def __init__(self, engine: QuantEngine) -> None:
        self.engine = engine
        graph = _LeafTracer().trace(engine.qmodel)
        self.gm = fx.GraphModule(engine.qmodel, graph)
        self.nodes: list[fx.Node] = list(graph.nodes)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ValueError(f"incremental evaluation needs a model with one input, this one takes {len(placeholders)}")
        self.input = placeholders[0]
        index = {n: i for i, n in enumerate(self.nodes)}
        last_use = {n: max((index[u] for u in n.users), default=index[n]) for n in self.nodes}
        self.dies_at: list[list[fx.Node]] = [[] for _ in self.nodes]
        for n, i in last_use.items():
            self.dies_at[i].append(n)
        modules = dict(self.gm.named_modules())
        self.inplace = any(self._is_inplace(n, modules) for n in self.nodes)
        # cut c lies before node cuts[c]: the c-th quantized layer in execution order
        self.cuts: list[int] = []
        self.layer_order: list[str] = []
        self.hooked: list[list[str]] = []  # modules with hooks (group masks) between cut c-1 and cut c
        pending: list[str] = []
        for i, n in enumerate(self.nodes):
            if n.op != "call_module":
                continue
            if n.target in engine.layers:
                self.cuts.append(i)
                self.layer_order.append(str(n.target))
                self.hooked.append(pending)
                pending = []
            elif modules[n.target]._forward_hooks:
                pending.append(str(n.target))
        self.live: list[list[fx.Node]] = [
            [n for n in self.nodes[:pos] if last_use[n] >= pos] for pos in self.cuts
        ]
        self._interp = fx.Interpreter(self.gm, garbage_collect_values=False)

    @staticmethod
    def _is_inplace(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
        if node.op == "call_module":
            return bool(getattr(modules[node.target], "inplace", False))
        if node.op == "call_method":
            return str(node.target) in _INPLACE_OPS
        if node.op == "call_function":
            name = getattr(node.target, "__name__", "")
            return bool(node.kwargs.get("inplace", False)) or name.startswith("i") and name in {"iadd", "imul", "isub"}
        return False

    def prefix_keys(self, policy: Policy, tag: str) -> list[bytes]:
        """Key of cut ``c`` for every cut: a hash chain over the choices of the layers before it."""
        by_name = policy.as_dict()
        masks = self.engine._masks
        groups = self.engine._group_of_follower
        h = hashlib.sha1(tag.encode())
        keys: list[bytes] = []
        for c, name in enumerate(self.layer_order):
            for follower in self.hooked[c]:
                mask = masks.get(groups.get(follower, -1))
                h.update(b"m" + (b"-" if mask is None else mask.cpu().numpy().tobytes()))
            keys.append(h.digest())
            lp = by_name[name]
            nm = f":{lp.nm}" if lp.nm else ""  # dense layers keep their old key
            h.update(f"|{name}:{lp.act_bits}:{','.join(map(str, lp.weight_bits))}{nm}".encode())
        return keys

    def run(
        self,
        x: torch.Tensor,
        keys: Sequence[bytes],
        cache: ActivationCache,
        tag_batch: tuple[str, int],
        corrections: bool = False,
    ) -> tuple[Any, int]:
        """The model's output on ``x``, starting from the deepest cached cut.

        Returns the output and how many quantized layers ran. With ``corrections`` the
        BatchNorm corrections of the prefix layers travel with the cache entries (the
        calibration pass of fidelity 2).
        """
        start, env = -1, {self.input: x}
        for c in range(len(keys) - 1, 0, -1):
            found = cache.get((*tag_batch, keys[c]), count=False)
            if found is not None:
                values, extra = found
                env = dict(zip(self.live[c], values, strict=True))
                if corrections and extra is not None:
                    for name, corr in extra.items():
                        self.engine.layers[name].correction = corr
                start = c
                break
        if start < 0:
            cache.misses += 1
        else:
            cache.hits += 1
        pos = 0 if start < 0 else self.cuts[start]
        next_cut = max(start, 0) + 1  # cut 0 holds only the input: never stored
        interp = self._interp
        interp.env = env
        layers_run = 0
        try:
            for i in range(pos, len(self.nodes)):
                if next_cut < len(self.cuts) and i == self.cuts[next_cut]:
                    self._store(cache, (*tag_batch, keys[next_cut]), next_cut, env, corrections)
                    next_cut += 1
                node = self.nodes[i]
                if node.op == "output":
                    return fx.node.map_arg(node.args[0], env.__getitem__), layers_run
                if node.op == "placeholder":
                    continue
                if node.op == "call_module" and node.target in self.engine.layers:
                    layers_run += 1
                env[node] = interp.run_node(node)
                for dead in self.dies_at[i]:
                    env.pop(dead, None)
        finally:
            interp.env = {}
        raise AssertionError("a traced graph ends with an output node")

    def _store(self, cache: ActivationCache, key: tuple[Any, ...], c: int, env: dict[fx.Node, Any], corrections: bool) -> None:
        if not cache.admit(key):
            return
        values = tuple(env[n] for n in self.live[c])
        if self.inplace:
            values = tuple(v.clone() if isinstance(v, torch.Tensor) else v for v in values)
        extra = None
        if corrections:
            extra = {name: self.engine.layers[name].correction for name in self.layer_order[:c]}
        cache.put(key, values, extra)


class IncrementalForward:
    """Runs policies through a :class:`StagedModel` with an activation cache.

    Args:
        engine: the evaluator's engine.
        limit_mb: memory limit of the activation cache in MiB.
    """

    def __init__(self, engine: QuantEngine, limit_mb: int) -> None:
        self.engine = engine
        self.staged = StagedModel(engine)
        self.cache = ActivationCache(int(limit_mb) * 2**20)
        self.layers_run = self.layers_total = 0

    @property
    def stats(self) -> CacheStats:
        c = self.cache
        return CacheStats(c.hits, c.misses, c.evictions, c.bytes, self.layers_run, self.layers_total)

    def reestimate(self, policy: Policy, batch: torch.Tensor) -> None:
        """:meth:`QuantEngine.reestimate_batchnorm` on ``batch``, reusing the cached prefix."""
        self.engine.clear_corrections()
        keys = self.staged.prefix_keys(policy, "calib")
        with self.engine.bn_reestimation(), torch.no_grad():
            _, ran = self.staged.run(batch, keys, self.cache, ("calib", 0), corrections=True)
        self._count(ran)

    def outputs(
        self, policy: Policy, tag: str, batches: Sequence[torch.Tensor],
        keep_going: Callable[[int, torch.Tensor], bool] | None = None,
    ) -> list[torch.Tensor]:
        """Outputs on ``batches`` under the engine's current state (``policy`` applied).

        ``keep_going(i, out)`` is called after batch ``i``; ``False`` stops early and the
        outputs so far are returned.
        """
        keys = self.staged.prefix_keys(policy, tag)
        outs = []
        with torch.no_grad():
            for i, x in enumerate(batches):
                out, ran = self.staged.run(x, keys, self.cache, (tag, i))
                self._count(ran)
                outs.append(out)
                if keep_going is not None and i + 1 < len(batches) and not keep_going(i, out):
                    break
        return outs

    def _count(self, ran: int) -> None:
        self.layers_run += ran
        self.layers_total += len(self.staged.cuts)


def make_incremental(engine: QuantEngine, limit_mb: int) -> tuple[IncrementalForward | None, str]:
    """An :class:`IncrementalForward` for ``engine``, or ``None`` and the reason it is off.

    Tracing an arbitrary user model can fail in many ways (data-dependent control flow,
    unsupported Python); evaluation then simply runs full forward passes.
    """
    if limit_mb <= 0:
        return None, "cache_mb is 0"
    try:
        return IncrementalForward(engine, limit_mb), ""
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "no incremental evaluation", never an error
        return None, f"{type(exc).__name__}: {exc}"
