"""N:M fine-grained sparsity masks: plain, transposable, and the mask diversity of each.

An N:M mask keeps at most ``N`` of every ``M`` consecutive weights along a layer's reduction
dimension (input channels x kernel positions, the ``K`` of its GEMM), which sparse tensor
cores run at up to ``M/N`` times the dense rate. Within each block the ``N`` weights of
largest magnitude are kept. A *transposable* mask (Hubara et al., "Accelerated Sparse Neural
Training", NeurIPS 2021) is N:M both along the rows and the columns of every ``M x M`` tile of
the ``[out, K]`` weight matrix, so the same mask also accelerates the backward pass that
multiplies by ``W^T``; it is found greedily here (largest magnitude first, accepted while its
row and column still have room), which the paper reports to be close to its min-cost-flow
optimum.

Scope of this module: masks, their application to a float model, and mask diversity. As a
search dimension (``SpaceConfig.nm_patterns``, ``LayerPolicy.nm``) the quantization engine
applies these masks before quantizing, the cost model prices the kept values plus their
index, and the ``.ampq`` exporter (:mod:`automl.export.ampq`) stores exactly those: the kept
values' codes and a ``ceil(log2 C(M, N))``-bit index per block, loaded back to the same
weights. A hardware profile may declare N:M MAC speedups (``nm_speedup``,
:class:`automl.cost.hardware.HardwareProfile`); only the illustrative ``sparse_accel``
profile does. The ONNX export keeps the masked zeros dense. See ``benchmarks/methods.py``
for the accuracy measurement.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from automl.errors import ConfigError
from search_spaces.network import ModelAnalysis

PATTERNS = ((2, 4), (1, 4), (4, 8))


def _check(n: int, m: int, k: int, name: str) -> None:
    if not 0 < n < m:
        raise ConfigError(f"an N:M pattern needs 0 < N < M, got {n}:{m}; e.g. 2:4")
    if k % m:
        raise ConfigError(f"layer {name!r} has {k} weights per output channel, not a multiple of M={m}; leave it dense")


def nm_mask(weight: torch.Tensor, n: int, m: int, name: str = "layer") -> torch.Tensor:
    """Keep the ``n`` largest-magnitude of every ``m`` consecutive weights of each output row."""
    rows = weight.detach().reshape(weight.shape[0], -1)
    _check(n, m, rows.shape[1], name)
    blocks = rows.abs().reshape(rows.shape[0], -1, m)
    keep = torch.zeros_like(blocks, dtype=torch.bool)
    keep.scatter_(2, blocks.topk(n, dim=2).indices, True)
    return keep.reshape(weight.shape)


def transposable_mask(weight: torch.Tensor, n: int, m: int, name: str = "layer") -> torch.Tensor:
    """A mask that is N:M along both rows and columns of every ``m x m`` tile (greedy)."""
    rows = weight.detach().reshape(weight.shape[0], -1)
    _check(n, m, rows.shape[1], name)
    if rows.shape[0] % m:
        raise ConfigError(f"layer {name!r} has {rows.shape[0]} output channels, not a multiple of M={m}")
    o, k = rows.shape
    tiles = rows.abs().reshape(o // m, m, k // m, m).permute(0, 2, 1, 3).reshape(-1, m * m)  # [T, m*m]
    order = tiles.argsort(dim=1, descending=True)
    keep = torch.zeros_like(tiles, dtype=torch.bool)
    row_used = torch.zeros(tiles.shape[0], m, dtype=torch.long, device=tiles.device)
    col_used = torch.zeros(tiles.shape[0], m, dtype=torch.long, device=tiles.device)
    t = torch.arange(tiles.shape[0], device=tiles.device)
    for j in range(m * m):  # one pass per rank, vectorised over tiles
        idx = order[:, j]
        r, c = idx // m, idx % m
        ok = (row_used[t, r] < n) & (col_used[t, c] < n)
        keep[t[ok], idx[ok]] = True
        row_used[t[ok], r[ok]] += 1
        col_used[t[ok], c[ok]] += 1
    return keep.reshape(o // m, k // m, m, m).permute(0, 2, 1, 3).reshape(weight.shape)


def magnitude_mask(weight: torch.Tensor, density: float) -> torch.Tensor:
    """Unstructured magnitude pruning of one layer: keep the ``density`` share of largest weights."""
    flat = weight.detach().abs().flatten()
    keep = max(1, round(density * flat.numel()))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(keep).indices] = True
    return mask.reshape(weight.shape)


def sparsify(
    model: nn.Module, analysis: ModelAnalysis, pattern: str, skip: tuple[str, ...] = ()
) -> tuple[nn.Module, dict[str, float]]:
    """A copy of ``model`` with every quantizable layer masked; returns it and each layer's density.

    Args:
        model: the float network (not modified).
        analysis: its analysis (which layers are convolutions / linear layers).
        pattern: ``"N:M"``, ``"N:M-T"`` (transposable) or ``"unstructured:D"`` (density D).
        skip: layer names left dense (e.g. the pinned first and last layers).
    """
    out = copy.deepcopy(model)
    density: dict[str, float] = {}
    for layer in analysis.layers:
        if layer.name in skip:
            continue
        mod = out.get_submodule(layer.name)
        w = mod.weight
        if pattern.startswith("unstructured:"):
            mask = magnitude_mask(w, float(pattern.split(":")[1]))
        else:
            body, _, tail = pattern.partition("-")
            n, m = (int(x) for x in body.split(":"))
            mask = transposable_mask(w, n, m, layer.name) if tail == "T" else nm_mask(w, n, m, layer.name)
        with torch.no_grad():
            w.mul_(mask.to(w.dtype))
        density[layer.name] = float(mask.float().mean())
    return out, density


def _perm_count(n: int, m: int) -> int:
    """Number of ``m x m`` 0/1 matrices with exactly ``n`` ones in every row and column."""
    counts: dict[tuple[int, ...], int] = {tuple([0] * m): 1}
    rows = [tuple(1 if i in c else 0 for i in range(m)) for c in _combinations(m, n)]
    for _ in range(m):
        nxt: dict[tuple[int, ...], int] = {}
        for state, ways in counts.items():
            for row in rows:
                new = tuple(s + r for s, r in zip(state, row, strict=True))
                if max(new) <= n:
                    nxt[new] = nxt.get(new, 0) + ways
        counts = nxt
    return counts.get(tuple([n] * m), 0)


def _combinations(m: int, n: int) -> list[tuple[int, ...]]:
    from itertools import combinations

    return list(combinations(range(m), n))


def log10_mask_diversity(pattern: str, elements: int) -> float:
    """log10 of the mask diversity (Hubara et al. 2021): how many masks the constraint allows.

    ``pattern`` as in :func:`sparsify`; ``elements`` is the number of weights (a multiple of
    ``M`` for N:M, of ``M*M`` for transposable). Unstructured at density D allows
    ``C(elements, D*elements)`` masks; N:M ``C(M, N)^(elements/M)``; transposable N:M
    ``P(M, N)^(elements/M^2)`` with ``P`` the count of ``M x M`` 0/1 matrices with ``N`` ones
    per row and column (90 for 2:4).
    """
    if pattern.startswith("unstructured:"):
        k = round(float(pattern.split(":")[1]) * elements)
        return (math.lgamma(elements + 1) - math.lgamma(k + 1) - math.lgamma(elements - k + 1)) / math.log(10)
    body, _, tail = pattern.partition("-")
    n, m = (int(x) for x in body.split(":"))
    if tail == "T":
        return elements / (m * m) * math.log10(_perm_count(n, m))
    return elements / m * math.log10(math.comb(m, n))
