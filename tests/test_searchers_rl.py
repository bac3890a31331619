"""RL searchers: checkpoints resume a search, ask() shows the agent's policy, env budget modes."""

from __future__ import annotations

import pytest

from agents.rl import DDPGSearcher, MaskablePPOSearcher, PPOSearcher
from tests.agents_support import make_objective


@pytest.mark.parametrize("cls", [PPOSearcher, MaskablePPOSearcher, DDPGSearcher])
def test_a_checkpointed_search_resumes_where_it_stopped(tmp_path, cls) -> None:
    options = {"checkpoint_dir": tmp_path, "checkpoint_every": 2, "episodes_per_update": 2, "warmup_episodes": 2}
    first = cls(make_objective(), seed=0, **options).run(4)
    assert (tmp_path / "model.zip").is_file() and (tmp_path / "result.json").is_file()
    objective = make_objective()
    resumed = cls(objective, seed=0, **options)
    assert resumed.records == list(first.records)
    result = resumed.run(7)
    assert objective.n_calls == 3
    assert result.n_evaluations == 7
    assert [r.number for r in result.records] == list(range(7))
    assert result.records[:4] == first.records


def test_ask_returns_the_agents_policy_without_evaluating() -> None:
    objective = make_objective()
    searcher = MaskablePPOSearcher(objective, seed=0, episodes_per_update=2)
    policy = searcher.ask()
    objective.space.validate(policy)
    assert objective.feasible(policy), "mask mode keeps every episode within the budget"
    assert objective.n_calls == 0


def test_lagrangian_episodes_are_recorded_as_the_env_proposed_them() -> None:
    objective = make_objective(budget="size<=0.1x")
    result = PPOSearcher(objective, seed=0, budget_mode="lagrangian", episodes_per_update=2).run(6)
    assert all(not r.repaired and r.policy == r.proposed for r in result.records)
    assert all(r.feasible == objective.bound.feasible(r.costs) for r in result.records)
    assert result.best is None or result.best.feasible


def test_env_repair_is_recorded_with_the_requested_policy() -> None:
    objective = make_objective(budget="size<=0.1x")
    result = PPOSearcher(objective, seed=0, budget_mode="repair", episodes_per_update=2, reference="none",
                         warm_start=False).run(6)
    # In-episode "space" projections (too many zero-bit groups) are recorded too, on the executed policy.
    repaired = [r for r in result.records if r.repaired and not any("projection" in s for s in r.repair.steps)]
    assert repaired, "random early episodes overshoot a tight budget"
    assert all(r.feasible and r.proposed != r.policy for r in repaired)


def test_the_zero_action_is_the_reference_policy() -> None:
    import numpy as np

    searcher = PPOSearcher(make_objective(), seed=0)
    env = searcher._proposal()
    env.reset()
    while True:
        _, _, terminated, _, info = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
        if terminated:
            break
    assert info["policy"] == searcher.reference == searcher.warm_policies[0]


def test_off_policy_agents_store_the_executed_action_and_learn_from_told_records() -> None:
    import numpy as np

    objective = make_objective()
    searcher = DDPGSearcher(objective, seed=0)
    searcher.run(len(searcher.warm_policies) + 1)
    buffer = searcher.model.replay_buffer
    n = searcher.episode_length
    # The first episode replayed the integer program's policy, which is the reference: its
    # executed actions are zero, whatever random actions the agent sampled in its warm-up.
    assert np.allclose(buffer.actions[:n], 0.0)
    assert buffer.rewards[n - 1] > 0
    before = buffer.size()
    other = make_objective()
    record = other(other.space.uniform(4), number=99)
    searcher.tell(record.proposed, record)
    assert buffer.size() == before + n
    assert buffer.rewards[before + n - 1, 0] == pytest.approx(searcher.episode_reward(record))


def test_projections_are_recorded_like_repairs() -> None:
    objective = make_objective(budget="size<=0.1x")
    result = PPOSearcher(objective, seed=0, reference="none", warm_start=False, episodes_per_update=2).run(6)
    projected = [r for r in result.records if r.repaired]
    assert projected, "absolute random actions under a tight budget get projected"
    assert all(r.feasible and r.repair.steps and "projection" in r.repair.steps[0] for r in projected)


@pytest.mark.parametrize("cls", [PPOSearcher, MaskablePPOSearcher])
def test_two_level_uses_two_controllers_that_do_not_share_weights(cls) -> None:
    import torch

    from agents.controllers import TwoControllerExtractor

    searcher = cls(make_objective(), seed=0, hierarchy="two_level", episodes_per_update=2)
    model = searcher._ensure_model(4)
    extractor = model.policy.mlp_extractor
    assert isinstance(extractor, TwoControllerExtractor)
    obs = torch.zeros(2, model.observation_space.shape[0])
    obs[1, searcher.env.unwrapped.phase_index] = 1.0  # row 0: a layer step, row 1: a channel step
    before = extractor.forward_actor(obs).detach().clone()
    with torch.no_grad():
        for p in extractor.layer_net.parameters():
            p.add_(1.0)
    after = extractor.forward_actor(obs).detach()
    assert not torch.allclose(before[0], after[0]), "the layer controller acts on layer steps"
    assert torch.allclose(before[1], after[1]), "and not on channel steps"
    result = searcher.run(4)
    assert result.n_evaluations == 4 and result.best.feasible
