"""Optuna samplers as searchers: TPE, NSGA-II (Pareto front), GP and CMA-ES.

A policy is a flat vector of integer parameters (:class:`agents.codec.PolicyCodec`). Every
trial of the study stores its :class:`~agents.records.TrialRecord` as a user attribute, so

- re-opening a study (same storage and study name) resumes it: finished trials are loaded
  into the result, never evaluated again, and only the missing evaluations run;
- several workers (processes, machines) running the same searcher on one storage share the
  study: the first ``n_evaluations`` trials by trial number form the search, a trial asked
  beyond them (two workers racing for the last slot) is marked failed with the user
  attribute ``surplus`` before anything is evaluated, so no trial is lost or duplicated.

The budget reaches the sampler through trial constraints (``value / limit - 1`` per limit,
:meth:`optuna.trial.Trial.set_constraint`, which replaces ``constraints_func`` in Optuna 5):
with the objective's repair on, every evaluated policy meets the budget and the sampler
optimises accuracy of the repaired proposal; with repair off, an over-budget proposal is
evaluated, marked infeasible and ranked below every feasible trial by its excess.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import replace

import optuna
from optuna.distributions import IntDistribution
from optuna.storages import BaseStorage
from optuna.trial import Trial, TrialState

from agents.base import Callback, Searcher, check_evaluations, notify_trial
from agents.codec import PolicyCodec, uniform_policies
from agents.objective import Objective
from agents.records import SearchResult, TrialRecord
from agents.storage import fail_stale, heartbeat, open_storage, quiet_optuna
from automl.errors import AutoMLError, ConfigError
from automl.ilp import solve_ilp
from search_spaces.policy import Policy

RECORD_ATTR = "record"
SURPLUS_ATTR = "surplus"
CACHE_HIT_ATTR = "cache_hit"
_ACTIVE = (TrialState.COMPLETE, TrialState.RUNNING)


def warm_start_policies(objective: Objective, ilp_time_limit: float = 60.0) -> list[Policy]:
    """The integer program's optimum and, per weight bit-width, the least-pruned uniform policy that fits."""
    out: list[Policy] = []
    try:
        out.append(solve_ilp(objective.space, objective.cost_model, objective.bound, objective.sensitivities,
                             time_limit=ilp_time_limit))
    except AutoMLError:
        pass  # no proxy optimum to seed with; the uniform baselines still are
    taken: set[int] = set()
    for bits, _level, policy in uniform_policies(objective.space):
        if bits not in taken and objective.feasible(policy):
            taken.add(bits)
            out.append(policy)
    return out


