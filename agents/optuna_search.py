"""Optuna samplers as searchers: TPE, NSGA-II (Pareto front), GP and CMA-ES.

A policy is a compact vector of integer parameters (:class:`agents.codec.PolicyCodec`: one
sparsity per coupled group, weight and activation bits per layer, one importance spread of
channel-group bits for the whole network; 52 parameters for ResNet-20). Every trial of the
study stores its :class:`~agents.records.TrialRecord` as a user attribute, so

- re-opening a study (same storage and study name) resumes it: finished trials are loaded
  into the result, never evaluated again, and only the missing evaluations run;
- several workers (processes, machines) running the same searcher on one storage share the
  study: the first ``n_evaluations`` trials by trial number form the search, a trial asked
  beyond them (two workers racing for the last slot) is marked failed with the user
  attribute ``surplus`` before anything is evaluated, so no trial is lost or duplicated.

**The budget is visible to the sampler.** Each trial carries the *proposed* policy's
constraint values (``value / limit - 1`` per limit, :meth:`optuna.trial.Trial.set_constraint`,
which Optuna 5's TPE, NSGA-II and GP samplers read in place of ``constraints_func``), even
when the objective's repair made the evaluated policy feasible: the sampler ranks an
over-budget proposal below every feasible one by its excess and learns where the boundary
is, while the record keeps the repaired policy's result (a repaired trial also carries the
user attributes ``repaired`` and ``repair``, and the runner tags it in MLflow). CMA-ES has no
constraint handling: it is told ``score - excess`` for an over-budget proposal instead.

**Multi-fidelity** (``stage_fidelity``): every proposal is first scored at a cheap fidelity
and reported to the study (:meth:`optuna.trial.Trial.report`); Optuna's
:class:`~optuna.pruners.SuccessiveHalvingPruner` promotes the better share to the search
fidelity and the rest end ``PRUNED`` (the sampler still learns from their cheap score).
Both stages are evaluations: the objective counts them per fidelity, the record's
``seconds`` holds both, and the trial's ``stages`` user attribute lists each. A pruned
trial's record keeps the cheap metrics, so it never competes for ``best``.
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import time
from collections.abc import Sequence
from dataclasses import replace

import optuna
from optuna.distributions import IntDistribution
from optuna.storages import BaseStorage
from optuna.trial import Trial, TrialState

from agents.base import Callback, Searcher, check_evaluations, notify_trial
from agents.baselines import UniformChoice, feasible_uniform
from agents.codec import PolicyCodec
from agents.ilp import ILPSearcher, SweepFeed
from agents.objective import Objective
from agents.records import SearchResult, TrialRecord
from agents.storage import batched_params, fail_stale, heartbeat, open_storage, quiet_optuna
from automl import faults
from automl.errors import AutoMLError, ConfigError
from automl.problem.cache import evaluator_fidelity
from automl.problem.ilp import solve_ilp
from search_spaces.policy import Policy

RECORD_ATTR = "record"
SURPLUS_ATTR = "surplus"
WARM_ATTR = "warm_start"
STAGES_ATTR = "stages"
CACHE_HIT_ATTR = "cache_hit"
WORKER_ATTR = "worker"  # host, pid, start time of the process running the trial (automl.runs.workers)
_ACTIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
_DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def warm_start_policies(objective: Objective, ilp_time_limit: float = 60.0) -> list[Policy]:
    """The integer program's optimum and, per weight bit-width, the least-pruned uniform policy
    that fits, with the widest activations that still fit at that pruning.

    Activations are free under a size budget, so tying them to the weight bits (W2A2) would
    seed the search with a needlessly broken policy; the fair uniform baseline
    (:func:`agents.baselines.uniform_combinations`) takes them independently, and so does this.
    """
    out: list[Policy] = []
    try:
        out.append(solve_ilp(objective.space, objective.cost_model, objective.bound, objective.sensitivities,
                             time_limit=ilp_time_limit))
    except AutoMLError:
        pass  # no proxy optimum to seed with; the uniform baselines still are
    return out + uniform_warm_policies(objective)


def uniform_warm_policies(objective: Objective) -> list[Policy]:
    """Per weight bit-width, widest first, the least-pruned uniform policy that fits (widest activations)."""
    best: dict[int, UniformChoice] = {}
    for choice in feasible_uniform(objective.space, objective.cost_model, objective.bound):
        held = best.get(choice.weight_bits)
        if held is None or (choice.sparsity, -choice.act_bits) < (held.sparsity, -held.act_bits):
            best[choice.weight_bits] = choice
    return [best[w].policy for w in sorted(best, reverse=True)]


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
        spread: the codec's channel-group spread (``network``, the default, ``group``,
            ``layer`` or ``none``; see :class:`~agents.codec.PolicyCodec`).
        stage_fidelity: score each proposal at this fidelity first and promote the better
            ``1 / reduction_factor`` to the evaluator's own fidelity (``None``: one stage).
            Warm-start trials are always promoted.
        reduction_factor: the successive-halving pruner's factor (2 promotes half).
    """

    name = "optuna"
    multi_objective = False
    supports_constraints = True
    worker: dict | None = None  # set by automl.runs.workers: recorded on every trial this process runs

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
        spread: str = "network",
        stage_fidelity: int | None = None,
        reduction_factor: int = 2,
    ) -> None:
        super().__init__(objective, seed=seed)
        if kl_weight < 0:
            raise ConfigError(f"kl_weight must be >= 0, got {kl_weight}")
        if reduction_factor < 2:
            raise ConfigError(f"reduction_factor must be >= 2, got {reduction_factor}")
        self.kl_weight = float(kl_weight)
        self.stage_fidelity = self._check_stage(stage_fidelity)
        self.codec = PolicyCodec(self.space, spread=spread)
        self.distributions = {k: IntDistribution(0, n - 1) for k, n in self.codec.ranges.items()}
        self.cost_objectives = self._cost_objectives(objectives)
        self.storage = open_storage(storage, heartbeat_interval=heartbeat_interval)
        self.study_name = study_name or self.default_study_name()
        directions = ["maximize"] + ["minimize"] * len(self.cost_objectives)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=reduction_factor)
        self.study = optuna.create_study(
            storage=self.storage, sampler=self.make_sampler(), study_name=self.study_name,
            directions=directions, load_if_exists=True, pruner=pruner,
        )
        self._study_id = self.storage.get_study_id_from_name(self.study_name)
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

    def _check_stage(self, stage: int | None) -> int | None:
        if stage is None:
            return None
        full = evaluator_fidelity(self.objective.evaluator)
        if stage not in (1, 2, 3) or (full and stage >= full):
            raise ConfigError(
                f"stage_fidelity must be a fidelity below the search's ({full}), got {stage!r}; "
                "use None for a single-stage search"
            )
        return int(stage)

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
        """Queue ``policies`` as the next trials; returns how many were expressible and queued.

        The integer program's policy (one width per layer, one level per coupled group) and
        the uniform baselines are expressible exactly; others are not queued.
        """
        queued = 0
        for policy in policies:
            params = self.codec.encode(policy)
            if params is not None:
                self.study.enqueue_trial(params, user_attrs={WARM_ATTR: True}, skip_if_exists=True)
                queued += 1
        return queued

    # study bookkeeping ---------------------------------------------------------------
    def sync(self) -> None:
        """Load every finished trial's record from the study (this and other workers')."""
        records = {}
        for t in self.study.get_trials(deepcopy=False, states=_DONE):
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
        trial = self._ask_trial(n_evaluations)
        if self.worker:
            trial.set_user_attr(WORKER_ATTR, self.worker)
        if self._rank(trial.number) >= n_evaluations:
            trial.set_user_attr(SURPLUS_ATTR, True)
            self.study.tell(trial, state=TrialState.FAIL)
            return None
        return trial

    def _complete(self, trial: Trial, record: TrialRecord, pruned: bool = False) -> TrialRecord:
        record = replace(record, number=trial.number)
        proposed = record.costs if record.proposed == record.policy else self.objective.price(record.proposed)
        excess = 0.0
        for metric, limit in self.objective.limits:
            value = proposed.value(metric) / limit - 1.0
            excess += max(value, 0.0)
            trial.set_constraint(metric, value)
        if record.repair is not None:
            trial.set_user_attr("repaired", True)
            trial.set_user_attr("repair", {"steps": len(record.repair.steps), "proposed_excess": excess})
        trial.set_user_attr(RECORD_ATTR, record.to_json())
        if record.cache_hit:
            trial.set_user_attr(CACHE_HIT_ATTR, True)
        with quiet_optuna():
            if pruned:
                self.study.tell(trial, state=TrialState.PRUNED)
                faults.point("optuna-commit")
                return record
            score = self.score(record) - (0.0 if self.supports_constraints else excess)
            values = [score] + [record.cost(m) for m in self.cost_objectives]
            self.study.tell(trial, values if self.multi_objective else values[0])
        faults.point("optuna-commit")
        return record

    def score(self, record: TrialRecord) -> float:
        """What the sampler maximises for ``record`` (see ``kl_weight``)."""
        kl = record.metrics.kl
        return record.accuracy - self.kl_weight * (kl if math.isfinite(kl) else 1e3)

    # ask / tell ----------------------------------------------------------------------
    def _ask_trial(self, n_evaluations: int | None) -> Trial:
        """A new trial of the study (an enqueued one first); ``n_evaluations`` is the run's count, if any."""
        with quiet_optuna(), batched_params(self.storage):
            return self.study.ask(self.distributions)

    def ask(self) -> Policy:
        trial = self._ask_trial(None)
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
    def _evaluate_trial(self, trial: Trial) -> tuple[TrialRecord, bool]:
        """The trial's record and whether the pruner stopped it at the cheap stage."""
        policy = self.codec.decode(trial.params)
        if self.stage_fidelity is None:
            return self.objective(policy, number=trial.number, searcher=self.label), False
        cheap = self.objective(policy, number=trial.number, searcher=self.label, fidelity=self.stage_fidelity)
        stages = [{"fidelity": cheap.metrics.fidelity, "score": self.score(cheap), "seconds": cheap.seconds}]
        trial.report(self.score(cheap), step=1)
        if not trial.user_attrs.get(WARM_ATTR) and trial.should_prune():
            trial.set_user_attr(STAGES_ATTR, stages)
            return cheap, True
        full = self.objective(policy, number=trial.number, searcher=self.label)
        stages.append({"fidelity": full.metrics.fidelity, "score": self.score(full), "seconds": full.seconds})
        trial.set_user_attr(STAGES_ATTR, stages)
        return replace(full, seconds=cheap.seconds + full.seconds), False

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
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self._study_id, trial.number)
            with heartbeat(self.storage, trial_id):
                record, pruned = self._evaluate_trial(trial)
            record = self._complete(trial, record, pruned)
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


