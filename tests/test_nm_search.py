"""N:M sparsity as a search choice: space, policy JSON, masked evaluation and fine-tune, pricing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from automl.analysis import analyse
from automl.cost.model import CostModel
from automl.errors import PolicyError, SearchSpaceError
from automl.quant.engine import QuantEngine
from automl.reference.models import ResNet
from search_spaces.policy import LayerPolicy, Policy
from search_spaces.space import SearchSpace, SpaceConfig


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = ResNet(8, width=4).eval()
    analysis = analyse(model, torch.zeros(2, 1, 28, 28))
    space = SearchSpace.build(analysis, SpaceConfig(nm_patterns=("2:4", "4:8", "2:4-T"), n_groups=2))
    return model, analysis, space


def _with_nm(space: SearchSpace, pattern: str) -> Policy:
    """Every layer that allows ``pattern`` at it, 4-bit weights, 8-bit activations."""
    base = space.uniform(4, 8)
    out = []
    for (name, lp), s in zip(base, space.layers, strict=True):
        out.append((name, LayerPolicy(lp.act_bits, lp.weight_bits, pattern if pattern in s.nm_patterns else "")))
    return Policy(tuple(out))


@pytest.mark.parametrize(
    "patterns,match",
    [(("3:4",), r"expected patterns from .*got '3:4'"), (("2:4", "2:4"), "twice"), (("",), "Dense is always included")],
)
def test_bad_patterns_are_rejected(patterns, match):
    with pytest.raises(SearchSpaceError, match=match):
        SpaceConfig(nm_patterns=patterns)


def test_layers_offer_only_patterns_that_fit_and_pinned_layers_stay_dense(setup):
    _, analysis, space = setup
    assert space.layers[0].nm_patterns == ("",) and space.layers[-1].nm_patterns == ("",)
    for s in space.layers[1:-1]:
        layer = analysis.layer(s.name)
        k = layer.in_channels // layer.groups * layer.kernel_numel
        assert s.nm_patterns[0] == ""
        assert ("2:4" in s.nm_patterns) == (k % 4 == 0)
        assert ("4:8" in s.nm_patterns) == (k % 8 == 0)
        assert ("2:4-T" in s.nm_patterns) == (k % 4 == 0 and layer.out_channels % 4 == 0)
    assert any("4:8" not in s.nm_patterns for s in space.layers[1:-1])  # K = 4 x 9 = 36 is not a multiple of 8
    assert SearchSpace.build(analysis).layers[1].nm_patterns == ("",)  # off by default
    with pytest.raises(PolicyError, match="N:M pattern '2:4' not allowed"):
        space.validate(space.uniform(4, 8).replace(space.names[0], LayerPolicy(8, (8,) * 4, "2:4")))


def test_policy_json_round_trip_and_old_json_loads(setup):
    _, _, space = setup
    policy = _with_nm(space, "2:4")
    again = Policy.from_json(policy.to_json())
    assert again == policy and again.key() == policy.key()
    dense = space.uniform(4, 8)
    assert '"nm"' not in dense.to_json()  # dense policies keep their JSON (and cache keys)
    assert dense.key() != _with_nm(space, "2:4").key()
    old = json.loads(dense.to_json())
    assert Policy.from_dict(old) == dense
    assert SearchSpace.from_dict(space.to_dict()) == space
    with pytest.raises(PolicyError, match="N:M pattern must be one of"):
        LayerPolicy(8, (4,), "3:4")


def test_sampled_policies_use_patterns_and_stay_valid(setup):
    _, _, space = setup
    rng = np.random.default_rng(0)
    policies = [space.sample(rng) for _ in range(10)]
    for p in policies:
        space.validate(p)
    assert {lp.nm for p in policies for _, lp in p} >= {"", "2:4", "2:4-T"}


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "2:4-T"])
def test_evaluated_and_finetuned_weights_keep_at_most_n_per_block(setup, pattern):
    model, analysis, space = setup
    n, m = (int(x) for x in pattern[:3].split(":"))
    engine = QuantEngine(model, analysis, space, [torch.randn(4, 1, 28, 28)])
    policy = _with_nm(space, pattern)
    engine.apply(policy)
    masked = [name for name, lp in policy if lp.nm]
    assert masked
    for name in masked:
        ql = engine.layers[name]
        rows = ql.weight.reshape(ql.weight.shape[0], -1)
        assert int((rows.reshape(rows.shape[0], -1, m) != 0).sum(dim=2).max()) <= n
        if pattern.endswith("-T"):
            assert int((rows.T.reshape(rows.shape[1], -1, m) != 0).sum(dim=2).max()) <= n
    # fine-tune: the mask stays fixed, masked weights stay zero
    for name in masked:
        engine.layers[name].enable_qat()
    params = [p for name in masked for p in (engine.layers[name].w_param,)]
    opt = torch.optim.Adam(params, lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        engine.qmodel(torch.randn(4, 1, 28, 28)).square().mean().backward()
        opt.step()
    for name in masked:
        ql = engine.layers[name]
        w = ql._qat_weight().detach()
        assert bool((w[ql.nm_keep == 0] == 0).all()) and bool((ql.w_param.detach()[ql.nm_keep == 0] == 0).all())
        blocks = w.reshape(w.shape[0], -1, m)
        assert int((blocks != 0).sum(dim=2).max()) <= n


def test_a_2_4_layer_is_priced_by_the_stated_formula(setup):
    _, analysis, space = setup
    cm = CostModel(analysis, space)
    dense = space.uniform(4, 8)
    name = next(s.name for s in space.layers if "2:4" in s.nm_patterns)
    sparse = dense.replace(name, LayerPolicy(8, dense[name].weight_bits, "2:4"))
    layer = analysis.layer(name)
    k = layer.in_channels // layer.groups * layer.kernel_numel
    c = layer.out_channels
    # 4-bit codes (byte-padded stream) -> half of them, plus ceil(log2 C(4,2)) = 3 index bits per block of 4
    codes_dense = math.ceil(c * k * 4 / 8)
    codes_sparse = math.ceil(c * k // 2 * 4 / 8)
    index = math.ceil(c * (k // 4) * 3 / 8)
    saved = cm.price(dense).size_bytes - cm.price(sparse).size_bytes
    assert saved == pytest.approx(codes_dense - codes_sparse - index)
    assert saved > 0
    assert cm.price(sparse).macs == cm.price(dense).macs  # MACs count an N:M layer's zeros too
    cheapest = cm.cheapest_policy()
    assert any(lp.nm for _, lp in cheapest)
    assert cm.lowest_costs().size_bytes <= cm.price(sparse).size_bytes


@pytest.mark.slow
def test_search_with_nm_runs_end_to_end_and_exports(tmp_path):
    from automl.cli import main

    code = main(["search", "--task", "tests.tasks:tiny", "--searcher", "random", "--finetune-steps", "2",
                 "--evaluations", "4", "--nm", "2:4", "--threads", "1", "--output", str(tmp_path)])
    assert code == 0
    run = next((tmp_path / "runs").iterdir())
    trials = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines() if line.strip()]
    assert any(d.get("nm") == "2:4" for t in trials for d in t["policy"]["layers"].values())
    report = json.loads((run / "export_report.json").read_text())
    assert report["agreement"] == 1.0  # the loaded .ampq computes what the evaluated model computed