class OptunaSearcher(Searcher):
    """A searcher backed by an Optuna study; subclasses choose the sampler.

    Args:
        objective: scores policies.
        seed: seeds the sampler (give each worker of a shared study its own seed).
        storage: see :func:`agents.storage.open_storage`; a SQLite file in the working
            directory by default, ``":memory:"`` for none.
        study_name: the study to create or resume; by default derived from the sampler,
            the search space and the budget, so the same search resumes the same study.
        warm_start: enqueue the integer program's policy and the uniform baselines that fit
            (``True``), these policies (a sequence), or nothing (``False``). Only a new
            study is warm-started.
        objectives: cost metrics minimised next to accuracy (multi-objective samplers
            only); the budget's metrics plus ``size`` and ``bitops`` by default.
        heartbeat_interval: see :func:`agents.storage.open_storage`.
        kl_weight: the sampler maximises ``accuracy - kl_weight * kl`` (KL divergence from
            the float model's outputs). Post-training quantization has a cliff: many
            policies score chance accuracy, a plateau that gives the sampler no direction,
            while their KL still tells "less broken" from "more broken". The small weight
            leaves the order of working policies to accuracy. Records, ``best`` and the
            Pareto front always use accuracy itself.
    """

    name = "optuna"
    multi_objective = False

    def __init__(
        self,
        objective: Objective,
        *,
        seed: int = 0,
        storage: str | BaseStorage | None = None,
        study_name: str | None = None,
        warm_start: bool | Sequence[Policy] = True,
        objectives: Sequence[str] | None = None,
        heartbeat_interval: int | None = 30,
        kl_weight: float = 0.01,
    ) -> None:
        super().__init__(objective, seed=seed)
        if kl_weight < 0:
            raise ConfigError(f"kl_weight must be >= 0, got {kl_weight}")
        self.kl_weight = float(kl_weight)
        self.codec = PolicyCodec(self.space)
        self.distributions = {k: IntDistribution(0, n - 1) for k, n in self.codec.ranges.items()}
        self.cost_objectives = self._cost_objectives(objectives)
        self.storage = open_storage(storage, heartbeat_interval=heartbeat_interval)
        self.study_name = study_name or self.default_study_name()
        directions = ["maximize"] + ["minimize"] * len(self.cost_objectives)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(
            storage=self.storage, sampler=self.make_sampler(), study_name=self.study_name,
            directions=directions, load_if_exists=True,
        )
        if list(self.study.directions) != [optuna.study.StudyDirection[d.upper()] for d in directions]:
            raise ConfigError(
                f"study {self.study_name!r} exists with other objectives ({len(self.study.directions)}); "
                "pass another study_name or the same objectives"
            )
        self._pending: dict[str, list[Trial]] = {}
        if warm_start is not False and not self.study.get_trials(deepcopy=False):
            policies = warm_start_policies(objective) if warm_start is True else list(warm_start)
            self.enqueue(policies)
        self.sync()

    # configuration -------------------------------------------------------------------
    def make_sampler(self) -> optuna.samplers.BaseSampler:
        """The Optuna sampler (subclasses override)."""
        return optuna.samplers.RandomSampler(seed=self.seed)

    def _cost_objectives(self, objectives: Sequence[str] | None) -> tuple[str, ...]:
        if not self.multi_objective:
            if objectives:
                raise ConfigError(f"{self.name} optimises accuracy alone; objectives={list(objectives)} needs nsga2")
            return ()
        wanted = tuple(objectives) if objectives else (*self.objective.bound.metrics, "size", "bitops")
        known = self.objective.cost_model.metrics
        bad = [m for m in wanted if m not in known]
        if bad:
            raise ConfigError(f"unknown cost objectives {bad}; this cost model prices {list(known)}")
        return tuple(dict.fromkeys(wanted))

    def default_study_name(self) -> str:
        key = json.dumps([self.space.to_dict(), list(self.objective.limits), self.cost_objectives], sort_keys=True)
        return f"automl-{self.label}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"

    @property
    def label(self) -> str:
        return self.name

    # warm start ----------------------------------------------------------------------
    def enqueue(self, policies: Sequence[Policy]) -> int:
        """Queue ``policies`` as the next trials; returns how many were expressible and queued."""
        queued = 0
        for policy in policies:
            params = self.codec.encode(policy)
            if params is not None:
                self.study.enqueue_trial(params, skip_if_exists=True)
                queued += 1
        return queued

    # study bookkeeping ---------------------------------------------------------------
    def sync(self) -> None:
        """Load every finished trial's record from the study (this and other workers')."""
        records = {}
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            text = t.user_attrs.get(RECORD_ATTR)
            if text is not None:
                records[t.number] = TrialRecord.from_json(text)
        self.records = [records[n] for n in sorted(records)]

    def _rank(self, number: int) -> int:
        """Trials before ``number`` that spend the budget (all but failed ones and cache hits)."""
        return sum(
            1 for t in self.study.get_trials(deepcopy=False)
            if t.number < number and t.state != TrialState.FAIL and not t.user_attrs.get(CACHE_HIT_ATTR)
        )

    def _next_trial(self, n_evaluations: int) -> Trial | None:
        fail_stale(self.study, self.storage)
        active = [t for t in self.study.get_trials(deepcopy=False, states=_ACTIVE) if not t.user_attrs.get(CACHE_HIT_ATTR)]
        if len(active) >= n_evaluations:
            return None
        with quiet_optuna():
            trial = self.study.ask(self.distributions)
        if self._rank(trial.number) >= n_evaluations:
            trial.set_user_attr(SURPLUS_ATTR, True)
            self.study.tell(trial, state=TrialState.FAIL)
            return None
        return trial

    def _complete(self, trial: Trial, record: TrialRecord) -> TrialRecord:
        record = replace(record, number=trial.number)
        for metric, limit in self.objective.limits:
            trial.set_constraint(metric, record.cost(metric) / limit - 1.0)
        trial.set_user_attr(RECORD_ATTR, record.to_json())
        if record.cache_hit:
            trial.set_user_attr(CACHE_HIT_ATTR, True)
        values = [self.score(record)] + [record.cost(m) for m in self.cost_objectives]
        self.study.tell(trial, values if self.multi_objective else values[0])
        return record

    def score(self, record: TrialRecord) -> float:
        """What the sampler maximises for ``record`` (see ``kl_weight``)."""
        kl = record.metrics.kl
        return record.accuracy - self.kl_weight * (kl if math.isfinite(kl) else 1e3)

    # ask / tell ----------------------------------------------------------------------
    def ask(self) -> Policy:
        with quiet_optuna():
            trial = self.study.ask(self.distributions)
        policy = self.codec.decode(trial.params)
        self._pending.setdefault(policy.key(), []).append(trial)
        return policy

    def tell(self, policy: Policy, record: TrialRecord) -> None:
        queue = self._pending.get(policy.key())
        if not queue:
            raise ConfigError("tell() got a policy this searcher did not ask for (or was told already)")
        trial = queue.pop(0)
        done = self._complete(trial, record)
        self.records = [r for r in self.records if r.number != record.number] + [done]

    # driver --------------------------------------------------------------------------
    def run(self, n_evaluations: int, callbacks: Sequence[Callback] = ()) -> SearchResult:
        """Run until the study holds ``n_evaluations`` distinct evaluated trials (counting other workers').

        A trial whose policy was evaluated before is completed with the cached result
        (so the sampler learns it), tagged ``cache_hit`` and not counted.
        """
        check_evaluations(n_evaluations)
        start = time.perf_counter()
        self.stop_reason = ""
        self.sync()
        for cb in callbacks:
            cb.on_start(self, self.objective)
        while True:
            trial = self._next_trial(n_evaluations)
            if trial is None:
                break
            policy = self.codec.decode(trial.params)
            with heartbeat(self.storage, trial._trial_id):
                record = self.objective(policy, number=trial.number, searcher=self.label)
            record = self._complete(trial, record)
            self.records.append(record)
            if not notify_trial(callbacks, record):
                self.stop_reason = "a callback asked to stop"
                break
            if not self.count_duplicate(record):
                break
        self.sync()
        return self.finish(start, callbacks)


