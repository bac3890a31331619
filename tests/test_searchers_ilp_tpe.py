"""The default searcher: the integer program's sweep, then the uniform warm start, then TPE."""

from __future__ import annotations

from dataclasses import replace

import pytest
from optuna.trial import TrialState

from agents.ilp import ILPSearcher
from agents.optuna_search import ILPTPESearcher, uniform_warm_policies
from automl.errors import ConfigError
from automl.problem.ilp import choice_table, solve_ilp
from automl.runs.config import SearchConfig
from search_spaces.policy import FLOAT_BITS
from tests.agents_support import make_objective


def sweep_order(sweep: int) -> list:
    """The distinct optima the ILP searcher proposes, in its order."""
    ilp = ILPSearcher(make_objective(), sweep=sweep, time_limit=10.0, mip_rel_gap=1e-3)
    out = []
    for factor in ilp.schedule:
        p = ilp.solve(factor)
        if p not in out:
            out.append(p)
    return out


def test_default_searcher_is_ilp_tpe() -> None:
    assert SearchConfig().searcher.name == "ilp_tpe"


def test_proposes_the_sweep_then_the_uniform_warm_start_then_tpe() -> None:
    sweep = sweep_order(5)
    uniform = [p for p in uniform_warm_policies(make_objective()) if p not in sweep]
    n = len(sweep) + len(uniform) + 8
    result = ILPTPESearcher(make_objective(), storage=":memory:", sweep=5, n_startup_trials=3).run(n)
    policies = [r.policy for r in result.records]
    assert policies[: len(sweep)] == sweep
    assert policies[len(sweep): len(sweep) + len(uniform)] == uniform
    tpe = policies[len(sweep) + len(uniform):]
    assert len(tpe) == 8 and not set(tpe) & set(sweep + uniform)
    assert result.n_evaluations == n


def test_the_sweep_is_the_ilp_searchers_when_it_fills_the_budget() -> None:
    """Where the sweep has as many optima as evaluations, the search is the ILP searcher's (the
    benchmark's ResNet-20 rows): same proposals, same order."""
    ilp = ILPSearcher(make_objective(), sweep=4, time_limit=10.0, mip_rel_gap=1e-3).run(3)
    both = ILPTPESearcher(make_objective(), storage=":memory:", sweep=4).run(3)
    assert [r.policy for r in both.records] == [r.policy for r in ilp.records]


def test_a_cut_short_sweep_resumes_from_the_study(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = ILPTPESearcher(make_objective(), storage=storage, study_name="s", sweep=5).run(2)
    again = ILPTPESearcher(make_objective(), storage=storage, study_name="s", sweep=5)
    assert not again.study.user_attrs.get(ILPTPESearcher.SWEEP_DONE)
    sweep = sweep_order(5)
    result = again.run(len(sweep) + 2)
    policies = [r.policy for r in result.records]
    assert policies[:2] == [r.policy for r in first.records]
    assert policies[: len(sweep)] == sweep  # continued where it stopped, nothing twice
    assert len(set(policies)) == len(policies)
    assert again.study.user_attrs.get(ILPTPESearcher.SWEEP_DONE)


def test_a_worker_process_does_not_run_the_sweep() -> None:
    searcher = ILPTPESearcher(make_objective(), storage=":memory:", sweep=5, n_startup_trials=3)
    searcher.worker = {"host": "h", "pid": 1}
    result = searcher.run(3)
    assert not set(r.policy for r in result.records) & set(sweep_order(5))
    assert not searcher.study.get_trials(states=(TrialState.WAITING,))


def test_tpe_goes_on_where_the_proxy_misleads() -> None:
    """Sensitivities that rank the layers backwards make the program's optima poor; the TPE phase
    must then find a better policy than the whole sweep did (it can fail: TPE might not)."""
    objective = make_objective()
    index = {n: i for i, n in enumerate(objective.space.names)}

    def wrong(layer: str, sparsity: float, weight_bits: int, act_bits: int) -> float:
        weight = 3.0 - (index[layer] % 3)  # the synthetic evaluator weighs 1 + i % 3
        w = 0.0 if weight_bits >= FLOAT_BITS else 0.5**weight_bits
        return weight * (sparsity * 0.4 + (1 - sparsity) * w + 0.3**act_bits)

    objective.sensitivities = wrong
    sweep_best = ILPSearcher(objective, sweep=6).run(6).best.accuracy
    objective = make_objective()
    objective.sensitivities = wrong
    result = ILPTPESearcher(objective, storage=":memory:", sweep=6, seed=0).run(60)
    assert result.best.accuracy > sweep_best + 1e-3


def test_rejects_a_warm_start_of_its_own() -> None:
    with pytest.raises(ConfigError, match="warm_start"):
        ILPTPESearcher(make_objective(), storage=":memory:", warm_start=False)


def test_a_sweep_reuses_one_priced_table() -> None:
    objective = make_objective()
    table = choice_table(objective.space, objective.cost_model, objective.bound.metrics, objective.sensitivities)
    ilp = ILPSearcher(objective, sweep=4)
    for factor in ilp.schedule:
        limits = tuple((m, v * factor) for m, v in objective.bound.limits)
        bound = replace(objective.bound, limits=limits)
        fresh = solve_ilp(objective.space, objective.cost_model, bound, objective.sensitivities)
        assert solve_ilp(objective.space, objective.cost_model, bound, objective.sensitivities, table=table) == fresh
        assert ilp.solve(factor) == fresh


def test_the_coordinator_of_workers_queues_the_sweep_for_them(tmp_path) -> None:
    """With several workers the parent evaluates nothing: it queues the whole sweep (and the uniform
    warm start) before they start, and a worker's first proposals are the sweep's, in order."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    parent = ILPTPESearcher(make_objective(), storage=storage, study_name="s", sweep=5)
    parent.prime(20)
    sweep = sweep_order(5)
    uniform = [p for p in uniform_warm_policies(make_objective()) if p not in sweep]
    assert len(parent.study.get_trials(states=(TrialState.WAITING,))) == len(sweep) + len(uniform)
    assert parent.study.user_attrs.get(ILPTPESearcher.SWEEP_DONE)
    worker = ILPTPESearcher(make_objective(), storage=storage, study_name="s", sweep=5, seed=1001)
    worker.worker = {"host": "h", "pid": 2}
    result = worker.run(len(sweep) + 1)
    assert [r.policy for r in result.records][: len(sweep)] == sweep


def test_a_sweep_as_long_as_a_huge_evaluation_count_holds_no_array_of_that_length() -> None:
    """ilp_tpe sweeps as many budget factors as the search has evaluations: the factors are
    computed when read (an evaluation count of 10^12 allocated them all and died in numpy)."""
    ilp = ILPSearcher(make_objective(), sweep=10**12)
    assert len(ilp.schedule) == 10**12
    assert ilp.schedule[0] == 1.0 and ilp.schedule[10**12 - 1] == 0.6
    assert list(ILPSearcher(make_objective(), sweep=16).schedule[14:]) == [pytest.approx(0.6 + 0.4 / 15), 0.6]
