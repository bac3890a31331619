"""The search loop of ``automl search`` and ``automl.search()``.

Builds the problem once (task -> analysis -> space -> cost model -> budget -> evaluator),
hands it to a searcher, and attaches the run's callbacks: a JSON-lines journal of every
evaluated policy (the run's own record, written before anything else), MLflow logging and
a progress bar. Everything a user could get wrong is checked before evaluation work starts.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agents.base import Callback, Searcher
from agents.objective import Objective
from agents.records import SearchResult, TrialRecord
from automl.budget import BoundBudget, Budget
from automl.cache import CachedEvaluator
from automl.config import SearchConfig
from automl.cost import CostModel
from automl.cost.profiles import load_profiles
from automl.errors import ConfigError
from automl.evaluate import EvalConfig, Evaluator, Problem
from automl.loading import load_task
from automl.task import Task
from automl.timing import StageTimer, pin_threads
from automl.tracking import MlflowTracker, artifact_root, check_tracking, default_tracking_uri
from search_spaces.space import SpaceConfig

JOURNAL, STATE, CONFIG = "trials.jsonl", "state.json", "config.json"


def searcher_names() -> tuple[str, ...]:
    from agents import SEARCHERS

    return tuple(SEARCHERS)


def make_searcher(name: str, objective: Objective, config: SearchConfig, run_dir: Path) -> Searcher:
    """The searcher ``name`` with the run's Optuna storage or agent checkpoint place."""
    from agents import searcher_class
    from agents.optuna_search import OptunaSearcher
    from agents.rl import RLSearcher

    cls = searcher_class(name)
    kwargs: dict[str, Any] = {}
    if issubclass(cls, OptunaSearcher):
        kwargs["storage"] = config.storage or f"sqlite:///{(run_dir / 'optuna.db').resolve()}"
        kwargs["study_name"] = f"automl-{run_dir.name}"
    elif issubclass(cls, RLSearcher):
        kwargs["checkpoint_dir"] = run_dir / "agent"
    return cls(objective, seed=config.seed, **kwargs)


# callbacks -------------------------------------------------------------------------------
class Journal(Callback):
    """Appends every new record to ``trials.jsonl`` (flushed and fsynced per line)."""

    def __init__(self, path: Path, known: set[int]) -> None:
        self.path = path
        self.known = set(known)

    def on_trial(self, record: TrialRecord) -> bool:
        if record.number not in self.known:
            with self.path.open("a") as fh:
                fh.write(record.to_json() + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            self.known.add(record.number)
        return True


def read_journal(path: Path) -> list[TrialRecord]:
    """Records of a journal; a torn last line (crash mid-write) is ignored."""
    if not path.exists():
        return []
    out: dict[int, TrialRecord] = {}
    for line in path.read_text().splitlines():
        try:
            record = TrialRecord.from_json(line)
        except (json.JSONDecodeError, KeyError):
            continue
        out.setdefault(record.number, record)
    return [out[n] for n in sorted(out)]


def trial_metrics(record: TrialRecord) -> dict[str, float]:
    c, m = record.costs, record.metrics
    out = {
        "accuracy": m.accuracy, "loss": m.loss, "kl": m.kl, "size_bytes": c.size_bytes, "size_kb": c.size_bytes / 1024,
        "macs_m": c.macs / 1e6, "bitops_g": c.bitops / 1e9, "peak_act_kb": c.peak_act_bytes / 1024,
        "feasible": float(record.feasible), "repaired": float(record.repaired),
        "mean_bits": record.policy.mean_weight_bits(), "sparsity": record.policy.channel_sparsity(),
        "eval_seconds": record.seconds,
    }
    for name, ms in c.latency_ms:
        out[f"latency_ms.{name}"] = ms
    return out


class MlflowLogging(Callback):
    """One nested child run per evaluated policy, written in the background."""

    def __init__(self, tracker: MlflowTracker, logged: set[int], fidelity: int) -> None:
        self.tracker = tracker
        self.logged = set(logged)
        self.fidelity = fidelity

    def on_trial(self, record: TrialRecord) -> bool:
        if record.number in self.logged:
            return True
        lp = record.policy
        params = {
            "searcher": record.searcher, "fidelity": self.fidelity, "mean_bits": f"{lp.mean_weight_bits():.3f}",
            "sparsity": f"{lp.channel_sparsity():.3f}",
            "mean_act_bits": f"{sum(p.act_bits for _, p in lp) / len(lp):.3f}", "repaired": record.repaired,
        }
        tags = {"feasible": str(record.feasible).lower(), "repaired": str(record.repaired).lower(), "searcher": record.searcher}
        if record.repair is not None:
            tags["repair"] = json.dumps(record.repair.to_dict())[:4000]
        self.tracker.log_trial(record.number, trial_metrics(record), params, tags, lp.to_json())
        self.logged.add(record.number)
        return True


class Progress(Callback):
    """A live progress bar: distinct evaluations done/total, cache hits, evaluation seconds, best accuracy, ETA."""

    def __init__(self, total: int, done: int, best: float | None) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=done, desc="search", unit="eval", file=sys.stderr, dynamic_ncols=True)
        self.best = best
        self.hits = 0
        self.eval_seconds = 0.0

    def on_trial(self, record: TrialRecord) -> bool:
        if record.feasible and not record.metrics.stopped_early and (self.best is None or record.accuracy > self.best):
            self.best = record.accuracy
        if record.cache_hit:
            self.hits += 1
        else:
            self.eval_seconds += record.metrics.seconds
        self.bar.set_postfix(best=f"{self.best:.4f}" if self.best is not None else "-", hits=self.hits,
                             eval_s=f"{self.eval_seconds:.0f}", refresh=False)
        self.bar.update(0 if record.cache_hit else 1)
        return True

    def on_end(self, result: SearchResult) -> None:
        self.bar.close()


