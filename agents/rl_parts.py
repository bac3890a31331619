"""Pieces of the RL adapter: the evaluator the env sees, exploration noise, the SB3 callback."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise

from automl.metrics import Metrics
from search_spaces.policy import Policy

if TYPE_CHECKING:
    from agents.rl import RLSearcher


class ObjectiveEvaluator:
    """What the env evaluates through: every episode's policy goes to the searcher's objective.

    The env keeps its own budget handling (masks, repair or Lagrangian penalty), so the
    objective is called without its own repair and records what the env really proposed.
    """

    def __init__(self, searcher: RLSearcher) -> None:
        self.searcher = searcher

    def evaluate(self, policy: Policy, fidelity: int | None = None) -> Metrics:
        return self.searcher.evaluate_episode(policy).metrics

    def baseline(self) -> Metrics:
        inner = getattr(self.searcher.objective.evaluator, "baseline", None)
        return inner() if callable(inner) else Metrics(accuracy=1.0, loss=0.0, kl=0.0, fidelity=0)


class ProposalEvaluator:
    """Stands in for evaluation when :meth:`RLSearcher.ask` only wants the agent's policy."""

    def evaluate(self, policy: Policy, fidelity: int | None = None) -> Metrics:
        return Metrics(accuracy=0.0, loss=0.0, kl=0.0, fidelity=0)

    def baseline(self) -> Metrics:
        return Metrics(accuracy=1.0, loss=0.0, kl=0.0, fidelity=0)


class KLShapedReward(gym.Wrapper):
    """Subtracts ``kl_weight * KL`` of the episode's evaluation from its final reward.

    Post-training quantization has a cliff: most early policies score chance accuracy, so
    the env's accuracy reward is flat where the agent starts. The KL divergence from the
    float model's outputs still orders those policies (less broken first); a small weight
    leaves working policies ordered by accuracy. The same slope as the Optuna searchers'.
    """

    def __init__(self, env: gym.Env, kl_weight: float) -> None:
        super().__init__(env)
        self.kl_weight = float(kl_weight)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        metrics = info.get("metrics") if terminated else None
        if metrics is not None and math.isfinite(metrics.kl):
            reward = float(reward) - self.kl_weight * metrics.kl
        return obs, reward, terminated, truncated, info


class DecayingNormalNoise(ActionNoise):
    """Gaussian exploration noise whose scale decays after every episode (HAQ: 0.5, x0.99).

    Args:
        dim: action dimensions.
        sigma: initial standard deviation (actions live in [-1, 1]).
        decay: factor applied at each episode end.
        min_sigma: floor of the scale.
    """

    def __init__(self, dim: int, sigma: float = 0.5, decay: float = 0.97, min_sigma: float = 0.05) -> None:
        super().__init__()
        self.dim, self.sigma, self.decay, self.min_sigma = dim, float(sigma), float(decay), float(min_sigma)
        self.episodes = 0

    @property
    def current(self) -> float:
        return max(self.min_sigma, self.sigma * self.decay**self.episodes)

    def __call__(self) -> np.ndarray:
        return np.random.normal(0.0, self.current, self.dim).astype(np.float32)

    def reset(self) -> None:
        self.episodes += 1

    def __repr__(self) -> str:
        return f"DecayingNormalNoise(sigma={self.current:.3f})"


class EvaluationBudget(BaseCallback):
    """Stops ``model.learn`` once the search holds its evaluations or a search callback says stop.

    After every finished episode it hands the env's final ``info`` to the searcher, which
    completes the episode's record and calls the search callbacks.
    """

    def __init__(self, searcher: RLSearcher, n_evaluations: int) -> None:
        super().__init__()
        self.searcher = searcher
        self.n_evaluations = n_evaluations
        self.stopped = False

    def _on_step(self) -> bool:
        dones: Any = self.locals.get("dones", ())
        infos: Any = self.locals.get("infos", ())
        for done, info in zip(dones, infos, strict=True):
            if done and "metrics" in info and not self.searcher.episode_done(info):
                self.stopped = True
        return not self.stopped and self.searcher.n_distinct < self.n_evaluations


def episodes_to_steps(episodes: float, episode_length: int) -> int:
    return int(math.ceil(episodes)) * episode_length
