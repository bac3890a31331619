"""Optuna searchers: warm start, resume, shared studies (SQLite, journal file, PostgreSQL), Pareto fronts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from agents.baselines import uniform_set
from agents.codec import PolicyCodec
from agents.ilp import ILPSearcher
from agents.optuna_search import RECORD_ATTR, SURPLUS_ATTR, NSGA2Searcher, TPESearcher
from agents.records import TrialRecord
from agents.storage import open_storage
from automl.errors import ConfigError
from tests.agents_support import make_objective
from tests.postgres_support import ENV_URL, postgres_bin, start_postgres

ROOT = Path(__file__).resolve().parents[1]


def test_codec_round_trips_uniform_and_sampled_policies(rng) -> None:
    objective = make_objective()
    codec = PolicyCodec(objective.space)
    for policy in uniform_set(objective.space):
        assert codec.decode(codec.encode(policy)) == policy
    for _ in range(20):
        params = {k: int(rng.integers(n)) for k, n in codec.ranges.items()}
        policy = codec.decode(params)
        assert codec.decode(codec.encode(policy)) == policy


def test_warm_start_evaluates_the_ilp_policy_first() -> None:
    objective = make_objective()
    ilp = ILPSearcher(make_objective()).solve()
    result = TPESearcher(objective, storage=":memory:").run(3)
    assert result.records[0].policy == ilp
    assert result.best.accuracy >= result.records[0].accuracy


def test_warm_start_uniform_policies_take_the_widest_activations_that_fit() -> None:
    """Under a size budget activations cost nothing: the warm start's uniform policies are
    W{b}A{widest}, not W{b}A{b}, and each is the least pruned that fits."""
    from agents.baselines import uniform_combinations
    from agents.optuna_search import warm_start_policies

    objective = make_objective(budget="size<=0.15x")
    uniform = warm_start_policies(objective)[1:]
    assert uniform and all(objective.feasible(p) for p in uniform)
    widest = max(a for s in objective.space.layers if not s.pinned for a in s.act_bits)
    combos = {c.policy: c for c in uniform_combinations(objective.space)}
    for p in uniform:
        choice = combos[p]
        assert choice.act_bits == widest, choice
        fits = [c for c in combos.values() if c.weight_bits == choice.weight_bits and objective.feasible(c.policy)]
        assert choice.sparsity == min(c.sparsity for c in fits)
    assert len({combos[p].weight_bits for p in uniform}) == len(uniform)


def test_infeasible_proposals_are_constrained_not_best_without_repair() -> None:
    objective = make_objective(budget="size<=0.1x", repair=False)
    searcher = TPESearcher(objective, storage=":memory:", warm_start=False, n_startup_trials=4)
    result = searcher.run(12)
    assert any(not r.feasible for r in result.records), "the random start should propose over-budget policies"
    for t in searcher.study.trials:
        record = TrialRecord.from_json(t.user_attrs[RECORD_ATTR])
        assert (max(t.constraints.values()) <= 1e-9) == record.feasible
    assert result.best is None or result.best.feasible


def test_a_reopened_study_resumes_without_re_evaluating(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = TPESearcher(make_objective(), storage=url, study_name="resume", warm_start=False).run(5)
    objective = make_objective()
    searcher = TPESearcher(objective, storage=url, study_name="resume", warm_start=False, seed=1)
    assert [r.policy for r in searcher.records] == [r.policy for r in first.records]
    result = searcher.run(8)
    assert objective.n_calls == 3
    assert result.n_evaluations == 8
    assert result.records[:5] == first.records


def _commits_per_trial(tmp_path: Path, name: str, trials: int = 4) -> tuple[float, TPESearcher, list[TrialRecord]]:
    from sqlalchemy import event

    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_interval=None)
    searcher = TPESearcher(make_objective(), storage=storage, study_name=name, warm_start=False)
    commits: list[int] = []
    event.listen(storage.engine, "commit", lambda _conn: commits.append(1))
    result = searcher.run(trials)
    return len(commits) / trials, searcher, result.records


def test_a_trials_parameters_are_stored_exactly_in_one_commit(tmp_path, monkeypatch) -> None:
    import contextlib

    from agents import optuna_search
    from agents.storage import batched_params

    batched, searcher, records = _commits_per_trial(tmp_path, "batched")
    stored = optuna.load_study(study_name="batched", storage=open_storage(f"sqlite:///{tmp_path / 'study.db'}")).trials
    assert len(stored) == 4 and all(len(t.params) == len(searcher.distributions) for t in stored)
    assert [searcher.codec.decode(t.params) for t in stored] == [r.proposed for r in records]
    monkeypatch.setattr(optuna_search, "batched_params", lambda _storage: contextlib.nullcontext())
    one_by_one, _, _ = _commits_per_trial(tmp_path, "one-by-one")
    assert len(searcher.distributions) > 20
    assert batched <= one_by_one - (len(searcher.distributions) - 1), (batched, one_by_one)
    # Optuna's own checks still run on the held parameters: a distribution the study holds in another form
    with pytest.raises(ValueError, match="different distribution"), batched_params(searcher.storage):
        searcher.study.ask({**searcher.distributions, "spread": optuna.distributions.FloatDistribution(0, 1)})


def test_a_study_with_other_objectives_is_refused(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    TPESearcher(make_objective(), storage=url, study_name="s", warm_start=False).run(1)
    with pytest.raises(ConfigError, match="other objectives"):
        NSGA2Searcher(make_objective(), storage=url, study_name="s", warm_start=False)


def test_nsga2_front_is_non_dominated_over_accuracy_and_costs() -> None:
    result = NSGA2Searcher(make_objective(), storage=":memory:", population_size=6).run(18)
    front = result.pareto_front(("size", "bitops"))
    assert front
    for r in front:
        for other in result.records:
            better_or_equal = (other.accuracy >= r.accuracy and other.cost("size") <= r.cost("size")
                               and other.cost("bitops") <= r.cost("bitops"))
            strictly = (other.accuracy > r.accuracy or other.cost("size") < r.cost("size")
                        or other.cost("bitops") < r.cost("bitops"))
            assert not (better_or_equal and strictly)


def _run_workers(storage: str, study: str, n: int, seeds: tuple[int, ...]) -> list[list[int]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.agents_support", storage, study, str(n), str(seed)],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in seeds
    ]
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    return outputs


def _check_shared_study(storage: str, study: str, n: int, evaluated: list[list[int]]) -> None:
    trials = optuna.load_study(study_name=study, storage=open_storage(storage, heartbeat_interval=None)).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert all(t.user_attrs.get(SURPLUS_ATTR) for t in trials if t.state == TrialState.FAIL)
    numbers = sorted(TrialRecord.from_json(t.user_attrs[RECORD_ATTR]).number for t in complete)
    assert numbers == sorted(t.number for t in complete)
    every = sorted(n for worker in evaluated for n in worker)
    assert every == numbers, "each finished trial was evaluated by exactly one worker"
    assert all(evaluated), "both workers took part"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_workers_share_one_file_study(tmp_path, kind: str) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'study.log'}"
    evaluated = _run_workers(storage, "shared", 24, (1, 2))
    _check_shared_study(storage, "shared", 24, evaluated)


@pytest.fixture(scope="module")
def postgres_url():
    if os.environ.get(ENV_URL):
        yield os.environ[ENV_URL]
        return
    if postgres_bin() is None:
        why = "no PostgreSQL binaries: apt-get install -y postgresql (or set AUTOML_TEST_POSTGRES_URL)"
        if os.environ.get("CI"):  # .ci/run installs PostgreSQL: in CI a skip would hide a broken set-up
            pytest.fail(why)
        pytest.skip(why)
    pytest.importorskip("psycopg2", reason="pip install psycopg2-binary (the 'postgres' extra)")
    server = start_postgres()
    try:
        yield server.url
    finally:
        server.remove()


@pytest.mark.postgres
def test_two_workers_share_one_postgres_study(postgres_url: str) -> None:
    evaluated = _run_workers(postgres_url, "shared-pg", 20, (1, 2))
    _check_shared_study(postgres_url, "shared-pg", 20, evaluated)


def test_the_sampler_sees_accuracy_with_a_small_kl_slope() -> None:
    searcher = TPESearcher(make_objective(), storage=":memory:", warm_start=False, kl_weight=0.01)
    result = searcher.run(3)
    for t, record in zip(searcher.study.trials, result.records, strict=True):
        assert t.value == pytest.approx(record.accuracy - 0.01 * record.metrics.kl)
    with pytest.raises(ConfigError, match="kl_weight"):
        TPESearcher(make_objective(), storage=":memory:", kl_weight=-1.0)


def test_the_compact_encoding_has_about_three_parameters_per_layer() -> None:
    import torch

    from automl.analysis import analyse
    from automl.reference.models import ResNet
    from search_spaces.space import SearchSpace

    space = SearchSpace.build(analyse(ResNet(20).eval(), torch.zeros(2, 1, 28, 28)))
    free = sum(1 for s in space.layers if not s.pinned)
    network = PolicyCodec(space)  # the default: one spread for the whole network
    assert (free, network.spread, network.dimension) == (20, "network", 52) and network.dimension / free <= 3
    assert PolicyCodec(space, spread="none").dimension == 51
    assert PolicyCodec(space, spread="group").dimension == 63
    params = {k: n - 1 for k, n in network.ranges.items()}  # widest spread, top widths: groups differ
    policy = network.decode(params)
    assert len({b for _, lp in policy.layers for b in lp.weight_bits if b}) > 1
    assert network.decode(network.encode_nearest(policy)) == policy
    groups = [m for m in space.coupled().values() if any(len(space.layer(x).sparsity_levels) > 1 for x in m)]
    assert sum(1 for k in PolicyCodec(space).names if k.endswith("/sp")) == len(groups)


def test_the_sampler_is_told_the_proposed_policys_constraints_and_the_repair() -> None:
    objective = make_objective(budget="size<=0.1x", repair=True)
    searcher = TPESearcher(objective, storage=":memory:", warm_start=False, n_startup_trials=4)
    result = searcher.run(10)
    repaired = [r for r in result.records if r.repaired]
    assert repaired, "random proposals overshoot a tight budget and get repaired"
    trials = {t.number: t for t in searcher.study.trials}
    for r in result.records:
        t = trials[r.number]
        assert r.feasible
        proposed_ok = objective.feasible(r.proposed)
        assert (max(t.constraints.values()) <= 1e-9) == proposed_ok
        assert t.user_attrs.get("repaired", False) == r.repaired
    assert any(max(trials[r.number].constraints.values()) > 0 for r in repaired)


class StagedEvaluator:
    """The synthetic accuracy at fidelity 2; at fidelity 1 the same plus a deterministic error."""

    fidelity = 2

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[int] = []

    def evaluate(self, policy, fidelity=None):
        from dataclasses import replace

        level = fidelity or self.fidelity
        self.calls.append(level)
        m = self.inner.evaluate(policy)
        noise = (int(policy.key()[:6], 16) % 100) / 2000 if level == 1 else 0.0
        return replace(m, accuracy=m.accuracy + noise, fidelity=level)

    def baseline(self):
        return self.inner.baseline()


def test_multi_fidelity_promotes_a_share_and_counts_every_stage() -> None:
    from agents.optuna_search import STAGES_ATTR

    objective = make_objective()
    objective.evaluator = StagedEvaluator(objective.evaluator)
    searcher = TPESearcher(objective, storage=":memory:", stage_fidelity=1, n_startup_trials=4)
    result = searcher.run(16)
    states = [t.state for t in searcher.study.trials]
    pruned = states.count(TrialState.PRUNED)
    promoted = states.count(TrialState.COMPLETE)
    assert pruned > 0 and promoted > 0 and pruned + promoted == 16 == result.n_evaluations
    assert objective.evaluations_by_fidelity == {1: 16, 2: promoted}
    assert objective.evaluator.calls.count(2) == promoted
    assert result.best.metrics.fidelity == 2
    for t in searcher.study.trials:
        assert len(t.user_attrs[STAGES_ATTR]) == (2 if t.state == TrialState.COMPLETE else 1)
    with pytest.raises(ConfigError, match="stage_fidelity"):
        TPESearcher(make_objective(), storage=":memory:", stage_fidelity=1)  # the search itself is at 1


def test_the_stage_fidelity_option_is_checked_and_reaches_the_searcher(tmp_path) -> None:
    from automl.runs.config import SearchConfig
    from automl.runs.runner import make_searcher as runner_searcher

    with pytest.raises(ConfigError, match="searcher.stage_fidelity must be 0"):
        SearchConfig(evaluation={"fidelity": 2}, searcher={"stage_fidelity": 2})
    objective = make_objective()
    objective.evaluator = StagedEvaluator(objective.evaluator)
    searcher = runner_searcher("tpe", objective, SearchConfig(evaluation={"fidelity": 2}, searcher={"stage_fidelity": 1}), tmp_path)
    assert searcher.stage_fidelity == 1
