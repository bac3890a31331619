"""The ONNX Runtime latency profile: what it measures, how it is cached, how it prices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from automl.analysis.prune import keep_masks
from automl.cost.model import CostModel
from automl.cost.profiles import MeasuredLayer, MeasuredProfile, load_profile, save_profile
from automl.errors import PolicyError
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.task import Task
from automl.export import ort
from automl.export.ampq import export_policy
from automl.export.onnx import ampq_to_onnx, float_onnx
from automl.export.ort_profile import cache_path, cpu_model, fused_consumers, ort_profile, resolve_profiles
from automl.problem.budget import Budget
from tests.conftest import make_loaders

QUICK = {"widths": (0.5, 1.0), "repeats": 1}


def _problem(model):
    loaders = make_loaders()
    task = Task(model, torch.zeros(2, 1, 28, 28), loaders["train"], loaders["calib"], loaders["val"], loaders["test"])
    return task, Problem.from_task(task)


@pytest.mark.slow
def test_profile_is_measured_once_cached_by_cpu_and_threads_and_prices_a_policy(tiny_resnet, tmp_path):
    task, problem = _problem(tiny_resnet)
    analysis = problem.analysis
    profile, path = ort_profile(task.model, task.sample_input, analysis, cache_dir=tmp_path, **QUICK)
    cpu = "".join(c for c in cpu_model().lower() if c.isalnum())
    assert path.is_file() and "-1t-b1-" in path.name  # thread count and batch in the key
    assert cpu[:12] in "".join(c for c in path.name if c.isalnum())  # and the CPU model
    assert profile.name == "ort-cpu" and profile.runtime == "onnxruntime" and profile.batch == 1
    assert not profile.int8_capped and profile.stated_error > 0
    consumers = fused_consumers(analysis)
    assert consumers and {m.name: m.consumer for m in profile.layers if m.fused_ms is not None} == consumers
    again, same = ort_profile(task.model, task.sample_input, analysis, cache_dir=tmp_path, **QUICK)
    assert same == path and again.to_dict() == load_profile(path).to_dict()  # read from the cache, not re-measured
    cm = CostModel(analysis, problem.space, [profile])
    full, pruned = cm.price(problem.space.uniform(8, 8)), cm.price(problem.space.uniform(8, 8, sparsity=0.5))
    assert pruned.value("latency@ort-cpu") < full.value("latency@ort-cpu")
    # On layers this small the activation QDQ costs more than pruning saves, so limits are
    # set from the cheapest policy rather than as a fraction of the float network.
    cheapest = cm.price(cm.cheapest_policy()).value("latency@ort-cpu")
    bound = Budget.parse(f"latency<={1.5 * cheapest:.6f}ms@ort-cpu").bind(cm)
    assert bound.metrics == ("latency@ort-cpu",)


def _synthetic(analysis, batch=1, int8=2.0, fused=0.5) -> MeasuredProfile:
    """A profile of made-up tables: float 1 ms, int8 ``int8`` ms, fused ``fused`` ms per layer at full width."""
    widths = (0.5, 1.0)
    consumers = fused_consumers(analysis)

    def table(v):
        return ((v / 2, v / 2), (v / 2, v))

    layers = tuple(MeasuredLayer(lay.name, sum(s.channels * s.features_per_channel for s in lay.in_segments),
                                 lay.out_channels, table(1.0), table(int8),
                                 table(fused) if lay.name in consumers else None, consumers.get(lay.name, ""))
                   for lay in analysis.layers)
    return MeasuredProfile(name="ort-cpu" if batch == 1 else f"ort-cpu-b{batch}", widths=widths, layers=layers,
                           runtime="onnxruntime", batch=batch, int8_capped=False, stated_error=0.1)


def test_ort_pricing_follows_what_the_exported_file_runs(tiny_resnet):
    """Quantized inputs cost the QDQ table whatever the weights; a layer whose only consumer
    requantizes it costs the fused table; 32-bit activations cost the float table."""
    _, problem = _problem(tiny_resnet)
    analysis = problem.analysis
    profile = _synthetic(analysis)
    fused = fused_consumers(analysis)
    assert fused and all(analysis.layer(c) for c in fused.values())
    cm = CostModel(analysis, problem.space, [profile])
    bits = np.concatenate([np.full(lay.out_channels, 8) for lay in analysis.layers])[None, :]
    batch = cm.layer_batch(bits, np.full((1, len(analysis.layers)), 8))
    ms = profile.layer_ms(batch)[0]
    for i, lay in enumerate(analysis.layers):
        assert ms[i] == pytest.approx(0.5 if lay.name in fused else 2.0), lay.name
    bits = np.concatenate([np.full(lay.out_channels, 32) for lay in analysis.layers])[None, :]
    ms = profile.layer_ms(cm.layer_batch(bits, np.full((1, len(analysis.layers)), 32)))[0]
    assert ms == pytest.approx(np.ones(len(analysis.layers)))
    round_trip = type(profile).from_dict(profile.to_dict())
    assert round_trip.to_dict() == profile.to_dict() and round_trip.layers == profile.layers


def test_resolve_profiles_names_the_ort_profile_by_batch_and_reads_the_cache(tiny_resnet, tmp_path, monkeypatch):
    task, problem = _problem(tiny_resnet)
    seen = []

    def fake(model, sample, analysis, *, batch, threads, name, provider):
        seen.append((batch, threads, name))
        assert provider == "cpu"
        path = cache_path(analysis, threads, batch, tmp_path)
        save_profile(_synthetic(analysis, batch), path)  # a cache hit: nothing is measured
        return ort_profile(model, sample, analysis, batch=batch, threads=threads, name=name, cache_dir=tmp_path)

    monkeypatch.setattr("automl.export.ort_profile.ort_profile", fake)
    profiles = resolve_profiles(["ort-cpu-b4", "bitserial"], task.model, task.sample_input, problem.analysis, threads=1)
    assert [p.name for p in profiles] == ["ort-cpu-b4", "bitserial"] and seen == [(4, 1, "ort-cpu-b4")]
    assert profiles[0].batch == 4 and profiles[0].stated_error == 0.1


@pytest.mark.slow
def test_a_latency_budget_on_the_ort_profile_is_met_by_the_exported_model(tiny_resnet, tmp_path):
    """Random policies the cost model prices within a latency limit on the ONNX Runtime profile are
    exported and timed there, interleaved with the float model: each one's latency relative to float
    meets the limit relative to float within the profile's stated error and the timing noise of
    this run. Ratios, so that a machine busier now than when the profile was measured does not
    decide the test (the absolute figures are the benchmark's, ``benchmarks/latency_fidelity.py``)."""
    task, problem = _problem(tiny_resnet)
    ev = Evaluator(problem, EvalConfig(fidelity=1, bn_samples=0, early_stop=False))
    profile, _ = ort_profile(task.model, task.sample_input, problem.analysis, cache_dir=tmp_path)
    cm = CostModel(problem.analysis, problem.space, [profile])
    float_ms = cm.float_costs().value("latency@ort-cpu")
    cheapest = cm.price(cm.cheapest_policy()).value("latency@ort-cpu")
    bound = Budget.parse(f"latency<={1.6 * cheapest:.6f}ms@ort-cpu").bind(cm)
    limit = dict(bound.limits)["latency@ort-cpu"]
    rng = np.random.default_rng(0)
    policies = []
    while len(policies) < 4:
        policy = problem.space.resolve(problem.space.sample(rng))
        try:
            keep_masks(problem.analysis, policy)
        except PolicyError:
            continue
        if bound.feasible(cm.price(policy)):
            policies.append(policy)
    x = torch.randn(1, 1, 28, 28)
    floats = [ort.session(float_onnx(ev.float_model, x)) for _ in range(2)]  # twice: the run's own timing noise
    sessions = []
    for i, policy in enumerate(policies):
        path = tmp_path / f"p{i}.ampq"
        export_policy(ev.engine.apply(policy), problem.analysis, policy, path, sample_input=x, float_model=ev.float_model,
                      repeats=1)
        sessions.append(ort.session(ampq_to_onnx(path).SerializeToString()))
    measured = ort.best_ms([ort.runner(s, x.numpy()) for s in [*floats, *sessions]], repeats=30)
    float_a, float_b, *models = measured
    noise = abs(float_a - float_b) / min(float_a, float_b)
    ratios = [m / min(float_a, float_b) for m in models]
    allowed = limit / float_ms * (1 + profile.stated_error + 2 * noise)
    assert max(ratios) <= allowed, (ratios, limit / float_ms, profile.stated_error, noise)