# the session -----------------------------------------------------------------------------
@dataclass
class Session:
    """Everything one search needs, built and checked before any evaluation."""

    config: SearchConfig
    run_dir: Path
    problem: Problem
    cost_model: CostModel
    bound: BoundBudget
    evaluator: CachedEvaluator
    objective: Objective
    tracker: MlflowTracker | None
    timer: StageTimer


def _space_config(config: SearchConfig) -> SpaceConfig:
    return SpaceConfig(
        weight_bits=tuple(config.weight_bits), act_bits=tuple(config.act_bits), n_groups=config.n_groups,
        max_sparsity=config.max_sparsity, allow_pruning=config.allow_pruning,
    )


def resolve_run_dir(config: SearchConfig) -> tuple[SearchConfig, Path, bool]:
    """The run directory; on ``--resume`` the saved config (with new evaluations/threads)."""
    base = Path(config.output)
    if not config.resume:
        run_dir = base / "runs" / time.strftime("%Y%m%d-%H%M%S")
        while run_dir.exists():
            run_dir = run_dir.with_name(run_dir.name + "x")
        return config, run_dir, False
    candidates = [Path(config.resume), base / "runs" / config.resume]
    run_dir = next((p for p in candidates if (p / CONFIG).exists()), None)
    if run_dir is None:
        for state in sorted(base.glob(f"runs/*/{STATE}")):
            if json.loads(state.read_text()).get("parent_run_id") == config.resume:
                run_dir = state.parent
    if run_dir is None:
        raise ConfigError(
            f"cannot resume {config.resume!r}: no run directory or MLflow run id of that name under {base}/runs. "
            "Pass the run directory printed by the interrupted search."
        )
    saved = SearchConfig.from_dict(json.loads((run_dir / CONFIG).read_text()))
    return replace(saved, evaluations=max(config.evaluations, 1), threads=config.threads, resume=config.resume), run_dir, True


def build_session(
    config: SearchConfig, task: Task | None = None, track: bool = True, timer: StageTimer | None = None
) -> tuple[Session, bool]:
    timer = timer or StageTimer()
    config, run_dir, resuming = resolve_run_dir(config)
    uri = config.tracking_uri or default_tracking_uri(config.output)
    if track:
        check_tracking(uri)  # before any evaluation work
    budget = Budget.parse(list(config.budget))
    if config.searcher not in searcher_names():
        raise ConfigError(f"unknown searcher {config.searcher!r}; choose one of {sorted(searcher_names())}")
    # Opening the MLflow store (import, schema migrations) is Python work that overlaps with
    # building the evaluator, which spends its time in torch kernels that release the GIL.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-open")
    opening = pool.submit(_open_tracker, uri, config, timer) if track else None
    try:
        return _build(config, budget, run_dir, resuming, task, timer, opening)
    finally:
        pool.shutdown(wait=True)


