"""Sensitivities: tables from callables, one-at-a-time measurement, caching, proxy objective."""

from __future__ import annotations

import json

import pytest
import torch

from automl.analysis import analyse
from automl.errors import ConfigError
from automl.problem.metrics import Metrics
from automl.problem.sensitivity import Sensitivities, as_sensitivities, measure_sensitivities
from search_spaces import LayerPolicy, Policy, SearchSpace, SpaceConfig


@pytest.fixture
def space(tiny_resnet) -> SearchSpace:
    analysis = analyse(tiny_resnet, torch.zeros(1, 1, 28, 28))
    return SearchSpace.build(analysis, SpaceConfig(weight_bits=(0, 4, 8), act_bits=(4, 8), sparsity_step=0.25))


class FakeEvaluator:
    """KL grows by a known amount per layer change, so measured tables can be checked exactly."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.calls = 0

    def __call__(self, policy: Policy) -> Metrics:
        self.calls += 1
        kl = 0.0
        for i, (_, lp) in enumerate(self.space.resolve(policy)):
            kl += (i + 1) * (lp.sparsity + (8 - lp.mean_bits) * 0.01 + (8 - lp.act_bits) * 0.001)
        return Metrics(accuracy=1.0 - kl, loss=kl, kl=kl, fidelity=1)


def test_measured_sensitivities_are_one_factor_damages_and_are_cached(space, tmp_path):
    evaluate = FakeEvaluator(space)
    reference = space.uniform(8, 8)
    cache = tmp_path / "sens.json"
    sens = measure_sensitivities(evaluate, space, reference, metric="kl", cache_path=cache, cache_tag="tiny")
    calls = evaluate.calls
    free = [s for s in space.layers if not s.pinned]
    groups = {s.coupled_group for s in free if s.prunable}
    expected_calls = 1 + sum(len(s.nonzero_bits) - 1 + len(s.act_bits) - 1 for s in free)
    expected_calls += len(groups) * (len(space.config.sparsity_levels()) - 1)
    assert calls == expected_calls
    i = space.names.index(free[0].name)
    ls = sens.layer(free[0].name)
    assert ls.at(0.0, 8, 8) == 0.0
    assert ls.at(0.0, 4, 8) == pytest.approx((i + 1) * 0.04)
    assert ls.at(0.0, 8, 4) == pytest.approx((i + 1) * 0.004)
    assert ls.at(0.0, 4, 4) == pytest.approx((i + 1) * 0.044)  # the factorisation adds the factors
    again = measure_sensitivities(evaluate, space, reference, metric="kl", cache_path=cache, cache_tag="tiny")
    assert again == sens and evaluate.calls == calls
    assert json.loads(cache.read_text())[sens.key]["source"] == "measured:kl"
    measure_sensitivities(evaluate, space, reference, metric="kl", cache_path=cache, cache_tag="other")
    assert evaluate.calls > calls


def test_group_pruning_damage_is_split_over_producers(space):
    evaluate = FakeEvaluator(space)
    sens = measure_sensitivities(evaluate, space, space.uniform(8, 8), metric="loss")
    members = next(m for m in space.coupled().values() if len(m) > 1 and all(space.layer(n).prunable for n in m))
    values = [sens.layer(m).at(0.5, 8, 8) for m in members]
    assert len(set(values)) == 1
    policy = space.uniform(8, 8, sparsity=0.0)
    for m in members:
        policy = policy.replace(m, space.decode(m, 0.5, [8] * space.layer(m).n_groups, 8))
    assert sum(values) == pytest.approx(evaluate(policy).loss - evaluate(space.uniform(8, 8)).loss)


def test_tables_round_trip_and_are_checked_against_the_space(space):
    sens = Sensitivities.from_callable(space, lambda n, s, w, a: s + 1.0 / w + 1.0 / a)
    assert Sensitivities.from_dict(json.loads(json.dumps(sens.to_dict()))) == sens
    assert as_sensitivities(space, sens) is sens
    other = SearchSpace.build(
        analyse(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)), torch.zeros(1, 1, 5, 5)), SpaceConfig()
    )
    with pytest.raises(ConfigError, match="sensitivities are for layers"):
        as_sensitivities(other, sens)


def test_policy_value_averages_mixed_channels_after_coupling(space):
    sens = Sensitivities.from_callable(space, lambda n, s, w, a: 10 * s + (8 - w) + 0.1 * (8 - a))
    free = next(s for s in space.layers if not s.pinned)
    base = space.uniform(8, 8)
    half = (4,) * (free.out_channels // 2) + (8,) * (free.out_channels - free.out_channels // 2)
    mixed = base.replace(free.name, LayerPolicy(8, half))
    assert sens.policy_value(mixed, space) - sens.policy_value(base, space) == pytest.approx(2.0)
