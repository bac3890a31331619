"""Hardware profiles: shipped files load, bad files name the bad key, latency behaves."""

from __future__ import annotations

import pytest
import torch
import yaml

from automl.analysis import analyse
from automl.cost import (
    CostModel,
    MeasuredLayer,
    MeasuredProfile,
    load_profile,
    profile_from_dict,
    save_profile,
    shipped_profiles,
)
from automl.errors import ProfileError
from search_spaces import LayerPolicy, SearchSpace, SpaceConfig


def test_shipped_profiles_load_and_round_trip(tmp_path):
    assert {"bitserial", "cpu_roofline"} <= set(shipped_profiles())
    for name in shipped_profiles():
        profile = load_profile(name)
        assert profile.name == name
        copy = load_profile(save_profile(profile, tmp_path / f"{name}.yaml"))
        assert copy == profile


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"bricks": "many"}, "bricks"),
        ({"frequency_mhz": -5}, "frequency_mhz"),
        ({"supported_bits": [2, 3, 8]}, "supported_bits"),
        ({"kind": "gpu"}, "kind"),
        ({"memory_gbps": None}, "memory_gbps"),
    ],
)
def test_bad_profile_yaml_names_the_key(tmp_path, change, key):
    data = load_profile("bitserial").to_dict() | change
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError, match=f"key '{key}'"):
        load_profile(path)


def test_missing_key_and_unknown_name_are_explained(tmp_path):
    data = load_profile("cpu_roofline").to_dict()
    del data["memory_gbps"]
    with pytest.raises(ProfileError, match="missing key 'memory_gbps'"):
        profile_from_dict(data, "mine.yaml")
    data = load_profile("cpu_roofline").to_dict()
    data["classes"][0]["gmacs"] = 1.0
    with pytest.raises(ProfileError, match="key 'classes'.*narrower is never slower"):
        profile_from_dict(data)
    with pytest.raises(ProfileError, match="bitserial, bitserial_shift, cpu_roofline"):
        load_profile("no_such_profile")
    (tmp_path / "broken.yaml").write_text("kind: [unclosed")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(tmp_path / "broken.yaml")


def test_bitserial_latency_scales_with_weight_times_activation_bits(tiny_resnet):
    analysis = analyse(tiny_resnet, torch.zeros(1, 1, 28, 28))
    space = SearchSpace.build(analysis, SpaceConfig(pin_first_last=False))
    lean = profile_from_dict(
        load_profile("bitserial").to_dict() | {"name": "lean", "memory_gbps": 1e6, "layer_overhead_us": 0,
                                               "network_overhead_us": 0}
    )
    cm = CostModel(analysis, space, [lean])
    ms = {b: cm.price(space.uniform(b, b)).value("latency@lean") for b in (2, 4, 8)}
    assert ms[4] == pytest.approx(4 * ms[2]) and ms[8] == pytest.approx(4 * ms[4])
    assert cm.price(space.uniform(3, 3)).value("latency@lean") == pytest.approx(ms[4])  # 3 bits padded to 4


def _measured(analysis, scale: float = 1.0) -> MeasuredProfile:
    widths = (0.5, 1.0)
    layers = tuple(
        MeasuredLayer(
            lay.name, sum(s.channels * s.features_per_channel for s in lay.in_segments), lay.out_channels,
            tuple(tuple(scale * wi * wo for wo in widths) for wi in widths),
            tuple(tuple(0.5 * scale * wi * wo for wo in widths) for wi in widths),
        )
        for lay in analysis.layers
    )
    return MeasuredProfile("table", widths, layers, overhead_ms=0.25)


def test_measured_profile_interpolates_and_uses_int8_only_when_everything_fits(tiny_resnet):
    analysis = analyse(tiny_resnet, torch.zeros(1, 1, 28, 28))
    space = SearchSpace.build(analysis, SpaceConfig(pin_first_last=False, act_bits=(8, 32), n_groups=None))
    cm = CostModel(analysis, space, [_measured(analysis)])
    n = len(analysis.layers)
    assert cm.price(space.uniform(32, 32)).value("latency@table") == pytest.approx(n + 0.25)
    assert cm.price(space.uniform(8, 8)).value("latency@table") == pytest.approx(0.5 * n + 0.25)
    assert cm.price(space.uniform(8, 32)).value("latency@table") == pytest.approx(n + 0.25)
    name = space.names[1]
    one_float = space.uniform(8, 8).replace(name, LayerPolicy(8, (32,) + (8,) * (space.layer(name).out_channels - 1)))
    assert cm.price(one_float).value("latency@table") == pytest.approx(0.5 * n + 0.5 + 0.25)
    assert profile_from_dict(_measured(analysis).to_dict()) == _measured(analysis)


def test_measured_profile_of_another_model_is_refused(tiny_resnet, plain_cnn):
    analysis = analyse(tiny_resnet, torch.zeros(1, 1, 28, 28))
    other = analyse(plain_cnn, torch.zeros(1, 1, 28, 28))
    with pytest.raises(ProfileError, match="measured on another model"):
        CostModel(other, SearchSpace.build(other), [_measured(analysis)])
