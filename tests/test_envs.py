"""The compression envs: spaces, decoding, exact masks, budget modes, reward, seeding."""

from __future__ import annotations

import itertools
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from automl.analysis import analyse
from automl.cost import CostModel
from automl.errors import BudgetError, ConfigError, InfeasibleBudget, PolicyError
from automl.problem.budget import Budget
from automl.problem.cache import CachedEvaluator
from automl.reference.models import PlainCNN, ResNet
from envs import DiscreteActions, EnvConfig, JointPruneQuantEnv, LayerQuantEnv, RewardConfig
from envs.choices import LayerChoices
from envs.testing import FakeEvaluator
from search_spaces import SearchSpace, SpaceConfig

BUDGET = "size<=0.15x"
# (env class, constructor kwargs, discrete forms offered)
KINDS = {
    "layer": (LayerQuantEnv, {}, ("discrete", "multidiscrete")),
    "two_level": (JointPruneQuantEnv, {"hierarchy": "two_level"}, ("multidiscrete",)),
    "per_layer": (JointPruneQuantEnv, {"hierarchy": "per_layer"}, ("multidiscrete",)),
    "uniform": (JointPruneQuantEnv, {"hierarchy": "per_layer", "channels": "uniform"}, ("multidiscrete",)),
}
FORMS = [(kind, form) for kind, (_, _, forms) in KINDS.items() for form in ("box", *forms)]


class Problem:
    """An analysed tiny network with its space and cost model (built once per module)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.analysis = analyse(model.eval(), torch.zeros(1, 1, 28, 28))
        self.space = SearchSpace.build(self.analysis)
        self.cost_model = CostModel(self.analysis, self.space)

    def env(self, kind: str = "two_level", form: str = "box", budget: str | Budget | None = BUDGET, **kwargs):
        cls, extra, _ = KINDS[kind]
        if isinstance(budget, str):
            budget = Budget.parse(budget)
        evaluator = kwargs.pop("evaluator", None) or FakeEvaluator()
        env = cls(self.analysis, self.space, self.cost_model, budget, evaluator, **extra, **kwargs)
        return env if form == "box" else DiscreteActions(env, form)


@pytest.fixture(scope="module")
def resnet() -> Problem:
    torch.manual_seed(0)
    return Problem(ResNet(8, width=4))


@pytest.fixture(scope="module")
def cnn() -> Problem:
    torch.manual_seed(0)
    return Problem(PlainCNN(width=4))


def rollout(env: gym.Env, rng: np.random.Generator, seed: int | None = None) -> tuple[list, dict]:
    """One episode of random actions (masked ones for a discrete wrapper); steps' infos and the last."""
    env.reset(seed=seed)
    infos = []
    while True:
        action = env.sample_allowed(rng) if isinstance(env, DiscreteActions) else env.action_space.sample()
        _, reward, terminated, truncated, info = env.step(action)
        infos.append(info)
        assert not truncated
        if terminated:
            info["reward"] = reward
            return infos, info


def dearest_action(env: gym.Env) -> np.ndarray:
    """The Box action asking for the most expensive option of every component of this step."""
    base = env.unwrapped
    d = base.current_decision
    options = [0 if comp.kind == "sparsity" else comp.n - 1 for comp in d.components]
    return base.box_from_options(options, d, base.action_dim)