class TPESearcher(OptunaSearcher):
    """Multivariate TPE with the constant liar (parallel workers do not propose the same point).

    Args:
        n_startup_trials: random trials before TPE models the study (warm-start trials count).
        **kwargs: see :class:`OptunaSearcher`.
    """

    name = "tpe"

    def __init__(self, objective: Objective, *, n_startup_trials: int = 10, **kwargs) -> None:
        self.n_startup_trials = n_startup_trials
        super().__init__(objective, **kwargs)

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(
            seed=self.seed, n_startup_trials=self.n_startup_trials, multivariate=True, constant_liar=True,
        )


class NSGA2Searcher(OptunaSearcher):
    """NSGA-II on accuracy against cost metrics: the study's trials form a Pareto front.

    Args:
        population_size: individuals per generation (small, so 100-200 evaluations see
            several generations).
        **kwargs: see :class:`OptunaSearcher` (``objectives`` picks the cost metrics).
    """

    name = "nsga2"
    multi_objective = True

    def __init__(self, objective: Objective, *, population_size: int = 20, **kwargs) -> None:
        self.population_size = population_size
        super().__init__(objective, **kwargs)

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.NSGAIISampler(seed=self.seed, population_size=self.population_size)


class GPSearcher(OptunaSearcher):
    """Gaussian-process Bayesian optimisation (best for small spaces: its cost grows with trials x parameters)."""

    name = "gp"

    def __init__(self, objective: Objective, *, n_startup_trials: int = 10, **kwargs) -> None:
        self.n_startup_trials = n_startup_trials
        super().__init__(objective, **kwargs)

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        with quiet_optuna():
            return optuna.samplers.GPSampler(
                seed=self.seed, n_startup_trials=self.n_startup_trials, deterministic_objective=True,
            )


class CmaEsSearcher(OptunaSearcher):
    """CMA-ES with margin (for integer parameters); needs the ``cmaes`` package."""

    name = "cmaes"

    def __init__(self, objective: Objective, *, n_startup_trials: int = 1, **kwargs) -> None:
        try:
            import cmaes  # noqa: F401
        except ImportError as exc:
            raise ConfigError("the cmaes searcher needs the cmaes package: pip install cmaes") from exc
        self.n_startup_trials = n_startup_trials
        super().__init__(objective, **kwargs)

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.CmaEsSampler(
            seed=self.seed, n_startup_trials=self.n_startup_trials, with_margin=True, warn_independent_sampling=False,
        )
