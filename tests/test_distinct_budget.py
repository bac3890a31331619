"""The evaluation budget counts distinct policies: a cache hit is free, endless repeats stop."""

from __future__ import annotations

import numpy as np

from agents import Searcher, make_searcher
from agents.records import TrialRecord
from automl.problem.cache import CachedEvaluator
from search_spaces.policy import Policy
from tests.agents_support import make_objective


class Scripted(Searcher):
    """Proposes a fixed script of policies, then repeats the last one forever."""

    name = "scripted"

    def __init__(self, objective, script: list[Policy], **kwargs) -> None:
        super().__init__(objective, **kwargs)
        self.script = script
        self.told: list[TrialRecord] = []

    def ask(self) -> Policy:
        return self.script[min(len(self.told), len(self.script) - 1)]

    def tell(self, policy: Policy, record: TrialRecord) -> None:
        self.told.append(record)


def _policies(objective, n: int) -> list[Policy]:
    rng = np.random.default_rng(0)
    out: list[Policy] = []
    while len(out) < n:
        p = objective.space.sample(rng)
        if objective.feasible(p) and p.key() not in {q.key() for q in out}:
            out.append(p)
    return out


def test_a_cache_hit_does_not_consume_the_evaluation_budget() -> None:
    objective = make_objective(repair=False)
    a, b, c = _policies(objective, 3)
    searcher = Scripted(objective, [a, a, b, a, b, c])
    result = searcher.run(3)
    assert objective.evaluator.n_evaluations == 3  # a and b were evaluated once each
    assert result.n_evaluations == 3 and result.n_proposed == 6 and result.n_cache_hits == 3
    assert [r.cache_hit for r in result.records] == [False, True, False, True, True, False]
    assert len(searcher.told) == 6  # the searcher learns from every proposal, cached or not
    assert result.records[1].metrics == result.records[0].metrics
    assert result.eval_seconds == sum(r.metrics.seconds for r in result.records if not r.cache_hit)


def test_a_result_found_in_the_evaluators_cache_is_free_too() -> None:
    objective = make_objective(repair=False)
    a, b = _policies(objective, 2)
    inner = objective.evaluator
    cached = CachedEvaluator(inner)
    cached.evaluate(a)  # an earlier session evaluated a
    objective.evaluator = cached
    result = Scripted(objective, [a, b]).run(1)
    assert [r.cache_hit for r in result.records] == [True, False]
    assert inner.n_evaluations == 2  # a once before the search, b once in it


def test_a_searcher_that_only_repeats_itself_stops_and_says_why() -> None:
    objective = make_objective(repair=False)
    (a,) = _policies(objective, 1)
    searcher = Scripted(objective, [a])
    searcher.max_duplicates = 7
    result = searcher.run(5)
    assert result.n_evaluations == 1 and result.n_cache_hits == 7
    assert "consecutive" in result.stop_reason and "max_duplicates=7" in result.stop_reason
    assert SearchResultRoundTrip.check(result)


def test_optuna_trials_answered_from_the_cache_do_not_count() -> None:
    objective = make_objective(repair=False)
    searcher = make_searcher("tpe", objective, seed=0, storage=":memory:", warm_start=False, n_startup_trials=3)
    # policies the compact encoding expresses exactly (the nearest expressible ones)
    a, b = (searcher.codec.decode(searcher.codec.encode_nearest(p)) for p in _policies(objective, 2))
    for p in (a, a, b, a):  # a sampler proposing a point twice, as TPE does once it has converged
        searcher.study.enqueue_trial(searcher.codec.encode(p), skip_if_exists=False)
    result = searcher.run(5)
    assert result.n_evaluations == 5
    assert result.n_cache_hits >= 2  # the repeated warm-start policy
    assert objective.evaluator.n_evaluations == 5
    hits = [t for t in searcher.study.trials if t.user_attrs.get("cache_hit")]
    assert len(hits) == result.n_cache_hits


class SearchResultRoundTrip:
    @staticmethod
    def check(result) -> bool:
        from agents.records import SearchResult

        back = SearchResult.from_json(result.to_json())
        return back.stop_reason == result.stop_reason and back.n_cache_hits == result.n_cache_hits
