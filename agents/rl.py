"""Reinforcement-learning searchers: stable-baselines3 agents driving the compression envs.

An RL agent drives its own loop: :meth:`RLSearcher.run` calls ``model.learn`` and every
finished episode is one evaluation. The env evaluates the episode's policy through
:class:`~agents.rl_parts.ObjectiveEvaluator`, so it is scored by the shared
:class:`~agents.objective.Objective` and recorded like any other searcher's trial; an
SB3 callback stops learning when the search holds ``n_evaluations`` records or a search
callback asks to stop.

What makes the agents start where TPE starts, and learn from what happened:

- **Relative actions.** The env's Box actions are offsets from a reference policy (the
  integer program's, ``reference="ilp"``, or uniform 8-bit), so the zero action is the
  reference and Gaussian exploration starts around a good policy instead of the middle of
  the space (sparsity 0.375 everywhere, middle bits).
- **Warm start.** The first episodes replay the warm-start policies (the integer program's
  and the uniform policies that fit, as TPE's enqueued trials); they are evaluated, and
  off-policy agents keep them in the replay buffer. Every agent first takes a short
  behaviour-cloning pass towards the reference (:func:`~agents.rl_parts.clone_actor` for
  the off-policy ones), so its initial deterministic policy is the reference.
- **Local exploration that does not collapse** (on-policy agents, :mod:`agents.exploration`):
  the cloning is to a *distribution* around the reference, not to the reference itself:
  an episode changes ``explore_moves`` (4) of its ~20 action components on average, each
  by one or two options. A categorical agent is fitted to soft targets, a Gaussian one
  gets the matching scale; between rollouts the exploration is widened back whenever PPO's
  updates have narrowed it below half the radius. Before, MaskablePPO's cloning stopped at
  probability 0.5 per component, so an episode changed ~7 of ResNet-8's 8 free layers:
  all 59 explored policies of a 60-evaluation search scored below the reference
  (0.14-0.47 against 0.53 at ``size<=0.0625x``), and the three seeds ended on the same
  warm-start policy.
- **Self-imitation** (``recenter``): after every rollout the exploration's centre moves to
  the best feasible policy found so far (Oh et al. 2018's self-imitation, here as a
  re-clone with the same radius), so the search climbs from improvement to improvement
  while PPO's own updates learn from every episode.
- **Executed actions.** What the agent stores is the action the env applied after masks,
  projection and scripts (:class:`~agents.rl_parts.EvaluationBudget`); every projection of
  an episode is recorded on its trial like a repair (``repair.steps``).
- **A real tell.** :meth:`RLSearcher.tell` replays a told record's policy through the env
  (no evaluation) into the replay buffer, or behaviour-clones it when it is the best so far
  (on-policy), so records restored from the runner's journal are learned from.
- **Checkpoints at rollout boundaries.** The agent (and the replay buffer) is saved when
  its state includes every episode up to a known record count (``learned``); the records
  are saved after every episode. A resumed searcher tells the records past ``learned`` to
  the agent, so resuming loses no learning.
- **Reward relative to float** on the search's own validation data and fidelity:
  ``accuracy / float accuracy`` (the evaluator's ``baseline()``), minus the KL slope.

Defaults are chosen for small evaluation budgets (60-200 episodes): small networks
(64 x 64), Gaussian exploration noise for DDPG and TD3 decaying to its floor over the
search, PPO updates every 4 episodes, the joint env's ``uniform`` channel grammar (one
weight width per layer: a precision change is one move; see ``channels``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch as th
from sb3_contrib import MaskablePPO
from stable_baselines3 import DDPG, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm

from agents.base import Callback, Searcher, check_evaluations, notify_trial
from agents.exploration import CategoricalAnchor, box_sigma, kernel_targets
from agents.objective import Objective
from agents.optuna_search import warm_start_policies
from agents.records import SearchResult, TrialRecord, repair_from_dict
from agents.rl_parts import (
    DecayingNormalNoise,
    EvaluationBudget,
    KLShapedReward,
    ObjectiveEvaluator,
    ProposalEvaluator,
    add_to_replay_buffer,
    behaviour_clone,
    clone_actor,
    episodes_to_steps,
    replay_episode,
)
from automl.errors import ConfigError
from automl.problem.repair import RepairRecord
from envs import DiscreteActions, EnvConfig, JointPruneQuantEnv, LayerQuantEnv
from envs.base import CompressionEnv
from search_spaces.policy import Policy

ENVS = ("joint", "layer")
MODEL_FILE, RESULT_FILE, BUFFER_FILE, STATE_FILE = "model.zip", "result.json", "replay_buffer.pkl", "agent.json"
REFERENCES = ("ilp", "uniform8", "none")


class RLSearcher(Searcher):
    """An SB3 agent learning to compress the model layer by layer; subclasses pick the algorithm.

    Args:
        objective: scores every episode's policy.
        seed: seeds the agent, its exploration and the env.
        env: ``joint`` (:class:`~envs.joint.JointPruneQuantEnv`: sparsity, group bits and
            activation bits per layer) or ``layer`` (:class:`~envs.layer_quant.LayerQuantEnv`:
            HAQ's weight and activation bits per layer, no pruning).
        hierarchy: the joint env's ``per_layer`` (one step per layer) or ``two_level`` (a
            layer step then a channel step; PPO and MaskablePPO take them with two actor
            networks, :mod:`agents.controllers`). ``None``: the class's ``default_hierarchy``
            (``two_level`` for PPO, where it measured better in ``benchmarks/searcher_learning.py``
            on the synthetic problem, ``per_layer`` for the others).
        channels: the joint env's channel decision (:class:`~envs.joint.JointPruneQuantEnv`):
            ``uniform`` (one weight bit-width per layer, the default) or ``groups`` (bits per
            importance-ranked channel group). On ResNet-8 at ``size<=0.0625x`` (60
            evaluations, fidelity 2, MaskablePPO, seeds 0-2) ``uniform`` ended at 0.835 /
            0.881 / 0.655 validation accuracy and ``groups`` at 0.701 / 0.540 / 0.537 (the
            reference 0.527): with ``G`` components per layer a change of a layer's precision
            takes ``G`` coordinated moves, which local exploration rarely makes.
        budget_mode: the env's budget handling (``mask``, ``repair``, ``lagrangian``).
        warmup_episodes: random episodes before an off-policy agent learns.
        episodes_per_update: episodes per PPO rollout.
        net_arch: hidden layers of the actor and critic networks.
        learning_rate: the algorithm's default when ``None``.
        noise_sigma / noise_decay: exploration noise of DDPG and TD3 (scale of actions in
            [-1, 1], multiplied by ``noise_decay`` after every episode; ``None`` decays it
            to its floor of 0.1 at the last episode of the search).
        checkpoint_dir: where the agent and the records are saved; resumes from it if it
            holds a checkpoint.
        checkpoint_every: rollouts between agent checkpoints (records are saved every episode).
        reference: the policy actions are relative to: ``ilp`` (the integer program's, the
            first warm-start policy; uniform 8-bit if it has none), ``uniform8`` or ``none``
            (absolute actions).
        warm_start: replay the warm-start policies as the first episodes (and
            behaviour-clone the reference for on-policy agents).
        bc_steps: most behaviour-cloning gradient steps of the warm start.
        kl_weight: the final reward loses ``kl_weight * KL`` (see
            :class:`~agents.rl_parts.KLShapedReward`); 0 keeps the env's reward as is.
        explore_moves: on-policy agents with a reference: the expected number of action
            components an episode changes from its centre policy (:mod:`agents.exploration`);
            the exploration does not fall below it during the search.
        recenter: on-policy agents: after every rollout the centre moves to the best
            feasible policy found so far (self-imitation: the agent is cloned towards it with
            the ``explore_moves`` radius); ``False`` keeps the reference as the centre.
        algo_kwargs: further keyword arguments of the SB3 algorithm (override the above).
    """

    name = "rl"
    algorithm: ClassVar[type[BaseAlgorithm]] = PPO
    off_policy: ClassVar[bool] = False
    masked: ClassVar[bool] = False
    default_hierarchy: ClassVar[str] = "per_layer"

    def __init__(
        self,
        objective: Objective,
        *,
        seed: int = 0,
        env: str = "joint",
        hierarchy: str | None = None,
        channels: str = "uniform",
        budget_mode: str = "mask",
        warmup_episodes: int = 10,
        episodes_per_update: int = 4,
        net_arch: Sequence[int] = (64, 64),
        learning_rate: float | None = None,
        noise_sigma: float = 0.15,
        noise_decay: float | None = None,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 1,
        kl_weight: float = 0.01,
        algo_kwargs: dict[str, Any] | None = None,
        reference: str = "ilp",
        warm_start: bool = True,
        bc_steps: int = 300,
        explore_moves: float = 4.0,
        recenter: bool = True,
    ) -> None:
        super().__init__(objective, seed=seed)
        if env not in ENVS:
            raise ConfigError(f"env must be one of {list(ENVS)}, got {env!r}")
        if warmup_episodes < 0 or episodes_per_update < 1 or checkpoint_every < 1 or bc_steps < 0:
            raise ConfigError("warmup_episodes and bc_steps must be >= 0, episodes_per_update and checkpoint_every >= 1")
        if reference not in REFERENCES:
            raise ConfigError(f"reference must be one of {list(REFERENCES)}, got {reference!r}")
        self.env_kind, self.budget_mode = env, budget_mode
        self.hierarchy = hierarchy or self.default_hierarchy
        self.channels = channels
        self.warmup_episodes, self.episodes_per_update = int(warmup_episodes), int(episodes_per_update)
        self.net_arch = [int(n) for n in net_arch]
        self.learning_rate = learning_rate
        self.noise_sigma = float(noise_sigma)
        self.noise_decay = None if noise_decay is None else float(noise_decay)
        self.bc_steps = int(bc_steps)
        self.warm_policies = warm_start_policies(objective) if (warm_start or reference == "ilp") else []
        self.reference = self._reference_policy(reference)
        self.warm_start = bool(warm_start)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every = int(checkpoint_every)
        self.algo_kwargs = dict(algo_kwargs or {})
        if kl_weight < 0:
            raise ConfigError(f"kl_weight must be >= 0, got {kl_weight}")
        self.kl_weight = float(kl_weight)
        if not explore_moves > 0:
            raise ConfigError(
                f"explore_moves must be > 0 (the expected number of action components an episode changes), got {explore_moves}"
            )
        self.explore_moves, self.recenter = float(explore_moves), bool(recenter)
        self.env = self._make_env(ObjectiveEvaluator(self))
        self.episode_length = len(self.env.unwrapped.decisions)
        self._sizes = [d.sizes for d in self.env.unwrapped.decisions]  # option counts per step and component
        self.epsilon = min(0.5, self.explore_moves / max(1, sum(n > 1 for s in self._sizes for n in s)))
        self._box_sigma = box_sigma(self._sizes, self.env.unwrapped.action_dim, self.epsilon)
        self._anchor: CategoricalAnchor | None = None
        self._centre_key: str | None = None
        self.recentred = 0  # times the centre moved to a better policy
        self.reanchored = 0  # times a narrowed exploration was widened back to the radius
        self.model: BaseAlgorithm | None = None
        self._proposal_env: Any = None
        self._callbacks: Sequence[Callback] = ()
        self._episodes = 0
        self.learned = 0  # records the saved agent has learned from
        self._model_learned = 0  # records the agent in memory has learned from
        self._pending_learned: int | None = None
        self._rollouts = 0
        self._load_records()
        if self.warm_start and len(self.records) < len(self.warm_policies):
            self.env.unwrapped.queue_policies(self.warm_policies[len(self.records):])

    def _reference_policy(self, reference: str) -> Policy | None:
        if reference == "none":
            return None
        if reference == "ilp" and self.warm_policies:
            return self.warm_policies[0]
        from automl.errors import PolicyError

        try:
            return self.space.uniform(8)
        except PolicyError:
            return None

    # construction --------------------------------------------------------------------
    def _make_env(self, evaluator: Any) -> Any:
        o = self.objective
        kwargs: dict[str, Any] = dict(
            sensitivity=o.sensitivities, config=EnvConfig(budget_mode=self.budget_mode, cache=False),
            reference=self.reference,
        )
        if self.env_kind == "joint":
            base: CompressionEnv = JointPruneQuantEnv(
                o.cost_model.analysis, o.space, o.cost_model, o.bound, evaluator, hierarchy=self.hierarchy,
                channels=self.channels, **kwargs
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
            warm = len(self.warm_policies) if self.warm_start else 0
            # Random warm-up episodes only without a warm start: relative to a reference they are random policies.
            warmup = warm + (0 if warm else min(self.warmup_episodes, max(1, n_evaluations // 10)))
            kw.update(
                learning_starts=episodes_to_steps(warmup, self.episode_length),
                buffer_size=min(100_000, episodes_to_steps(n_evaluations + 20, self.episode_length)), batch_size=64,
                tau=0.01, train_freq=(1, "episode"), gradient_steps=-1,
            )
            if self.algorithm is not SAC:
                floor = 0.1  # relative actions: ~40 % of components still move one option at the end
                decay = self.noise_decay
                if decay is None:
                    decay = (floor / self.noise_sigma) ** (1.0 / max(1, n_evaluations - warmup))
                kw["action_noise"] = DecayingNormalNoise(
                    int(np.prod(self.env.action_space.shape)), self.noise_sigma, decay, floor
                )
        else:
            if not self.masked:
                # A narrower start than std 1 keeps early actions off the clipped ends of [-1, 1]; relative
                # to a reference, the exploration radius sets it (per dimension once the model exists).
                kw["policy_kwargs"]["log_std_init"] = (
                    -0.5 if self.reference is None else float(np.log(np.median(self._box_sigma)))
                )
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
                for record in self.records[self.learned :]:
                    self._learn_from(record)
                self._model_learned = len(self.records)
            else:
                policy, kw = self._policy_class(), self.hyperparameters(n_evaluations)
                if not isinstance(policy, str):
                    kw["policy_kwargs"]["phase_index"] = self.env.unwrapped.phase_index
                self.model = self.algorithm(policy, self.env, seed=self.seed, device="cpu", verbose=0, **kw)
                self._widen_box()
                if self.warm_start and self.reference is not None and self.bc_steps:
                    if self.off_policy:
                        clone_actor(self.model, replay_episode(self._proposal(), self.reference), self.bc_steps)
                    else:
                        self._clone_centre(self.reference)
                for record in self.records:  # told before the agent existed
                    self._learn_from(record)
                self._model_learned = len(self.records)
            if not self.off_policy and self._centre_key is None and self.reference is not None:
                # A loaded agent (its checkpoint, or the tells above, holds the centre's clone) or one
                # without a warm start: the centre, not cloned.
                best = self._best_record() if self.recenter else None
                self._clone_centre(self.reference if best is None else best.policy, fit=False)
        return self.model

    def _policy_class(self) -> Any:
        """AJPQ's two controllers for on-policy agents in the ``two_level`` joint env, else SB3's MLP."""
        if self.off_policy or self.env.unwrapped.phase_index is None:
            return "MlpPolicy"
        from agents.controllers import TwoControllerMaskablePolicy, TwoControllerPolicy

        return TwoControllerMaskablePolicy if self.masked else TwoControllerPolicy

    def _proposal(self) -> Any:
        """An env twin that evaluates nothing (for ask, replays and demonstrations)."""
        if self._proposal_env is None:
            self._proposal_env = self._make_env(ProposalEvaluator())
            self._proposal_env.reset(seed=self.seed)
        return self._proposal_env

    def episode_reward(self, record: TrialRecord) -> float:
        """The reward the env would give ``record``'s evaluation (accuracy relative to float)."""
        base: CompressionEnv = self.env.unwrapped
        reward = base.reward_of(record.metrics, record.costs)
        kl = record.metrics.kl
        return reward - (self.kl_weight * kl if self.kl_weight and np.isfinite(kl) else 0.0)

    def _learn_from(self, record: TrialRecord) -> None:
        """Off-policy: the record's episode into the replay buffer; on-policy: clone it if it is the best yet."""
        assert self.model is not None
        steps = replay_episode(self._proposal(), record.proposed)
        reward = self.episode_reward(record)
        if self.off_policy:
            add_to_replay_buffer(self.model, steps, reward)
        elif record.feasible and reward >= max((self.episode_reward(r) for r in self.records if r.feasible), default=-np.inf):
            self._clone_centre(record.policy)

    # exploration around the centre (on-policy agents) ---------------------------------
    def _best_record(self) -> TrialRecord | None:
        """The feasible record with the highest reward (what the centre moves to), or ``None``."""
        feasible = [r for r in self.records if r.feasible and np.isfinite(r.accuracy)]
        return max(feasible, key=self.episode_reward, default=None)

    def _clone_centre(self, policy: Policy, fit: bool = True) -> None:
        """Make ``policy`` the centre of exploration: clone the agent towards it with the radius.

        A categorical agent is fitted to :func:`~agents.exploration.kernel_targets` around
        the policy's options; a Gaussian one has its mean regressed onto them (its scale is
        the radius, :meth:`_widen_box`).
        """
        assert self.model is not None
        steps = replay_episode(self._proposal(), policy)
        if self.masked:
            options = [s[4]["executed_options"] for s in steps]
            nvec = self.env.get_wrapper_attr("nvec")
            targets, weights = kernel_targets(self._sizes, options, nvec, self.epsilon)
            self._anchor = CategoricalAnchor(np.stack([s[0] for s in steps]), targets, weights, nvec)
            if fit:
                self._anchor.fit(self.model, max(self.bc_steps, 1))
        elif fit:
            behaviour_clone(self.model, steps, max(self.bc_steps, 1))
        self._centre_key = policy.key()

    def _widen_box(self) -> None:
        """Hold a Gaussian agent's exploration scale at least at the radius (relative actions)."""
        log_std = getattr(self.model.policy, "log_std", None) if self.model is not None else None
        if self.off_policy or self.masked or self.reference is None or not isinstance(log_std, th.Tensor):
            return
        floor = th.as_tensor(np.log(self._box_sigma), dtype=log_std.dtype, device=log_std.device)
        with th.no_grad():
            if bool((log_std < floor).any()):
                self.reanchored += 1
            log_std.copy_(th.maximum(log_std, floor))

    def refresh_exploration(self) -> None:
        """Between rollouts: move the centre to the best policy found so far (``recenter``), or
        widen an exploration PPO's updates have narrowed below half the radius back to it."""
        if self.model is None or self.off_policy or self.reference is None:
            return
        best = self._best_record() if self.recenter else None
        if best is not None and best.policy.key() != self._centre_key:
            self.recentred += 1
            self._clone_centre(best.policy)
            return
        if self.masked:
            if self._anchor is not None and self._anchor.centre_probability(self.model) > 1.0 - self.epsilon / 2:
                self.reanchored += 1
                self._anchor.fit(self.model, max(self.bc_steps, 1))
        else:
            self._widen_box()

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
            state = self._path(STATE_FILE)
            self.learned = int(json.loads(state.read_text())["learned"]) if state is not None and state.is_file() else 0

    def _write(self, name: str, text: str) -> None:
        assert self.checkpoint_dir is not None
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_dir / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(self.checkpoint_dir / name)

    def save_records(self) -> None:
        """Save the records so far (every episode)."""
        if self.checkpoint_dir is not None:
            self._write(RESULT_FILE, json.dumps(self.result().to_dict()))

    def save_checkpoint(self, learned: int | None = None) -> None:
        """Save the agent, its replay buffer (off-policy), the records, and how many records
        the saved agent has learned from (``learned``; all records when ``None``)."""
        if self.checkpoint_dir is None or self.model is None:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.model.save(self._path(MODEL_FILE))
        if self.off_policy:
            self.model.save_replay_buffer(self._path(BUFFER_FILE))  # type: ignore[attr-defined]
        self.learned = len(self.records) if learned is None else learned
        self.save_records()
        self._write(STATE_FILE, json.dumps({"learned": self.learned}))

    def rollout_start(self) -> None:
        """SB3 begins collecting: an on-policy agent has now trained on the last rollout."""
        if not self.off_policy and self._pending_learned is not None:
            self._model_learned = self._pending_learned
            self._pending_learned = None
            self._rollouts += 1
            self.refresh_exploration()
            if self._rollouts % self.checkpoint_every == 0:
                self.save_checkpoint(self._model_learned)

    def rollout_end(self) -> None:
        """SB3 stored the rollout: an off-policy buffer now holds every episode so far."""
        if self.off_policy:
            self._model_learned = len(self.records)
            self._rollouts += 1
            if self._rollouts % self.checkpoint_every == 0:
                self.save_checkpoint()
        else:
            self._pending_learned = len(self.records)

    # the env's evaluations -----------------------------------------------------------
    def evaluate_episode(self, policy: Policy) -> TrialRecord:
        """Score the policy of a finished episode (called by the env through its evaluator)."""
        record = self.objective(policy, number=len(self.records), searcher=self.label, repair=False)
        self.records.append(record)
        return record

    def episode_done(self, info: dict[str, Any]) -> bool:
        """Complete the last record from the env's final ``info``; ``False`` if a callback stops the search.

        An env repair is recorded with the requested policy; in-episode projections (masks,
        over-pruning) as a repair record whose steps list them.
        """
        record = self.records[-1]
        requested = info.get("requested_policy")
        if info.get("repaired") and requested is not None:
            record = replace(record, proposed=requested, repair=repair_from_dict(info["repair"]))
        elif info.get("projection_log"):
            record = replace(record, repair=RepairRecord(changed=True, steps=tuple(info["projection_log"]), after=record.costs))
        self.records[-1] = record
        self._episodes += 1
        keep_going = notify_trial(self._callbacks, record)
        if not keep_going:
            self.stop_reason = "a callback asked to stop"
        elif not self.count_duplicate(record):
            keep_going = False
        self.save_records()
        return keep_going

    # ask / tell ----------------------------------------------------------------------
    def ask(self) -> Policy:
        """The current agent's deterministic policy (one rollout, not evaluated, no learning).

        Learning happens in :meth:`run`; ask/tell lets a caller look at what the agent would
        propose now.
        """
        model = self._ensure_model(1)
        env = self._proposal()
        obs, _ = env.reset()
        while True:
            kwargs = {"action_masks": env.get_wrapper_attr("action_masks")()} if self.masked else {}
            action, _ = model.predict(obs, deterministic=True, **kwargs)
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                return info["policy"]

    def tell(self, policy: Policy, record: TrialRecord) -> None:
        """Learn from ``record`` (a restored journal record, or another searcher's): its
        episode is replayed into the replay buffer, or cloned by an on-policy agent when it
        is the best so far. Once the agent exists; records told before are learned on creation."""
        if self.model is not None:
            self._learn_from(record)

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
        self.save_checkpoint(self._model_learned)
        self._callbacks = ()
        return self.finish(start, callbacks)


class PPOSearcher(RLSearcher):
    """PPO on the Box-action env (see :class:`RLSearcher`)."""

    name = "ppo"
    algorithm = PPO
    default_hierarchy = "two_level"


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
