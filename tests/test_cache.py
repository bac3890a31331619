"""The policy-result cache: no policy evaluated twice, in memory or across processes."""

from __future__ import annotations

import multiprocessing as mp
import pickle

import numpy as np
import pytest
import torch

from automl.analysis import analyse
from automl.errors import ConfigError
from automl.problem.cache import CachedEvaluator, CacheStats
from automl.reference.models import ResNet
from envs.testing import FakeEvaluator
from search_spaces import SearchSpace


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    torch.manual_seed(0)
    return SearchSpace.build(analyse(ResNet(8, width=4).eval(), torch.zeros(1, 1, 28, 28)))


def test_identical_policy_is_evaluated_once(space):
    fake = FakeEvaluator()
    cached = CachedEvaluator(fake)
    policy = space.sample(np.random.default_rng(0))
    first = cached.evaluate(policy)
    again = cached.evaluate(type(policy).from_json(policy.to_json()))  # equal, not the same object
    assert first == again and fake.n_evaluations == 1
    assert cached.stats == CacheStats(hits=1, misses=1, disk_hits=0) and cached.stats.hit_rate == 0.5
    assert policy in cached and len(cached) == 1


def test_fidelity_is_part_of_the_key(space):
    fake = FakeEvaluator()
    cached = CachedEvaluator(fake)
    policy = space.uniform(4)
    low, high = cached.evaluate(policy), cached.evaluate(policy, fidelity=2)
    assert (low.fidelity, high.fidelity) == (1, 2) and fake.n_evaluations == 2
    assert cached.evaluate(policy, fidelity=1) is low and cached.stats.hits == 1


def test_results_persist_in_sqlite_for_later_runs(space, tmp_path):
    path = tmp_path / "cache" / "evals.sqlite"
    policies = [space.sample(np.random.default_rng(i)) for i in range(5)]
    first = CachedEvaluator(FakeEvaluator(), path)
    results = [first.evaluate(p) for p in policies]
    first.close()
    fake = FakeEvaluator()
    second = CachedEvaluator(fake, path)
    assert [second.evaluate(p) for p in policies] == results
    assert fake.n_evaluations == 0 and second.stats.disk_hits == 5
    other = CachedEvaluator(FakeEvaluator(), path, namespace="another-model")
    other.evaluate(policies[0])
    assert other.stats.misses == 1  # a namespace keeps another model's results apart


def _evaluate_in_child(cached: CachedEvaluator, policy_json: str, queue: mp.Queue) -> None:
    from search_spaces import Policy

    cached.evaluate(Policy.from_json(policy_json))
    queue.put((cached.stats.to_dict(), cached.evaluator.n_evaluations))


def test_cache_is_shared_across_processes(space, tmp_path):
    path = tmp_path / "evals.sqlite"
    policy = space.uniform(3)
    parent = CachedEvaluator(FakeEvaluator(), path)
    parent.evaluate(policy)
    clone = pickle.loads(pickle.dumps(parent))  # what SubprocVecEnv does: no connection crosses
    assert clone._conn is None
    ctx = mp.get_context("fork")  # the child inherits an open connection and must not reuse it
    queue = ctx.Queue()
    child = ctx.Process(target=_evaluate_in_child, args=(CachedEvaluator(FakeEvaluator(), path), policy.to_json(), queue))
    child.start()
    stats, evaluations = queue.get(timeout=60)
    child.join(timeout=60)
    assert evaluations == 0 and stats["disk_hits"] == 1


def test_wrapped_evaluator_attributes_pass_through():
    fake = FakeEvaluator(float_accuracy=0.8)
    cached = CachedEvaluator(fake)
    assert cached.baseline().accuracy == 0.8 and cached.float_accuracy == 0.8
    with pytest.raises(AttributeError):
        _ = cached.no_such_attribute


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="evaluate\\(policy\\)"):
        CachedEvaluator(object())
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot open the evaluation cache"):
        CachedEvaluator(FakeEvaluator(), blocker / "evals.sqlite")
