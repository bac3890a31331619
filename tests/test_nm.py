"""N:M masks: at most N per block, transposable along W^T, largest magnitudes kept, diversity."""

from __future__ import annotations

import math

import pytest
import torch

from automl.analysis import analyse
from automl.errors import ConfigError
from automl.quant.nm import log10_mask_diversity, magnitude_mask, nm_mask, sparsify, transposable_mask
from automl.reference.models import ResNet


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_every_block_has_at_most_n_nonzeros_and_keeps_the_largest(n, m):
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(n * m))
    mask = nm_mask(w, n, m)
    blocks = (w * mask).reshape(16, -1, m)
    assert bool(((blocks != 0).sum(dim=2) == n).all())
    kept_min = torch.where(mask, w.abs(), torch.inf).reshape(16, -1, m).amin(dim=2)
    dropped_max = torch.where(~mask, w.abs(), 0.0).reshape(16, -1, m).amax(dim=2)
    assert bool((kept_min >= dropped_max).all())


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_transposable_mask_holds_for_w_and_w_transposed(n, m):
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(7))
    mask = transposable_mask(w, n, m)
    assert bool((mask.reshape(16, -1, m).sum(dim=2) <= n).all())
    assert bool((mask.T.reshape(32, -1, m).sum(dim=2) <= n).all())  # the same mask is N:M for W^T
    assert float((w.abs() * mask).sum()) > 0.8 * float((w.abs() * nm_mask(w, n, m)).sum())  # greedy stays close
    assert float(mask.float().mean()) >= 0.8 * n / m


def test_sparsify_unstructured_and_errors():
    model = ResNet(8, width=4).eval()
    analysis = analyse(model, torch.zeros(1, 1, 28, 28))
    skip = (analysis.layers[0].name, analysis.layers[-1].name)
    masked, density = sparsify(model, analysis, "2:4", skip)
    assert set(density) == {layer.name for layer in analysis.layers} - set(skip)
    assert all(d == pytest.approx(0.5) for d in density.values())
    _, dens = sparsify(model, analysis, "unstructured:0.5", skip)
    assert all(abs(d - 0.5) < 0.02 for d in dens.values())
    w = torch.randn(8, 16)
    assert int(magnitude_mask(w, 0.25).sum()) == 32
    with pytest.raises(ConfigError, match="0 < N < M"):
        nm_mask(w, 4, 4)
    with pytest.raises(ConfigError, match="not a multiple of M=4"):
        nm_mask(torch.randn(4, 9), 2, 4, "conv1")


def test_mask_diversity_follows_the_definition():
    assert log10_mask_diversity("2:4", 4) == pytest.approx(math.log10(6))
    assert log10_mask_diversity("2:4-T", 16) == pytest.approx(math.log10(90))
    assert log10_mask_diversity("1:4-T", 16) == pytest.approx(math.log10(24))
    assert log10_mask_diversity("unstructured:0.5", 4) == pytest.approx(math.log10(6))
    t = 4096
    assert log10_mask_diversity("unstructured:0.5", t) > log10_mask_diversity("2:4", t) > log10_mask_diversity("2:4-T", t)