# decoding ------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_vectorised_decoding_equals_space_decode(data, cnn):
    for s in cnn.space.layers:
        choices = LayerChoices(s, s.weight_bits, s.sparsity_levels)
        row = np.array(
            [data.draw(st.integers(0, len(choices.levels) - 1))]
            + [data.draw(st.integers(0, len(choices.weight_bits) - 1)) for _ in range(choices.n_groups)]
            + [data.draw(st.integers(0, len(choices.act_bits) - 1))]
        )
        valid = bool(choices.valid(row)[0])
        try:
            lp = choices.layer_policy(row, cnn.space)
        except PolicyError:
            assert not valid
            continue
        assert valid
        assert tuple(choices.channel_bits(row)[0]) == lp.weight_bits
        assert choices.act(row)[0] == lp.act_bits


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_completion_prunes_as_much_as_any_valid_completion(data, cnn):
    """The cheapest valid completion: no valid row agreeing with the fixed part prunes more."""
    s = data.draw(st.sampled_from([s for s in cnn.space.layers if s.prunable]))
    c = LayerChoices(s, s.weight_bits, s.sparsity_levels)
    positions = data.draw(st.sets(st.integers(0, c.n_groups)))  # 0 = sparsity, 1.. = groups
    fixed = {
        p: data.draw(st.integers(0, len(c.levels) - 1)) if p == 0 else data.draw(st.sampled_from([0, c.nonzero]))
        for p in positions
    }
    best = -1
    for level in range(len(c.levels)):
        for zeros in itertools.product((0, c.nonzero), repeat=c.n_groups):
            row = np.array([level, *zeros, 0])
            if all(row[p] == v for p, v in fixed.items()) and c.valid(row)[0]:
                best = max(best, int((c.channel_bits(row) == 0).sum()))
    row = c.complete(fixed)
    assert (row is None) == (best < 0)
    if row is not None:
        assert all(row[p] == v for p, v in fixed.items()) and c.valid(row)[0]
        assert int((c.channel_bits(row) == 0).sum()) == best


def test_cheapest_completion_is_the_cost_models_cheapest_policy(resnet):
    env = resnet.env("two_level")
    env.reset(seed=0)
    assert env.policy() == resnet.cost_model.cheapest_policy()


# checkers ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,form", FORMS)
def test_gymnasium_and_sb3_checkers_pass(resnet, kind, form):
    env = resnet.env(kind, form)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*different from the unwrapped.*")
        gym_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True)


@pytest.mark.parametrize("env_id,kwargs", [("automl/LayerQuant-v0", {}), ("automl/JointPruneQuant-v0", {"hierarchy": "per_layer"})])
def test_registered_with_gymnasium(resnet, env_id, kwargs):
    assert env_id in gym.registry and envs.LayerQuantEnv is LayerQuantEnv
    env = gym.make(
        env_id, analysis=resnet.analysis, space=resnet.space, cost_model=resnet.cost_model,
        budget=Budget.parse(BUDGET), evaluator=FakeEvaluator(), **kwargs,
    )
    _, last = rollout(env, np.random.default_rng(0), seed=0)
    assert last["feasible"]


# masks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,form", [f for f in FORMS if f[1] != "box"])
def test_masks_are_exact_against_the_reference_pricing(resnet, kind, form):
    """An option is allowed iff decided layers + it + the cheapest completion meet the budget."""
    env = resnet.env(kind, form, budget="size<=0.12x")
    base = env.unwrapped
    rng = np.random.default_rng(1)
    env.reset(seed=0)
    terminated = False
    while not terminated:
        d = base.current_decision
        table, _ = base.mask_rows()
        mask = env.action_masks()
        flat = (
            [((k, o), int(table.index[k][o])) for k, comp in enumerate(d.components) for o in range(comp.n)]
            if form == "multidiscrete"
            else [(combo, int(table.product[combo])) for combo in np.ndindex(*table.product.shape)]
        )
        for where, row_id in flat:
            saved = base._rows[d.layer]
            if row_id < 0:
                allowed = False
            else:
                base._rows[d.layer] = table.rows[row_id]
                costs = resnet.cost_model.price(base.policy())
                allowed = bool(base.bound.feasible(costs))
            base._rows[d.layer] = saved
            if form == "multidiscrete":
                k, o = where
                assert mask[int(env.nvec[:k].sum()) + o] == allowed, (d, where)
            else:
                assert mask[np.ravel_multi_index(where, tuple(env.nvec))] == allowed, (d, where)
        _, _, terminated, _, info = env.step(env.sample_allowed(rng))
        if form == "discrete":
            assert "projection" not in info  # the joint mask is exact: no allowed action is moved
    assert info["feasible"]