class ILPTPESearcher(TPESearcher):
    """The integer program's sweep first, then TPE on everything it evaluated: the default searcher.

    The proposals are, in order: the optima of :class:`agents.ilp.ILPSearcher`'s sweep (the
    program under the budget, then under every limit scaled down towards ``min_factor``),
    the uniform policies of the warm start (:func:`uniform_warm_policies`), then TPE's own.
    Where the sweep finds as many distinct optima as the search has evaluations (ResNet-20 at
    20 or 60), the search is the integer program's; where it runs dry (a small space, a large
    evaluation count) TPE spends the rest, modelling the study the sweep filled.

    Why this order (``benchmarks/search_quality.py``, fine-tuned test accuracy over seeds 0-2):
    the sweep's policies were above TPE's on average over the protocol's budgets
    (``docs/results/search_quality_full_rows.md``), while the separable proxy alone cannot reach
    the exhaustive optimum of a small space (its sweep stops after a handful of distinct
    optima) and TPE can.

    The sweep's programs are solved ahead on a thread (:class:`agents.ilp.SweepFeed`); each
    optimum is queued in the study when the next trial is asked, and a trial waits for it only
    when the study holds no queued trial, so the order is the same however fast the solver
    is. Only a process that is not a worker of :mod:`automl.runs.workers` runs the sweep; the study's ``ilp_sweep_done`` attribute marks its
    end, so a resumed search continues a cut-short sweep and skips what the study holds.

    Args:
        sweep: budget factors of the sweep; ``None``: the evaluation count :meth:`run` is given
            (16 under :meth:`ask`/:meth:`tell`).
        min_factor, time_limit, mip_rel_gap: see :class:`agents.ilp.ILPSearcher`.
        **kwargs: see :class:`TPESearcher` (``warm_start`` is this class's own sweep).
    """

    name = "ilp_tpe"
    SWEEP_DONE = "ilp_sweep_done"

    def __init__(self, objective: Objective, *, sweep: int | None = None, min_factor: float = 0.6,
                 time_limit: float = 10.0, mip_rel_gap: float = 1e-3, **kwargs) -> None:
        if "warm_start" in kwargs:
            raise ConfigError("ilp_tpe seeds its study with the integer program's sweep; it takes no warm_start "
                              "(use searcher tpe for a warm start of your own)")
        if sweep is not None and sweep < 1:
            raise ConfigError(f"sweep must be >= 1, got {sweep}")
        if not 0.0 < min_factor <= 1.0:
            raise ConfigError(f"min_factor must lie in (0, 1], got {min_factor}")
        self.sweep = sweep
        self._ilp_options = {"min_factor": min_factor, "time_limit": time_limit, "mip_rel_gap": mip_rel_gap}
        self._feed: SweepFeed | None = None
        self._seen: set[str] | None = None  # policy keys the study holds, once this process sweeps
        super().__init__(objective, warm_start=False, **kwargs)

    def _sweeping(self, n_evaluations: int | None) -> bool:
        """Start the sweep on the first ask of the process that runs it; whether it is still on."""
        if self._seen is None:
            if self.worker or self.study.user_attrs.get(self.SWEEP_DONE):
                self._seen = set()
                return False
            self._seen = {self.codec.decode(t.params or t.system_attrs.get("fixed_params", {})).key()
                          for t in self.study.get_trials(deepcopy=False)
                          if t.params or t.system_attrs.get("fixed_params")}
            n = self.sweep or n_evaluations or 16
            self._feed = ILPSearcher(self.objective, sweep=n, **self._ilp_options).feed()
        return self._feed is not None

    def _queued(self) -> bool:
        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def _fill(self, n_evaluations: int | None, whole: bool = False) -> None:
        """Queue every optimum solved so far, waiting for one only when nothing is queued
        (``whole``: wait for the whole sweep)."""
        if not self._sweeping(n_evaluations):
            return
        block = whole or not self._queued()
        while self._sweeping(n_evaluations):
            try:
                item = self._feed.get(block=block)
            except queue.Empty:
                return
            if item is None:
                self._feed.stop()
                self._feed = None
                self._enqueue_new(uniform_warm_policies(self.objective))
                self.study.set_user_attr(self.SWEEP_DONE, True)
                return
            if item[1] is not None and self._enqueue_new([item[1]]) and not whole:
                block = False

    def prime(self, n_evaluations: int) -> None:
        """Queue the whole sweep now: the coordinator of several workers (:mod:`automl.runs.workers`)
        evaluates nothing itself, so it publishes the sweep before the workers start asking."""
        self._fill(n_evaluations, whole=True)
        self.close()

    def _enqueue_new(self, policies: Sequence[Policy]) -> int:
        fresh = [p for p in policies if p.key() not in self._seen]
        self._seen.update(p.key() for p in fresh)
        return self.enqueue(fresh)

    def _ask_trial(self, n_evaluations: int | None) -> Trial:
        self._fill(n_evaluations)
        return super()._ask_trial(n_evaluations)  # a queued trial first (Optuna fits no model for it)

    def run(self, n_evaluations: int, callbacks: Sequence[Callback] = ()) -> SearchResult:
        try:
            return super().run(n_evaluations, callbacks)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the sweep's solver thread (a later run continues the sweep from the study)."""
        if self._feed is not None:
            self._feed.stop()
            self._feed = None
        self._seen = None


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
    """CMA-ES with margin (for integer parameters); needs the ``cmaes`` package.

    It has no constraint handling, so an over-budget proposal is told ``score - excess``
    (its summed relative excess over the limits).
    """

    name = "cmaes"
    supports_constraints = False

    def __init__(self, objective: Objective, *, n_startup_trials: int = 1, **kwargs) -> None:
        try:
            import cmaes  # noqa: F401
        except ImportError as exc:
            raise ConfigError("the cmaes searcher needs the cmaes package: pip install cmaes") from exc
        self.n_startup_trials = n_startup_trials
        super().__init__(objective, **kwargs)

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        with quiet_optuna():
            return optuna.samplers.CmaEsSampler(
                seed=self.seed, n_startup_trials=self.n_startup_trials, with_margin=True, warn_independent_sampling=False,
            )
