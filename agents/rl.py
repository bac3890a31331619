"""Reinforcement-learning searchers: stable-baselines3 agents driving the compression envs.

An RL agent drives its own loop: :meth:`RLSearcher.run` calls ``model.learn`` and every
finished episode is one evaluation. The env evaluates the episode's policy through
:class:`~agents.rl_parts.ObjectiveEvaluator`, so it is scored by the shared
:class:`~agents.objective.Objective` and recorded like any other searcher's trial; an
SB3 callback stops learning when the search holds ``n_evaluations`` records or a search
callback asks to stop. The agent (and an off-policy agent's replay buffer) is saved to
``checkpoint_dir`` every few episodes and at the end, with the records so far; a searcher
built on the same directory resumes from there and runs only the missing evaluations.

Defaults are chosen for small evaluation budgets (100-200 episodes): small networks
(64 x 64), a few random warm-up episodes for off-policy agents, decaying Gaussian
exploration noise for DDPG and TD3 (HAQ's recipe), PPO updates every 4 episodes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sb3_contrib import MaskablePPO
from stable_baselines3 import DDPG, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm

from agents.base import Callback, Searcher, check_evaluations, notify_trial
from agents.objective import Objective
from agents.records import SearchResult, TrialRecord, repair_from_dict
from agents.rl_parts import (
    DecayingNormalNoise,
    EvaluationBudget,
    KLShapedReward,
    ObjectiveEvaluator,
    ProposalEvaluator,
    episodes_to_steps,
)
from automl.errors import ConfigError
from envs import DiscreteActions, EnvConfig, JointPruneQuantEnv, LayerQuantEnv
from envs.base import CompressionEnv
from search_spaces.policy import Policy

ENVS = ("joint", "layer")
MODEL_FILE, RESULT_FILE, BUFFER_FILE = "model.zip", "result.json", "replay_buffer.pkl"


class RLSearcher(Searcher):
    """An SB3 agent learning to compress the model layer by layer; subclasses pick the algorithm.

    Args:
        objective: scores every episode's policy.
        seed: seeds the agent, its exploration and the env.
        env: ``joint`` (:class:`~envs.joint.JointPruneQuantEnv`: sparsity, group bits and
            activation bits per layer) or ``layer`` (:class:`~envs.layer_quant.LayerQuantEnv`:
            HAQ's weight and activation bits per layer, no pruning).
        hierarchy: the joint env's ``per_layer`` (one step per layer) or ``two_level``.
        budget_mode: the env's budget handling (``mask``, ``repair``, ``lagrangian``).
        warmup_episodes: random episodes before an off-policy agent learns.
        episodes_per_update: episodes per PPO rollout.
        net_arch: hidden layers of the actor and critic networks.
        learning_rate: the algorithm's default when ``None``.
        noise_sigma / noise_decay: exploration noise of DDPG and TD3 (scale of actions in
            [-1, 1], multiplied by ``noise_decay`` after every episode).
        checkpoint_dir: where the agent and the records are saved; resumes from it if it
            holds a checkpoint.
        checkpoint_every: episodes between checkpoints.
        kl_weight: the final reward loses ``kl_weight * KL`` (see
            :class:`~agents.rl_parts.KLShapedReward`); 0 keeps the env's reward as is.
        algo_kwargs: further keyword arguments of the SB3 algorithm (override the above).
    """

    name = "rl"
    algorithm: ClassVar[type[BaseAlgorithm]] = PPO
    off_policy: ClassVar[bool] = False
    masked: ClassVar[bool] = False

    def __init__(
        self,
        objective: Objective,
        *,
        seed: int = 0,
        env: str = "joint",
        hierarchy: str = "per_layer",
        budget_mode: str = "mask",
        warmup_episodes: int = 10,
        episodes_per_update: int = 4,
        net_arch: Sequence[int] = (64, 64),
        learning_rate: float | None = None,
        noise_sigma: float = 0.5,
        noise_decay: float = 0.97,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 10,
        kl_weight: float = 0.01,
        algo_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(objective, seed=seed)
        if env not in ENVS:
            raise ConfigError(f"env must be one of {list(ENVS)}, got {env!r}")
        if warmup_episodes < 0 or episodes_per_update < 1 or checkpoint_every < 1:
            raise ConfigError("warmup_episodes must be >= 0, episodes_per_update and checkpoint_every >= 1")
        self.env_kind, self.hierarchy, self.budget_mode = env, hierarchy, budget_mode
        self.warmup_episodes, self.episodes_per_update = int(warmup_episodes), int(episodes_per_update)
        self.net_arch = [int(n) for n in net_arch]
        self.learning_rate = learning_rate
        self.noise_sigma, self.noise_decay = float(noise_sigma), float(noise_decay)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every = int(checkpoint_every)
        self.algo_kwargs = dict(algo_kwargs or {})
        if kl_weight < 0:
            raise ConfigError(f"kl_weight must be >= 0, got {kl_weight}")
        self.kl_weight = float(kl_weight)
        self.env = self._make_env(ObjectiveEvaluator(self))
        self.episode_length = len(self.env.unwrapped.decisions)
        self.model: BaseAlgorithm | None = None
        self._proposal_env: Any = None
        self._callbacks: Sequence[Callback] = ()
        self._episodes = 0
        self._load_records()

    # construction --------------------------------------------------------------------
    def _make_env(self, evaluator: Any) -> Any:
        o = self.objective
        kwargs: dict[str, Any] = dict(
            sensitivity=o.sensitivities, config=EnvConfig(budget_mode=self.budget_mode, cache=False),
        )
        if self.env_kind == "joint":
            base: CompressionEnv = JointPruneQuantEnv(
                o.cost_model.analysis, o.space, o.cost_model, o.bound, evaluator, hierarchy=self.hierarchy, **kwargs
            )
        else:
            base = LayerQuantEnv(o.cost_model.analysis, o.space, o.cost_model, o.bound, evaluator, **kwargs)
        env: Any = DiscreteActions(base, "multidiscrete") if self.masked else base
        return KLShapedReward(env, self.kl_weight) if self.kl_weight else env

    def hyperparameters(self, n_evaluations: int) -> dict[str, Any]:
        """Keyword arguments of the SB3 algorithm for a search of ``n_evaluations`` episodes."""
        kw: dict[str, Any] = {"policy_kwargs": {"net_arch": list(self.net_arch)}, "gamma": 1.0}
        if self.learning_rate is not None:
            kw["learning_rate"] = self.learning_rate
        if self.off_policy:
            warmup = min(self.warmup_episodes, max(1, n_evaluations // 5))
            kw.update(
                learning_starts=episodes_to_steps(warmup, self.episode_length), buffer_size=100_000, batch_size=64,
                tau=0.01, train_freq=(1, "episode"), gradient_steps=-1,
            )
            if self.algorithm is not SAC:
                kw["action_noise"] = DecayingNormalNoise(
                    int(np.prod(self.env.action_space.shape)), self.noise_sigma, self.noise_decay
                )
        else:
            if not self.masked:
                # A narrower start (std 0.6 instead of 1) keeps early actions off the clipped ends of [-1, 1].
                kw["policy_kwargs"]["log_std_init"] = -0.5
            n_steps = episodes_to_steps(self.episodes_per_update, self.episode_length)
            # Minibatches of whole episodes divide the rollout evenly.
            batch = self.episode_length * max(1, self.episodes_per_update // 2)
            kw.update(n_steps=n_steps, batch_size=batch, n_epochs=10, gae_lambda=0.95, ent_coef=0.01)
        kw.update(self.algo_kwargs)
        return kw

    def _ensure_model(self, n_evaluations: int) -> BaseAlgorithm:
        if self.model is None:
            path = self._path(MODEL_FILE)
            if path is not None and path.is_file():
                self.model = self.algorithm.load(path, env=self.env, device="cpu")
                buffer = self._path(BUFFER_FILE)
                if self.off_policy and buffer is not None and buffer.is_file():
                    self.model.load_replay_buffer(buffer)  # type: ignore[attr-defined]
            else:
                policy = "MultiInputPolicy" if isinstance(self.env.observation_space, dict) else "MlpPolicy"
                self.model = self.algorithm(
                    policy, self.env, seed=self.seed, device="cpu", verbose=0, **self.hyperparameters(n_evaluations)
                )
        return self.model

    # checkpoints ---------------------------------------------------------------------
    def _path(self, name: str) -> Path | None:
        return None if self.checkpoint_dir is None else self.checkpoint_dir / name

    def _load_records(self) -> None:
        path = self._path(RESULT_FILE)
        if path is not None and path.is_file():
            result = SearchResult.from_json(path.read_text())
            self.records = list(result.records)
            self._elapsed = result.wall_seconds
            self._episodes = len(self.records)

    def save_checkpoint(self) -> None:
        """Save the agent, its replay buffer (off-policy) and the records to ``checkpoint_dir``."""
        if self.checkpoint_dir is None or self.model is None:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.model.save(self._path(MODEL_FILE))
        if self.off_policy:
            self.model.save_replay_buffer(self._path(BUFFER_FILE))  # type: ignore[attr-defined]
        tmp = self.checkpoint_dir / (RESULT_FILE + ".tmp")
        tmp.write_text(json.dumps(self.result().to_dict()))
        tmp.replace(self.checkpoint_dir / RESULT_FILE)

    # the env's evaluations -----------------------------------------------------------
    def evaluate_episode(self, policy: Policy) -> TrialRecord:
        """Score the policy of a finished episode (called by the env through its evaluator)."""
        record = self.objective(policy, number=len(self.records), searcher=self.label, repair=False)
        self.records.append(record)
        return record

    def episode_done(self, info: dict[str, Any]) -> bool:
        """Complete the last record from the env's final ``info``; ``False`` if a callback stops the search."""
        record = self.records[-1]
        requested = info.get("requested_policy")
        if info.get("repaired") and requested is not None:
            record = replace(record, proposed=requested, repair=repair_from_dict(info["repair"]))
            self.records[-1] = record
        self._episodes += 1
        keep_going = notify_trial(self._callbacks, record)
        if not keep_going:
            self.stop_reason = "a callback asked to stop"
        elif not self.count_duplicate(record):
            keep_going = False
        if self._episodes % self.checkpoint_every == 0:
            self.save_checkpoint()
        return keep_going

    # ask / tell ----------------------------------------------------------------------
    def ask(self) -> Policy:
        """The current agent's deterministic policy (one rollout, not evaluated, no learning).

        Learning happens in :meth:`run`; ask/tell lets a caller look at what the agent would
        propose now.
        """
        model = self._ensure_model(1)
        if self._proposal_env is None:
            self._proposal_env = self._make_env(ProposalEvaluator())
        env = self._proposal_env
        obs, _ = env.reset(seed=self.seed)
        while True:
            kwargs = {"action_masks": env.get_wrapper_attr("action_masks")()} if self.masked else {}
            action, _ = model.predict(obs, deterministic=True, **kwargs)
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                return info["policy"]

    def tell(self, policy: Policy, record: TrialRecord) -> None:
        """The agent learns from its own episodes in :meth:`run`, not from told records."""

    # driver --------------------------------------------------------------------------
    def run(self, n_evaluations: int, callbacks: Sequence[Callback] = ()) -> SearchResult:
        """Learn until the search holds ``n_evaluations`` episodes (one evaluation each)."""
        check_evaluations(n_evaluations)
        start = time.perf_counter()
        self._callbacks = callbacks
        for cb in callbacks:
            cb.on_start(self, self.objective)
        model = self._ensure_model(n_evaluations)
        stopper = EvaluationBudget(self, n_evaluations)
        self.stop_reason = ""
        while self.n_distinct < n_evaluations and not stopper.stopped:
            remaining = n_evaluations - self.n_distinct
            model.learn(
                total_timesteps=episodes_to_steps(2 * remaining + 1, self.episode_length),
                callback=stopper, reset_num_timesteps=False, progress_bar=False,
            )
        self.save_checkpoint()
        self._callbacks = ()
        return self.finish(start, callbacks)


class PPOSearcher(RLSearcher):
    """PPO on the Box-action env (see :class:`RLSearcher`)."""

    name = "ppo"
    algorithm = PPO


class MaskablePPOSearcher(RLSearcher):
    """sb3-contrib's MaskablePPO on MultiDiscrete actions with the env's budget masks."""

    name = "maskable_ppo"
    algorithm = MaskablePPO
    masked = True


class DDPGSearcher(RLSearcher):
    """DDPG with decaying Gaussian noise and random warm-up episodes (HAQ's agent)."""

    name = "ddpg"
    algorithm = DDPG
    off_policy = True


class TD3Searcher(RLSearcher):
    """TD3 (twin critics, delayed actor updates) with decaying Gaussian noise."""

    name = "td3"
    algorithm = TD3
    off_policy = True


class SACSearcher(RLSearcher):
    """SAC (entropy-regularised; explores through its stochastic actor)."""

    name = "sac"
    algorithm = SAC
    off_policy = True