def _open_tracker(uri: str, config: SearchConfig, timer: StageTimer) -> MlflowTracker:
    start = time.perf_counter()
    tracker = MlflowTracker(uri, config.experiment, artifact_root(config.output))
    timer.add("mlflow_open", time.perf_counter() - start, within="overlapped")
    return tracker


def _build(
    config: SearchConfig, budget: Budget, run_dir: Path, resuming: bool, task: Task | None, timer: StageTimer,
    opening: Future | None,
) -> tuple[Session, bool]:
    pin_threads(config.threads)
    with timer.stage("task"):  # for a reference task: load (or train) and check the checkpoint
        task = task or load_task(config.task, threads=config.threads)
    with timer.stage("analysis"):
        problem = Problem.from_task(task, _space_config(config))
    with timer.stage("cost_model"):
        profiles = load_profiles(tuple(dict.fromkeys([*config.profiles, *budget.profile_refs])))
        cost_model = CostModel(problem.analysis, problem.space, profiles)
        bound = budget.bind(cost_model)
    run_dir.mkdir(parents=True, exist_ok=True)
    with timer.stage("evaluator"):  # BatchNorm folding, weight banks, calibration, the staged trace
        evaluator = CachedEvaluator(Evaluator(problem, eval_config(config)), path=run_dir / "cache.sqlite")
    objective = Objective(evaluator, cost_model, bound)
    with timer.stage("mlflow"):  # only the wait for the store opened in the background
        tracker = opening.result() if opening is not None else None
    return Session(config, run_dir, problem, cost_model, bound, evaluator, objective, tracker, timer), resuming


def eval_config(config: SearchConfig) -> EvalConfig:
    """The evaluator's settings from the search's ``eval_*`` options."""
    return EvalConfig(
        fidelity=config.fidelity, seed=config.seed, cache_mb=config.eval_cache_mb,
        early_stop=config.eval_early_stop, early_stop_delta=config.eval_early_stop_delta,
    )


def _start_tracking(session: Session, resuming: bool) -> None:
    tracker, cfg = session.tracker, session.config
    if tracker is None:
        return
    state_path = session.run_dir / STATE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if resuming and state.get("parent_run_id"):
        tracker.attach_parent(state["parent_run_id"])
        tracker.mark_unfinished_children()
        return
    tracker.start_parent(
        f"{cfg.searcher}-{session.run_dir.name}", cfg.to_dict(),
        {"automl.run_dir": str(session.run_dir.resolve()), "searcher": cfg.searcher, "budget": ", ".join(cfg.budget)},
    )
    state["parent_run_id"] = tracker.parent_id
    state_path.write_text(json.dumps(state))
    ev: Evaluator = session.evaluator.evaluator  # type: ignore[assignment]
    with session.timer.stage("baseline"):  # the float model on val and test (also fills the split caches)
        base_val, base_test = ev.baseline("val"), ev.baseline("test")
    fc = session.cost_model.float_costs()
    tracker.log_parent_metrics(
        {"float_val_accuracy": base_val.accuracy, "float_test_accuracy": base_test.accuracy,
         "float_size_kb": fc.size_bytes / 1024, "float_bitops_g": fc.bitops / 1e9}
    )
    tracker.log_parent_json(session.problem.space.to_dict(), "search_space.json")
    tracker.log_parent_json(
        {"budget": session.bound.budget.to_dict(), "limits": dict(session.bound.limits), "float_costs": fc.to_dict()},
        "budget.json",
    )
    tracker.log_parent_json(cfg.to_dict(), "config.json")
    tracker.client.log_text(tracker.parent_id, session.problem.analysis.report(), "model_report.txt")


