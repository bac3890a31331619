"""Search spaces and policies: validated values with a JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automl.analysis import analyse
from automl.errors import PolicyError, SearchSpaceError
from automl.reference.models import PlainCNN
from search_spaces import LayerPolicy, Policy, SearchSpace, SpaceConfig


@pytest.fixture
def space(tiny_resnet) -> SearchSpace:
    return SearchSpace.build(analyse(tiny_resnet, torch.zeros(1, 1, 28, 28)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000))
def test_policies_round_trip_through_json(seed, space):
    policy = space.sample(np.random.default_rng(seed))
    again = Policy.from_json(policy.to_json())
    assert again == policy and again.key() == policy.key()
    assert space.validate(again) is again


def test_zero_is_an_explicit_choice_and_pinned_layers_hold_eight_bits(space):
    first, last = space.layers[0], space.layers[-1]
    assert first.pinned and last.pinned and first.weight_bits == (8,) and last.act_bits == (8,)
    free = space.layer("layer1.0.conv1")
    assert 0 in free.weight_bits and 32 in free.weight_bits


def test_policy_for_another_model_is_rejected_naming_the_layer(space):
    other = SearchSpace.build(analyse(PlainCNN(width=4), torch.zeros(1, 1, 28, 28)))
    with pytest.raises(PolicyError, match="features.0"):
        space.validate(other.uniform(8))


def test_wrong_channel_count_is_rejected_naming_the_layer(space):
    policy = space.uniform(4)
    bad = policy.replace("layer1.0.conv1", LayerPolicy(4, (4,) * 3))
    with pytest.raises(PolicyError, match=r"layer1\.0\.conv1.*3 channel bit-widths.*4 output channels"):
        space.validate(bad)


def test_disallowed_bits_are_rejected(space):
    policy = space.uniform(4)
    with pytest.raises(PolicyError, match="not allowed"):
        space.validate(policy.replace("layer1.0.conv1", LayerPolicy(4, (7, 4, 4, 4))))


def test_decode_prunes_least_important_channels_first(tiny_resnet):
    a = analyse(tiny_resnet, torch.zeros(1, 1, 28, 28))
    rank = {layer.name: tuple(reversed(range(layer.out_channels))) for layer in a.layers}
    space = SearchSpace.build(a, SpaceConfig(n_groups=2), rank)
    lp = space.decode("layer2.0.conv1", 0.25, [8, 4], 6)
    # ranking is 7,6,...,0: channels 0 and 1 are least important and go first
    assert lp.weight_bits[:2] == (0, 0)
    assert lp.weight_bits[2:4] == (4, 4) and lp.weight_bits[4:] == (8, 8, 8, 8)
    assert lp.act_bits == 6


def test_decode_refuses_more_than_max_sparsity(space):
    with pytest.raises(PolicyError, match="at most"):
        space.decode("layer1.0.conv1", 0.0, [0] * space.layer("layer1.0.conv1").n_groups, 4)


def test_search_space_round_trips(space):
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(act_bits=(0, 4)), "act_bits cannot contain 0"),
        (dict(max_sparsity=1.0), "max_sparsity"),
        (dict(n_groups=0), "n_groups"),
    ],
)
def test_bad_space_config_is_explained(kwargs, match):
    with pytest.raises(SearchSpaceError, match=match):
        SpaceConfig(**kwargs)


def test_unknown_pinned_layer_is_explained(tiny_resnet):
    with pytest.raises(SearchSpaceError, match="not in the model"):
        SearchSpace.build(analyse(tiny_resnet, torch.zeros(1, 1, 28, 28)), SpaceConfig(pinned=("nope",)))


def test_bad_policy_json_schema_is_explained():
    with pytest.raises(PolicyError, match="schema version"):
        Policy.from_dict({"schema_version": 99, "layers": {}})


def test_coupled_layers_never_prune_more_than_max_sparsity_together(tiny_resnet):
    a = analyse(tiny_resnet, torch.zeros(1, 1, 28, 28))
    space = SearchSpace.build(a, SpaceConfig(pin_first_last=False, max_sparsity=0.5))
    rng = np.random.default_rng(0)
    for _ in range(200):
        policy = space.resolve(space.sample(rng))  # validate() inside checks the union
        for members in space.coupled().values():
            assert policy[members[0]].sparsity <= 0.5
    shared = space.layer("layer2.0.conv2")
    assert shared.shares_group and 0 not in shared.group_bits
    members = ("layer2.0.conv2", "layer2.0.shortcut.0")
    policy = space.uniform(8)
    n = space.layer(members[0]).out_channels
    policy = policy.replace(members[0], LayerPolicy(8, (0,) * (n // 2) + (8,) * (n - n // 2)))
    policy = policy.replace(members[1], LayerPolicy(8, (8,) * (n // 2) + (0,) * (n - n // 2)))
    with pytest.raises(PolicyError, match="pruned together"):
        space.validate(policy)
