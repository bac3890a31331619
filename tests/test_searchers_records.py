"""Trial records, search results, the objective, random search's repair fallback and the ILP sweep."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import SearchResult, TrialRecord, best_record, pareto_front
from agents.ilp import ILPSearcher
from agents.random_search import RandomSearcher
from automl.cost import Costs
from automl.errors import ConfigError, PolicyError
from automl.problem.metrics import Metrics
from tests.agents_support import make_objective


@pytest.fixture(scope="module")
def objective():
    return make_objective()


def test_the_objective_repairs_and_records_an_over_budget_policy(objective) -> None:
    policy = objective.space.uniform(8)
    assert not objective.feasible(policy)
    record = objective(policy, number=7, searcher="me")
    assert record.number == 7 and record.searcher == "me"
    assert record.proposed == policy and record.policy != policy
    assert record.repaired and record.repair.changed and record.feasible
    assert objective.bound.feasible(record.costs)
    again = TrialRecord.from_json(record.to_json())
    assert again == record


def test_without_repair_an_over_budget_policy_is_recorded_infeasible() -> None:
    objective = make_objective(repair=False)
    record = objective(objective.space.uniform(8))
    assert not record.feasible and not record.repaired
    result = SearchResult("x", (record,), objective.limits)
    assert result.best is None
    assert result.best_for({"size": record.cost("size")}) == record


def test_a_policy_of_another_space_is_refused(objective) -> None:
    other = make_objective(n_groups=1).space.uniform(4)
    with pytest.raises(PolicyError):
        objective(other.replace(other.names[1], other[other.names[1]].__class__(4, (4,))))


def _record(number: int, accuracy: float, size: float, bitops: float, feasible: bool = True) -> TrialRecord:
    from search_spaces.policy import LayerPolicy, Policy

    policy = Policy((("l", LayerPolicy(8, (8,))),))
    return TrialRecord(number, policy, policy, Metrics(accuracy, 0.0, 0.0, 1), Costs(size, 1.0, bitops, 1.0), feasible)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(1, 10), st.floats(1, 10)), min_size=1, max_size=25))
def test_pareto_front_holds_exactly_the_non_dominated_records(points) -> None:
    records = [_record(i, a, s, b) for i, (a, s, b) in enumerate(points)]
    front = pareto_front(records, ("size", "bitops"))
    keys = {(r.accuracy, r.cost("size"), r.cost("bitops")) for r in front}

    def dominated(r: TrialRecord) -> bool:
        return any(
            o.accuracy >= r.accuracy and o.cost("size") <= r.cost("size") and o.cost("bitops") <= r.cost("bitops")
            and (o.accuracy, o.cost("size"), o.cost("bitops")) != (r.accuracy, r.cost("size"), r.cost("bitops"))
            for o in records
        )

    for r in records:
        assert ((r.accuracy, r.cost("size"), r.cost("bitops")) in keys) == (not dominated(r))
    assert len(keys) == len(front), "equal points appear once"


def test_best_is_the_most_accurate_feasible_record() -> None:
    records = [_record(0, 0.5, 2, 2), _record(1, 0.9, 9, 9, feasible=False), _record(2, 0.7, 3, 3)]
    assert best_record(records).number == 2
    assert best_record(records, {"size": 2.5}).number == 0
    result = SearchResult("x", tuple(records), (("size", 3.0),))
    data = result.to_dict()
    assert data["best"] == 2 and data["pareto"]["size"] == [0, 2, 1]
    assert SearchResult.from_dict(data) == result


def test_duplicate_trial_numbers_are_refused() -> None:
    with pytest.raises(ConfigError, match="twice"):
        SearchResult("x", (_record(0, 0.5, 1, 1), _record(0, 0.6, 1, 1)))


def test_random_search_falls_back_to_a_recorded_repair_when_rejection_fails() -> None:
    objective = make_objective(budget="size<=0.06x")
    searcher = RandomSearcher(objective, seed=0, max_tries=1)
    result = searcher.run(5)
    assert searcher.fallbacks > 0
    assert all(r.feasible for r in result.records)
    assert sum(r.repaired for r in result.records) == searcher.fallbacks


def test_ilp_searcher_starts_at_the_optimum_then_tightens(objective) -> None:
    searcher = ILPSearcher(objective, sweep=3)
    result = searcher.run(5)
    assert result.records[0].policy == searcher.solve(1.0)
    assert searcher.factors[0] == 1.0 and searcher.factors == sorted(searcher.factors, reverse=True)
    limit = dict(objective.limits)["size"]
    for record, factor in zip(result.records, searcher.factors, strict=False):
        assert record.cost("size") <= factor * limit * (1 + 1e-9)
    assert len({r.policy.key() for r in result.records[: len(searcher.factors)]}) == len(searcher.factors)
    best = result.best.policy
    assert all(r.policy == best for r in result.records[len(searcher.factors):]), "then the best is repeated"