@pytest.mark.parametrize("kind,form", FORMS)
def test_random_rollouts_with_masks_end_feasible(resnet, kind, form):
    env = resnet.env(kind, form, budget="size<=0.12x, bitops<=0.05x")
    rng = np.random.default_rng(0)
    for episode in range(8):
        _, last = rollout(env, rng, seed=episode)
        assert last["feasible"] and not last["violations"]
        assert resnet.space.validate(last["policy"]) is last["policy"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    constraints=st.lists(
        st.tuples(st.sampled_from(["size", "bitops", "macs", "peak_act"]), st.floats(0.0, 1.0)), min_size=1, max_size=3
    ),
    kind=st.sampled_from(sorted(KINDS)),
    discrete=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_masks_keep_hypothesis_budgets_feasible(resnet, constraints, kind, discrete, seed):
    """Limits anywhere between the env's cheapest policy (tight) and the float model (loose)."""
    probe = resnet.env(kind, budget=None)
    probe.reset(seed=0)
    floor = resnet.cost_model.price(probe.policy())  # the env's cheapest policy
    float_costs = resnet.cost_model.float_costs()
    texts = []
    for metric, u in constraints:
        low = floor.value(metric) / float_costs.value(metric) * (1 + 1e-6)
        texts.append(f"{metric}<={low + u * (1 - low):.9f}x")
    env = resnet.env(kind, KINDS[kind][2][-1] if discrete else "box", budget=Budget.parse(texts))
    _, last = rollout(env, np.random.default_rng(seed), seed=seed)
    assert last["feasible"], last["violations"]


def test_box_action_over_budget_is_projected_and_recorded(resnet):
    env = resnet.env("layer", budget="size<=0.12x")
    env.reset(seed=0)
    infos = []
    terminated = False
    while not terminated:
        _, _, terminated, _, info = env.step(np.ones(2, dtype=np.float32))  # 32-bit weights, 8-bit activations
        infos.append(info)
    projected = [i["projection"] for i in infos if "projection" in i]
    assert projected and all(p["reason"] == "budget" for p in projected)
    assert all(p["applied"]["weight_bits"] < p["requested"]["weight_bits"] for p in projected)
    assert info["projections"] == len(projected) and info["feasible"]


def test_layer_env_refuses_a_budget_only_pruning_can_meet(resnet):
    with pytest.raises(InfeasibleBudget, match="LayerQuantEnv cannot meet the budget.*JointPruneQuantEnv"):
        resnet.env("layer", budget="size<=0.06x")
    resnet.env("two_level", budget="size<=0.06x")  # pruning reaches it


# repair and Lagrangian -----------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_repair_mode_ends_feasible_and_says_what_changed(resnet, kind):
    env = resnet.env(kind, budget="size<=0.12x", config=EnvConfig(budget_mode="repair"))
    env.reset(seed=0)
    terminated = False
    while not terminated:
        _, _, terminated, _, info = env.step(dearest_action(env))
    assert info["feasible"] and info["repaired"]
    assert info["repair"]["changed"] and info["repair"]["changes"] and info["repair"]["steps"]
    assert info["requested_policy"] != info["policy"]
    assert resnet.cost_model.price(info["requested_policy"]).size_bytes > info["costs"].size_bytes


def test_lagrangian_multiplier_adapts_and_a_seed_restores_it(resnet):
    cfg = EnvConfig(budget_mode="lagrangian")
    env = resnet.env("per_layer", budget="size<=0.12x", config=cfg)
    rewards, multipliers = [], []
    for episode in range(3):
        env.reset(seed=0 if episode == 0 else None)
        terminated = False
        while not terminated:
            _, reward, terminated, _, info = env.step(dearest_action(env))
        assert not info["feasible"] and info["reward_terms"]["penalty"] > 0
        rewards.append(reward)
        multipliers.append(env._multipliers[0])
    assert rewards[0] > rewards[1] > rewards[2] and multipliers[0] < multipliers[1] < multipliers[2]
    env.reset(seed=0)
    assert env._multipliers[0] == cfg.lagrangian.initial


# reward, info, cache, seeding ----------------------------------------------------------
def test_reward_is_accuracy_relative_to_float_with_an_optional_cost_term(resnet):
    plain = resnet.env("two_level")
    shaped = resnet.env("two_level", config=EnvConfig(reward=RewardConfig(scale=2.0, cost_weight=0.5, cost_metric="size")))
    for env in (plain, shaped):
        _, last = rollout(env, np.random.default_rng(3), seed=3)
        env._last = last
    a, b = plain._last, shaped._last
    assert a["reward"] == pytest.approx(a["metrics"].accuracy / 0.9)
    ratio = b["costs"].size_bytes / resnet.cost_model.float_costs().size_bytes
    assert b["reward"] == pytest.approx(2.0 * b["metrics"].accuracy / 0.9 - 0.5 * ratio)


def test_rewards_are_zero_until_the_last_step_and_info_carries_the_result(resnet):
    env = resnet.env("per_layer")
    env.reset(seed=0)
    terminated, rewards = False, []
    while not terminated:
        _, reward, terminated, _, info = env.step(env.action_space.sample())
        rewards.append(reward)
    assert all(r == 0.0 for r in rewards[:-1]) and rewards[-1] > 0
    for key in ("policy", "costs", "feasible", "violations", "repair", "metrics", "reward_terms", "projections"):
        assert key in info
    assert info["costs"] == resnet.cost_model.price(info["policy"])


def test_repeated_episode_hits_the_policy_cache(resnet):
    fake = FakeEvaluator()
    env = resnet.env("two_level", evaluator=fake)
    actions = [env.action_space.sample() for _ in env.decisions]
    results = []
    for _ in range(2):
        env.reset(seed=0)
        for a in actions:
            _, reward, terminated, _, info = env.step(a)
        results.append((reward, info["metrics"]))
    assert results[0] == results[1]
    assert fake.n_evaluations == 1
    assert isinstance(env.evaluator, CachedEvaluator) and env.evaluator.stats.hits == 1


@pytest.mark.parametrize("kind,form", [("two_level", "multidiscrete"), ("per_layer", "box"), ("layer", "discrete")])
def test_same_seed_and_actions_give_the_same_episode(resnet, kind, form):
    episodes = []
    for _ in range(2):
        env = resnet.env(kind, form)
        env.action_space.seed(5)
        obs, _ = env.reset(seed=11)
        trace = [obs]
        terminated = False
        while not terminated:
            obs, reward, terminated, _, info = env.step(env.action_space.sample())
            trace += [obs, reward]
        episodes.append((trace, info["policy"]))
    (a, pa), (b, pb) = episodes
    assert pa == pb and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# observations and errors ---------------------------------------------------------------
def test_observation_carries_phase_budget_and_sensitivity(cnn):
    sens = np.linspace(0.0, 1.0, len(cnn.space.layers))
    env = cnn.env("two_level", budget="size<=0.2x", sensitivity=sens)
    obs, _ = env.reset(seed=0)
    base = env
    phases = []
    terminated = False
    while not terminated:
        d = base.current_decision
        phases.append(d.phase)
        assert obs[len(envs.features.LAYER_FEATURES) + 1] == d.phase
        assert obs[len(envs.features.LAYER_FEATURES) - 1] == pytest.approx(sens[d.layer])
        obs, _, terminated, _, _ = env.step(env.action_space.sample())
        spent, remaining = obs[-2], obs[-1]
        assert 0 <= spent <= 1 and -1 <= remaining <= 1
    assert set(phases) == {0, 1}
    assert env.observation_space.contains(obs)


def test_bad_inputs_are_refused_with_a_fix(resnet):
    with pytest.raises(ConfigError, match="budget_mode must be one of"):
        EnvConfig(budget_mode="clip")
    with pytest.raises(ConfigError, match="one value per layer"):
        resnet.env("layer", sensitivity=[1.0, 2.0])
    with pytest.raises(ConfigError, match="form='multidiscrete'"):
        resnet.env("per_layer", form="discrete")
    with pytest.raises(BudgetError, match="unknown cost metric 'energy'"):
        resnet.env("layer", config=EnvConfig(reward=RewardConfig(cost_weight=1.0, cost_metric="energy")))
    with pytest.raises(ConfigError, match="hierarchy must be one of"):
        JointPruneQuantEnv(resnet.analysis, resnet.space, resnet.cost_model, None, FakeEvaluator(), hierarchy="flat")
    env = resnet.env("layer")
    with pytest.raises(gym.error.ResetNeeded):
        env.step(env.action_space.sample())


def test_unconstrained_search_runs_without_a_budget(resnet):
    env = resnet.env("per_layer", budget=None)
    _, last = rollout(env, np.random.default_rng(0), seed=0)
    assert last["feasible"] and last["violations"] == {}
    assert env.observation_space.shape == env.reset()[0].shape


def test_zero_bit_groups_that_prune_too_much_are_raised_and_recorded(resnet):
    env = resnet.env("two_level", budget=None)
    env.reset(seed=0)
    d = env.current_decision
    env.step(env.box_from_options([len(env.choices[d.layer].levels) - 1], d, env.action_dim))  # highest sparsity
    d = env.current_decision
    _, _, _, _, info = env.step(env.box_from_options([0] * len(d.components), d, env.action_dim))  # every group 0 bits
    assert info["projection"]["reason"] == "space"
    applied = info["projection"]["applied"]
    assert applied["group0_bits"] > 0  # the most important group is raised first
    assert env._rows[d.layer] is not None and env.choices[d.layer].valid(env._rows[d.layer])[0]


def test_env_config_round_trips():
    cfg = EnvConfig(budget_mode="lagrangian", reward=RewardConfig(scale=2.0, cost_weight=0.1), cache=False)
    assert EnvConfig.from_dict(cfg.to_dict()) == cfg


def test_per_channel_bit_widths_work_too():
    """``n_groups=None``: every channel its own group (many action dimensions)."""
    torch.manual_seed(0)
    problem = Problem(ResNet(8, width=4))
    problem.space = SearchSpace.build(problem.analysis, SpaceConfig(n_groups=None))
    problem.cost_model = CostModel(problem.analysis, problem.space)
    env = problem.env("per_layer", "multidiscrete", budget="size<=0.1x")
    assert env.action_space.shape == (2 + max(s.out_channels for s in problem.space.layers),)
    rng = np.random.default_rng(0)
    for seed in range(3):
        _, last = rollout(env, rng, seed=seed)
        assert last["feasible"]


@pytest.mark.parametrize("kind", ["two_level", "per_layer", "uniform"])
def test_a_coupled_group_takes_one_sparsity_decision(resnet, kind):
    """A residual block's last convolution and its shortcut prune the same channels: only the
    group's first member has a sparsity choice, and every final policy prunes them alike."""
    env = resnet.env(kind, "multidiscrete", budget="size<=0.12x")
    base = env.unwrapped
    groups = [m for m in resnet.space.coupled().values()
              if sum(len(resnet.space.layer(n).sparsity_levels) > 1 for n in m) > 1]
    assert groups, "the tiny ResNet-8 has residual blocks with a shortcut convolution"
    index = {n: i for i, n in enumerate(resnet.space.names)}
    for members in groups:
        leader, *followers = members
        assert len(base.choices[index[leader]].levels) > 1
        assert all(len(base.choices[index[f]].levels) == 1 for f in followers)
    rng = np.random.default_rng(0)
    pruned_leaders = 0
    for episode in range(6):
        _, last = rollout(env, rng, seed=episode)
        layers = last["policy"].as_dict()
        for leader, *followers in groups:
            zeros = np.asarray(layers[leader].weight_bits) == 0
            pruned_leaders += bool(zeros.any())
            for f in followers:
                assert np.array_equal(np.asarray(layers[f].weight_bits) == 0, zeros)
    assert pruned_leaders, "random masked episodes prune some coupled group"


def test_a_pruned_group_is_replayed_at_its_layers_width(resnet):
    """An agent stepping back from a pruned policy gets the channels back at the layer's own
    precision: the replayed row gives fully pruned groups the layer's width, not the widest."""
    env = resnet.env("per_layer", budget=None)
    name = next(s.name for s in resnet.space.layers if not s.pinned and len(s.sparsity_levels) > 2)
    c = env.choices[resnet.space.names.index(name)]
    lp = resnet.space.decode(name, c.levels[-1], [4] * c.n_groups, 8)
    assert 0 in lp.weight_bits
    row = c.row_of(lp)
    assert list(c.weight_bits[row[1 : 1 + c.n_groups]]) == [4] * c.n_groups
    assert c.levels[row[0]] == c.levels[-1]