def resume_searcher(searcher: Searcher, journal: list[TrialRecord], single_worker: bool) -> None:
    """Bring a searcher rebuilt after an interruption back to where it stopped.

    An Optuna study is its own record: trials left RUNNING by a crash of this (only)
    worker are marked failed so they are neither counted nor waited for. Other searchers
    get every journal record they do not hold yet.
    """
    from agents.optuna_search import OptunaSearcher

    if isinstance(searcher, OptunaSearcher):
        if single_worker:
            from optuna.trial import TrialState

            for t in searcher.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                searcher.study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        searcher.sync()
        return
    restore_records(searcher, journal)


def restore_records(searcher: Searcher, journal: list[TrialRecord]) -> None:
    """Give a resumed searcher every journal record it does not already hold."""
    held = {r.number for r in searcher.records}
    missing = [r for r in journal if r.number not in held]
    for record in missing:
        searcher.records.append(record)
        searcher.tell(record.proposed, record)
    rng_replay = getattr(searcher, "rng", None)
    if rng_replay is not None and missing:
        for _ in range(len(missing)):  # continue the random sequence where it stopped
            searcher.space.sample(searcher.rng)  # type: ignore[attr-defined]
    searcher.records.sort(key=lambda r: r.number)


def run_search(config: SearchConfig, task: Task | None = None, callbacks: Sequence[Callback] = (), quiet: bool = False) -> SearchResult:
    """Run (or resume) one search and return its result; see :class:`SearchConfig`."""
    session, resuming = build_session(config, task)
    cfg, run_dir, timer = session.config, session.run_dir, session.timer
    (run_dir / CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2))
    tracker = session.tracker
    assert tracker is not None
    with timer.stage("mlflow"):
        _start_tracking(session, resuming)
    timer.add("mlflow", -timer.seconds.get("baseline", 0.0))  # the baselines are their own stage
    with timer.stage("warm_start"):  # the searcher's set-up: Optuna study, integer-program warm start
        searcher = make_searcher(cfg.searcher, session.objective, cfg, run_dir)
    if resuming:
        resume_searcher(searcher, read_journal(run_dir / JOURNAL), single_worker=cfg.workers == 1)
    done = {r.number for r in searcher.records}
    logged = set(tracker.logged_trials())
    cbs: list[Callback] = [Journal(run_dir / JOURNAL, set(read_journal_numbers(run_dir / JOURNAL))), MlflowLogging(tracker, logged, cfg.fidelity)]
    for record in searcher.records:  # trials evaluated before a crash but not yet journaled/logged
        for cb in cbs:
            cb.on_trial(record)
    best = max((r.accuracy for r in searcher.records if r.feasible), default=None)
    if not quiet:
        cbs.append(Progress(cfg.evaluations, len(done), best))
        print(f"run directory: {run_dir}  (resume with: automl search --resume {run_dir})", file=sys.stderr)
    cbs.extend(callbacks)
    status = "FAILED"
    try:
        with timer.stage("search"):
            result = searcher.run(cfg.evaluations, cbs)
        timer.add("evaluations", result.eval_seconds, within="search")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        with timer.stage("mlflow"):
            tracker.flush()
        if status != "FINISHED":
            tracker.finish_parent(status)
            tracker.close()
    from automl.results import finish_search

    finish_search(session, result, quiet=quiet)
    tracker.finish_parent("FINISHED")
    tracker.close()
    return result


def read_journal_numbers(path: Path) -> list[int]:
    return [r.number for r in read_journal(path)]


def search(task: Task, budget: str | Sequence[str] = ("size<=0.125x",), searcher: str | None = None, **options: Any) -> SearchResult:
    """Python API of ``automl search``: the same options, a :class:`SearchResult` back.

    Example::

        import automl
        result = automl.search(my_task, budget=["size<=0.125x"], searcher="tpe", evaluations=50)
        print(result.best.policy, result.best.accuracy)
    """
    budgets = (budget,) if isinstance(budget, str) else tuple(budget)
    values: dict[str, Any] = {"budget": budgets, **options}
    if searcher is not None:
        values["searcher"] = searcher
    quiet = bool(values.pop("quiet", False))
    return run_search(SearchConfig.from_dict({**SearchConfig(task=task.name).to_dict(), **values}), task=task, quiet=quiet)
