"""Pieces of the RL adapter: the evaluator the env sees, exploration noise, the SB3 callback,
behaviour cloning and the replay of known episodes."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise

from automl.problem.metrics import Metrics
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

    At every step it first makes the agent learn from the *executed* action: the env's
    ``info["executed_action"]`` (after masks, projection, scripted warm-start episodes)
    replaces, in SB3's rollout locals, the action that goes to the replay buffer
    (``buffer_actions``, off-policy) or to the rollout buffer (``actions``, on-policy, with
    its log-probability recomputed under the current policy). SB3 stores both after this
    callback returns, so the in-place rewrite is what they keep. After every finished
    episode it hands the env's final ``info`` to the searcher (records, search callbacks),
    and at rollout boundaries it tells the searcher to checkpoint.
    """

    def __init__(self, searcher: RLSearcher, n_evaluations: int) -> None:
        super().__init__()
        self.searcher = searcher
        self.n_evaluations = n_evaluations
        self.stopped = False
        self.rewritten = 0  # steps whose stored action differs from the sampled one

    def _on_step(self) -> bool:
        self._use_executed_actions()
        dones: Any = self.locals.get("dones", ())
        infos: Any = self.locals.get("infos", ())
        for done, info in zip(dones, infos, strict=True):
            if done and "metrics" in info and not self.searcher.episode_done(info):
                self.stopped = True
        return not self.stopped and self.searcher.n_distinct < self.n_evaluations

    def _use_executed_actions(self) -> None:
        loc = self.locals
        executed = [info.get("executed_action") for info in loc.get("infos", ())]
        if not executed or any(e is None for e in executed):
            return
        key = "buffer_actions" if "buffer_actions" in loc else "actions"
        stored = loc.get(key)
        if not isinstance(stored, np.ndarray):
            return
        new = np.asarray(executed).reshape(stored.shape).astype(stored.dtype)
        if np.array_equal(new, stored):
            return
        self.rewritten += 1
        stored[...] = new
        if key == "actions" and isinstance(loc.get("log_probs"), th.Tensor):
            masks = loc.get("action_masks")
            with th.no_grad():
                _, log_prob, _ = self.model.policy.evaluate_actions(  # type: ignore[operator]
                    loc["obs_tensor"], th.as_tensor(new, device=self.model.device),
                    **({"action_masks": masks} if masks is not None else {}),
                )
            loc["log_probs"].copy_(log_prob.reshape(loc["log_probs"].shape))

    def _on_rollout_start(self) -> None:
        self.searcher.rollout_start()

    def _on_rollout_end(self) -> None:
        self.searcher.rollout_end()


def replay_episode(env: gym.Env, policy: Policy) -> list[tuple[Any, Any, Any, bool, dict[str, Any]]]:
    """``(obs, executed action, next obs, done, info)`` of a scripted episode of ``policy``
    on ``env`` (built with :class:`ProposalEvaluator`, so nothing is evaluated)."""
    env.unwrapped.queue_policies([policy])  # type: ignore[attr-defined]
    obs, _ = env.reset()
    out = []
    while True:
        # The script overrides the action; zeros keep the unread dimensions of the recorded
        # executed action deterministic.
        nxt, _, terminated, truncated, info = env.step(np.zeros(env.action_space.shape, dtype=env.action_space.dtype))
        out.append((obs, info["executed_action"], nxt, bool(terminated or truncated), info))
        obs = nxt
        if terminated or truncated:
            return out


def add_to_replay_buffer(model: BaseAlgorithm, steps: list[tuple[Any, Any, Any, bool, dict]], reward: float) -> None:
    """Store a replayed episode in an off-policy agent's buffer with ``reward`` on its last step."""
    buffer = model.replay_buffer  # type: ignore[attr-defined]
    for i, (obs, action, nxt, done, info) in enumerate(steps):
        r = reward if i == len(steps) - 1 else 0.0
        buffer.add(np.asarray(obs)[None], np.asarray(nxt)[None], np.asarray(action, dtype=np.float32)[None],
                   np.array([r], dtype=np.float32), np.array([done]), [info])


def behaviour_clone(model: BaseAlgorithm, steps: list[tuple[Any, Any, Any, bool, dict]], n_steps: int,
                    target: float = 0.5, lr: float = 1e-3) -> int:
    """A few gradient steps raising the on-policy agent's log-probability of ``steps``' actions.

    Stops once the demonstrated options have, on average per action component, probability
    ``target`` (categorical actions), so exploration is not extinguished; a Gaussian
    policy's standard deviation is restored afterwards for the same reason. Returns the
    gradient steps taken.
    """
    policy = model.policy
    obs = th.as_tensor(np.stack([s[0] for s in steps]), dtype=th.float32, device=model.device)
    acts = th.as_tensor(np.stack([np.asarray(s[1]) for s in steps]), device=model.device)
    width = acts.shape[-1] if acts.ndim > 1 else 1
    log_std = getattr(policy, "log_std", None)
    keep = log_std.detach().clone() if isinstance(log_std, th.Tensor) else None
    optimiser = th.optim.Adam(policy.parameters(), lr=lr)
    taken = 0
    for taken in range(1, n_steps + 1):  # noqa: B007 - the count is returned
        _, log_prob, _ = policy.evaluate_actions(obs, acts)  # type: ignore[operator]
        if keep is None and float(th.exp(log_prob.detach() / width).mean()) >= target:
            break
        loss = -log_prob.mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    if keep is not None:
        with th.no_grad():
            log_std.copy_(keep)  # type: ignore[union-attr]
    return taken


def episodes_to_steps(episodes: float, episode_length: int) -> int:
    return int(math.ceil(episodes)) * episode_length


def clone_actor(model: BaseAlgorithm, steps: list[tuple[Any, Any, Any, bool, dict]], n_steps: int, lr: float = 1e-3) -> float:
    """Regress an off-policy agent's deterministic action onto ``steps``' actions (mean squared
    error), and copy the result to its target actor: relative to a reference, a freshly
    initialised actor's constant offsets would otherwise start it a few options away.
    Returns the final loss."""
    actor = model.actor  # type: ignore[attr-defined]
    obs = th.as_tensor(np.stack([s[0] for s in steps]), dtype=th.float32, device=model.device)
    acts = th.as_tensor(np.stack([np.asarray(s[1], dtype=np.float32) for s in steps]), device=model.device)
    optimiser = th.optim.Adam(actor.parameters(), lr=lr)
    loss = th.zeros(())
    for _ in range(n_steps):
        out = actor(obs, deterministic=True) if "deterministic" in actor.forward.__code__.co_varnames else actor(obs)
        loss = th.nn.functional.mse_loss(out, acts)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    target = getattr(model, "actor_target", None)
    if target is not None:
        target.load_state_dict(actor.state_dict())
    return float(loss.detach())
