"""The envs under Stable-Baselines3: every algorithm trains a few hundred steps; vectorised envs run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3 import DDPG, PPO, SAC, TD3
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv

from automl.problem.budget import Budget
from automl.reference.models import ResNet
from envs import DiscreteActions, EnvConfig

from .test_envs import Problem

STEPS = 256


@pytest.fixture(scope="module")
def problem() -> Problem:
    torch.manual_seed(0)
    return Problem(ResNet(8, width=4))


class EpisodeEnds(BaseCallback):
    """Collects the final info of every finished episode."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[dict] = []

    def _on_step(self) -> bool:
        for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True):
            if done:
                self.ends.append(info)
        return True


SMALL = {
    PPO: {"n_steps": 64, "batch_size": 32, "n_epochs": 2},
    SAC: {"learning_starts": 64, "batch_size": 32, "buffer_size": 1000},
    TD3: {"learning_starts": 64, "batch_size": 32, "buffer_size": 1000},
    DDPG: {"learning_starts": 64, "batch_size": 32, "buffer_size": 1000},
}


@pytest.mark.parametrize("algo", [PPO, SAC, TD3, DDPG], ids=lambda a: a.__name__)
@pytest.mark.parametrize("kind", ["layer", "two_level", "per_layer"])
def test_box_algorithms_train_and_every_episode_meets_the_budget(problem, algo, kind):
    env = problem.env(kind)
    model = algo("MlpPolicy", env, seed=0, device="cpu", policy_kwargs={"net_arch": [32, 32]}, **SMALL[algo])
    ends = EpisodeEnds()
    model.learn(STEPS, callback=ends)
    assert ends.ends and all(info["feasible"] for info in ends.ends)


@pytest.mark.parametrize("kind,form", [("layer", "discrete"), ("two_level", "multidiscrete"), ("per_layer", "multidiscrete")])
def test_maskable_ppo_trains_on_masked_actions(problem, kind, form):
    env = problem.env(kind, form, budget="size<=0.12x")
    model = MaskablePPO("MlpPolicy", env, seed=0, n_steps=64, batch_size=32, n_epochs=2, device="cpu")
    ends = EpisodeEnds()
    model.learn(STEPS, callback=ends)
    assert ends.ends and all(info["feasible"] for info in ends.ends)
    if form == "discrete":  # an exact joint mask: the agent is never overruled
        assert all(info["projections"] == 0 for info in ends.ends)


@pytest.mark.parametrize("mode", ["repair", "lagrangian"])
def test_ppo_trains_in_the_other_budget_modes(problem, mode):
    env = problem.env("two_level", "multidiscrete", config=EnvConfig(budget_mode=mode))
    model = PPO("MlpPolicy", env, seed=0, n_steps=64, batch_size=32, n_epochs=2, device="cpu")
    ends = EpisodeEnds()
    model.learn(STEPS, callback=ends)
    assert ends.ends
    if mode == "repair":
        assert all(info["feasible"] for info in ends.ends)


def test_envs_run_in_subprocesses(problem):
    budget = Budget.parse("size<=0.12x")

    def make():
        return DiscreteActions(problem.env("two_level", budget=budget), "multidiscrete")

    vec = make_vec_env(make, n_envs=2, vec_env_cls=SubprocVecEnv, vec_env_kwargs={"start_method": "fork"})
    try:
        model = MaskablePPO("MlpPolicy", vec, seed=0, n_steps=32, batch_size=32, n_epochs=1, device="cpu")
        ends = EpisodeEnds()
        model.learn(64, callback=ends)
        assert ends.ends and all(info["feasible"] for info in ends.ends)
        masks = np.stack(vec.env_method("action_masks"))
        assert masks.shape == (2, int(sum(make().nvec)))
    finally:
        vec.close()
