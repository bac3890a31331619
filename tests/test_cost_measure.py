"""Measured profiles: profile_hardware writes a table the latency budget can use."""

from __future__ import annotations

import pytest
import torch

from automl.analysis import analyse
from automl.cost import CostModel, MeasuredProfile, load_profile
from automl.errors import ConfigError
from automl.export.torch_profile import interleaved_ms, profile_hardware, quantized_engine
from automl.problem.budget import Budget
from search_spaces import SearchSpace, SpaceConfig


def test_profile_hardware_writes_a_usable_measured_profile(plain_cnn, tmp_path):
    x = torch.zeros(2, 1, 28, 28)
    analysis = analyse(plain_cnn, x)
    threads = torch.get_num_threads()
    path = profile_hardware(plain_cnn, x, analysis, tmp_path / "p.yaml", threads=1, widths=(0.5, 1.0), repeats=2)
    assert torch.get_num_threads() == threads
    profile = load_profile(path)
    assert isinstance(profile, MeasuredProfile) and profile.engine == quantized_engine()
    assert [m.name for m in profile.layers] == list(analysis.names)
    space = SearchSpace.build(analysis, SpaceConfig(weight_bits=(0, 8, 32), act_bits=(8, 32), pinned_bits=32))
    cm = CostModel(analysis, space, [profile])
    key = f"latency@{profile.name}"
    full = cm.price(space.uniform(32, 32)).value(key)
    pruned = cm.price(space.uniform(32, 32, sparsity=0.5)).value(key)
    assert 0 < pruned < full
    assert Budget.parse(f"latency<=0.99x@{path}").bind(cm).metrics == (key,)


def test_profile_hardware_checks_its_arguments(plain_cnn, tmp_path):
    x = torch.zeros(1, 1, 28, 28)
    analysis = analyse(plain_cnn, x)
    with pytest.raises(ConfigError, match="widths"):
        profile_hardware(plain_cnn, x, analysis, tmp_path / "p.yaml", widths=(0.5, 0.9))


def test_interleaved_timing_returns_one_positive_time_per_function():
    ms = interleaved_ms([lambda: sum(range(100)), lambda: sum(range(10000))], repeats=3)
    assert len(ms) == 2 and 0 < ms[0] < ms[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_profile_hardware_on_a_missing_gpu_is_refused_not_timed_on_the_cpu(plain_cnn, tmp_path):
    x = torch.zeros(1, 1, 28, 28)
    analysis = analyse(plain_cnn, x)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        profile_hardware(plain_cnn, x, analysis, tmp_path / "p.yaml", widths=(0.5, 1.0), repeats=1, device="cuda")
    assert not (tmp_path / "p.yaml").exists()
