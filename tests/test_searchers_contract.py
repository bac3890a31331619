"""One contract, every searcher (like Optuna's BasicSamplerTestCase).

Each searcher runs on the same tiny problem (the conftest-sized ResNet-8, a size budget, a
deterministic synthetic evaluator) and must: return only feasible policies as best, honour
``n_evaluations``, repeat itself for a seed, end better than it started, and call callbacks.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import pytest

from agents import Callback, Objective, Searcher, SearchResult, make_searcher
from tests.agents_support import make_objective

N = 16

# name -> options that keep each searcher fast on the tiny problem
FACTORIES: dict[str, dict] = {
    "random": {},
    "ilp": {},
    "ilp_tpe": {"storage": ":memory:", "sweep": 4, "n_startup_trials": 5},  # sweep, uniform, then TPE within N
    "tpe": {"storage": ":memory:", "warm_start": False, "n_startup_trials": 5},
    "nsga2": {"storage": ":memory:", "warm_start": False, "population_size": 6},
    "gp": {"storage": ":memory:", "warm_start": False, "n_startup_trials": 5},
    "cmaes": {"storage": ":memory:", "warm_start": False},
    "ppo": {"episodes_per_update": 2},
    "maskable_ppo": {"episodes_per_update": 2},
    "ddpg": {"warmup_episodes": 3},
    "td3": {"warmup_episodes": 3},
    "sac": {"warmup_episodes": 3},
}


def test_every_registered_searcher_is_in_the_contract() -> None:
    from agents import SEARCHERS

    assert set(FACTORIES) == set(SEARCHERS)
SLOW = {"gp"}  # a GP fit per trial: tens of seconds
PARAMS = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in FACTORIES]

SearcherFactory = Callable[..., Searcher]


@pytest.fixture(params=PARAMS)
def factory(request) -> SearcherFactory:
    name = request.param

    def build(objective: Objective | None = None, seed: int = 0) -> Searcher:
        return make_searcher(name, objective or make_objective(), seed=seed, **FACTORIES[name])

    build.searcher_name = name  # type: ignore[attr-defined]
    return build


def test_best_is_feasible_and_every_record_is_judged_by_the_budget(factory: SearcherFactory) -> None:
    searcher = factory()
    result = searcher.run(N)
    best = result.best
    assert best is not None
    assert best.feasible
    bound = searcher.objective.bound
    assert bound.feasible(searcher.objective.cost_model.price(best.policy))
    for r in result.records:
        assert r.feasible == bound.feasible(r.costs)
        assert r.costs == searcher.objective.cost_model.price(r.policy)
    assert all(r.accuracy <= best.accuracy for r in result.records if r.feasible)


def test_honours_n_evaluations(factory: SearcherFactory) -> None:
    objective = make_objective()
    result = factory(objective).run(N)
    assert result.n_evaluations == N  # distinct policies; a repeated proposal is a free cache hit
    assert objective.n_calls == result.n_proposed == N + result.n_cache_hits
    assert objective.evaluator.n_evaluations == N
    assert sorted(r.number for r in result.records) == [r.number for r in result.records]


def test_deterministic_for_a_seed(factory: SearcherFactory) -> None:
    first = [r.policy.key() for r in factory(seed=3).run(N).records]
    again = [r.policy.key() for r in factory(seed=3).run(N).records]
    assert first == again


def test_ends_better_than_it_starts(factory: SearcherFactory) -> None:
    result = factory().run(N)
    accuracies = [r.accuracy for r in result.records]
    assert result.best.accuracy > statistics.mean(accuracies[:4])
    assert result.best.accuracy >= max(r.accuracy for r in result.records[:4] if r.feasible)


class Recorder(Callback):
    def __init__(self, stop_after: int | None = None) -> None:
        self.events: list[str] = []
        self.stop_after = stop_after
        self.result: SearchResult | None = None

    def on_start(self, searcher, objective) -> None:
        self.events.append("start")

    def on_trial(self, record) -> bool:
        self.events.append("trial")
        return self.stop_after is None or self.events.count("trial") < self.stop_after

    def on_end(self, result) -> None:
        self.events.append("end")
        self.result = result


def test_callbacks_see_every_trial_and_can_stop(factory: SearcherFactory) -> None:
    full, stopper = Recorder(), Recorder(stop_after=3)
    result = factory().run(6, callbacks=[full, stopper])
    assert full.events == ["start"] + ["trial"] * 3 + ["end"]
    assert result.n_evaluations == 3
    assert stopper.result is not None and stopper.result.n_evaluations == 3


def test_result_round_trips_through_json(factory: SearcherFactory) -> None:
    result = factory().run(4)
    again = SearchResult.from_json(result.to_json())
    assert again == result
    assert again.best == result.best


# searchers whose encoding includes the N:M pattern (the RL envs and the ILP execute dense)
SEARCH_NM = {"random", "tpe", "nsga2", "gp", "cmaes"}


def test_works_with_nm_patterns_on(factory: SearcherFactory) -> None:
    objective = make_objective(nm=("2:4", "2:4-T"))
    result = factory(objective).run(N)
    assert result.best is not None and result.best.feasible
    for r in result.records:
        objective.cost_model.space.validate(r.policy)
        assert r.costs == objective.cost_model.price(r.policy)
        assert r.feasible == objective.bound.feasible(r.costs)
    used = {lp.nm for r in result.records for _, lp in r.policy}
    if factory.searcher_name in SEARCH_NM:  # type: ignore[attr-defined]
        assert used - {""}
