"""The winner's fine-tune beside the search (automl.runs.overlap): the same result, cancelled on a new incumbent."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from agents.objective import Objective
from automl.cost import CostModel
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.finetune import FinetuneConfig
from automl.problem.budget import Budget
from automl.runs.config import SearchConfig
from automl.runs.overlap import SpeculativeFinetune, overlap_reason
from search_spaces.space import SpaceConfig
from tests.tasks import small_resnet

RECIPE = FinetuneConfig(steps=30, eval_every=10, patience=0)


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    problem = Problem.from_task(small_resnet(), SpaceConfig(weight_bits=(0, 2, 3, 4), act_bits=(2, 3, 4, 8)))
    ev = Evaluator(problem, EvalConfig(bn_samples=0, early_stop=False, fidelity=2))
    cost = CostModel(problem.analysis, problem.space)
    objective = Objective(ev, cost, Budget.parse("size<=0.5x").bind(cost), repair=False)
    rng = np.random.default_rng(0)
    return ev, objective, [problem.space.sample(rng) for _ in range(12)]


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_speculative_fine_tune_is_bit_for_bit_the_foreground_one_and_leaves_the_search_alone(setup, monkeypatch):
    from automl.runs import overlap

    ev, objective, policies = setup
    before = [ev.evaluate(p).to_dict() for p in policies[:6]]
    records = [objective(p, number=i, searcher="test") for i, p in enumerate(policies[:6])]
    feasible = [r for r in records if r.feasible]
    assert feasible, "the budget admits none of the sampled policies: loosen it"
    winner = max(feasible, key=lambda r: (r.accuracy, -r.costs.size_bytes, -r.number))
    # the background fine-tune starts only after the search has applied other policies
    gate, real = threading.Event(), overlap.finetune
    monkeypatch.setattr(overlap, "finetune", lambda *a, **k: (gate.wait(), real(*a, **k))[1])
    spec = SpeculativeFinetune(ev, RECIPE)
    spec.on_trial(winner)
    for r in records:  # the search goes on: the engine applies other policies
        ev.evaluate(r.policy)
        spec.on_trial(r)
    assert spec.report.started == 1 and ev.engine.current != ev.problem.space.resolve(winner.policy)
    gate.set()
    spec.on_end(None)
    model, report = spec.take(winner.policy)
    test = ev.score_final(model, report, "test", 0.0)
    assert spec.report.hit and spec.report.started >= 1
    after = [ev.evaluate(p).to_dict() for p in policies[:6]]
    for a, b in zip(before, after, strict=True):  # the prepared incumbents changed no evaluation
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    ref_metrics, ref_model = ev.final(winner.policy, RECIPE.steps, "test", finetune=RECIPE)
    assert test.accuracy == ref_metrics.accuracy and test.loss == ref_metrics.loss
    assert report.history == ev.last_finetune.history
    ref, got = _state(ref_model), _state(model)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_a_new_incumbent_supersedes_the_running_fine_tune_and_another_winner_gets_none(setup):
    ev, objective, policies = setup
    slow = FinetuneConfig(steps=100_000, eval_every=0, keep_best=False, patience=0)
    spec = SpeculativeFinetune(ev, slow)
    a = SimpleNamespace(policy=policies[0], feasible=True, accuracy=0.1, number=0,
                        costs=SimpleNamespace(size_bytes=1), metrics=SimpleNamespace(fidelity=2))
    b = SimpleNamespace(policy=policies[1], feasible=True, accuracy=0.2, number=1,
                        costs=SimpleNamespace(size_bytes=1), metrics=SimpleNamespace(fidelity=2))
    worse = SimpleNamespace(policy=policies[2], feasible=True, accuracy=0.05, number=2,
                            costs=SimpleNamespace(size_bytes=1), metrics=SimpleNamespace(fidelity=2))
    spec.on_trial(a)
    spec.on_trial(b)  # better: a's fine-tune is stopped, b's starts
    spec.on_trial(worse)  # not better: nothing new
    assert spec.report.started == 2
    assert spec.take(policies[0]) is None  # not the last speculation: stop everything, fine-tune in front
    assert spec.report.cancelled == 2 and not spec.report.hit
    assert all(not j.thread.is_alive() for j in spec._jobs)


class _FailsInTheBackground:
    """The evaluator, except that its training data cannot be read off the main thread."""

    def __init__(self, ev):
        self._ev = ev

    def __getattr__(self, name):
        return getattr(self._ev, name)

    def train_batches(self, *args):
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("no training data")
        return self._ev.train_batches(*args)


def test_an_error_in_the_background_fine_tune_reaches_the_caller(setup):
    ev, _, policies = setup
    spec = SpeculativeFinetune(_FailsInTheBackground(ev), RECIPE)
    spec.on_trial(SimpleNamespace(policy=policies[0], feasible=True, accuracy=0.5, number=0,
                                  costs=SimpleNamespace(size_bytes=1), metrics=SimpleNamespace(fidelity=2)))
    with pytest.raises(RuntimeError, match="no training data"):
        spec.take(policies[0])


def test_overlap_needs_a_spare_core_one_worker_one_finalist_and_plain_rounding():
    def cfg(finetune=None, **sections):
        return SearchConfig(finetune={"overlap": True, **(finetune or {})}, **sections)

    assert overlap_reason(cfg(run={"threads": 1}), cores=2) == ""
    assert "spare core" in overlap_reason(cfg(run={"threads": 1}), cores=1)
    assert "spare core" in overlap_reason(cfg(run={"threads": 2}), cores=3)
    assert overlap_reason(SearchConfig(), cores=8) == "finetune.overlap is off"  # the default (search_speed, README)
    assert "off" in overlap_reason(SearchConfig(finetune={"overlap": False}), cores=8)
    assert "workers" in overlap_reason(cfg(run={"workers": 2}), cores=8)
    assert "finalists" in overlap_reason(cfg(finetune={"finalists": 2}), cores=8)
    assert "evaluation.ptq" in overlap_reason(cfg(evaluation={"ptq": "adaquant-final"}), cores=8)
    assert "no fine-tune" in overlap_reason(cfg(finetune={"steps": 0}), cores=8)


def test_a_search_with_and_without_overlap_delivers_the_same_model(tmp_path, monkeypatch):
    from automl.runs import overlap
    from automl.runs.runner import search
    from tests.tasks import tiny

    monkeypatch.setattr(overlap, "usable_cores", lambda: 2)  # a spare core even on a one-core runner
    out = {}
    for on in (True, False):
        search(tiny(), budget="size<=0.3x",  quiet=True, run={"evaluations": 6, "output": str(tmp_path / str(on))}, finetune={"steps": 6, "eval_every": 2, "overlap": on}, searcher={"name": "random", "sensitivity": "heuristic"})
        run_dir = next((tmp_path / str(on) / "runs").iterdir())
        out[on] = (json.loads((run_dir / "best_policies.json").read_text()),
                   json.loads((run_dir / "timings.json").read_text()))
    (with_, t_with), (without, t_without) = out[True], out[False]
    strip = lambda best: {k: {kk: vv for kk, vv in v.items() if kk != "finetune"} for k, v in best.items()}  # noqa: E731
    assert strip(with_) == strip(without)
    assert [v["finetune"]["history"] for v in with_.values()] == [v["finetune"]["history"] for v in without.values()]
    assert t_with["overlap"]["hit"] and t_with["overlap"]["started"] >= 1
    assert "overlap" not in t_without


def _corrections(model):
    from automl.quant.engine import QuantLayer

    return [None if m.correction is None else [c.clone() for c in m.correction]
            for m in model.modules() if isinstance(m, QuantLayer)]


def test_preparing_the_policy_just_evaluated_reuses_the_engine_state_bit_for_bit(setup):
    import copy

    ev, _, policies = setup
    x = ev._split("val")[0][0]
    ev.evaluate(policies[1])
    reuses = ev.final_reuses
    full = copy.deepcopy(ev.prepare_final(policies[0]))  # from another policy's state: applied and re-estimated
    assert ev.final_reuses == reuses
    ev.evaluate(policies[2])
    ev.evaluate(policies[0])  # incremental: the prefix shared with the earlier ones comes from the cache
    fast = copy.deepcopy(ev.prepare_final(policies[0]))
    assert ev.final_reuses == reuses + 1
    with torch.no_grad():
        assert torch.equal(full(x), fast(x))
    for a, b in zip(_corrections(full), _corrections(fast), strict=True):
        assert (a is None and b is None) or all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    ev.engine.apply(policies[0])  # the same policy applied again drops the corrections: no reuse
    ev.prepare_final(policies[0])
    assert ev.final_reuses == reuses + 1
