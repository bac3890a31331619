"""The search loop of ``automl search`` and ``automl.search()``.

Builds the problem once (task -> analysis -> space -> cost model -> budget -> evaluator),
hands it to a searcher, and attaches the run's callbacks: a JSON-lines journal of every
evaluated policy (the run's own record, written before anything else), MLflow logging and
a progress bar. Everything a user could get wrong is checked before evaluation work starts.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import importlib
import json
import os
import shutil
import sys
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agents.base import Callback, Searcher
from agents.objective import Objective
from agents.records import SearchResult, TrialRecord
from automl import faults
from automl.cost import CostModel
from automl.cost.profiles import check_profile_scales
from automl.cost.units import cost_metrics, limit_metrics, shown
from automl.errors import ConfigError, TrackingError
from automl.evaluation.evaluator import Evaluator, Problem
from automl.evaluation.task import Task
from automl.export.ampq import container_bytes
from automl.export.ort_profile import resolve_profiles
from automl.problem.budget import BoundBudget, Budget
from automl.problem.cache import CachedEvaluator
from automl.runs.config import DEFAULT_BUDGET, SearchConfig, dotted_keys
from automl.runs.console import budget_line, command_prefix, stage
from automl.runs.lifecycle import (
    RUN_DIR_TAG,
    Terminated,
    close_if_stale,
    handle_termination,
    owner_alive,
    raise_if_terminated,
    remove_owner,
    write_owner,
)
from automl.runs.loading import check_task_data, load_task
from automl.runs.overlap import SpeculativeFinetune, overlap_reason
from automl.runs.resume import (
    CONFIG,
    JOURNAL,
    STATE,
    RunPlan,
    check_writable,
    disk_error,
    find_run_dir,
    plan_run,
    read_journal,
    repair_torn_tail,
)
from automl.runs.searcher_options import check_searcher_options
from automl.runs.uris import check_storage, check_tracking_uri, make_sqlite_parent
from automl.runs.workers import check_workers, local_devices, run_searcher, start_workers, stop_workers
from automl.timing import StageTimer, pin_threads
from automl.tracking.tracker import FAILURES_FILE, MlflowTracker, artifact_root, default_tracking_uri
from automl.tracking.ui import repair_summary

__all__ = ["CONFIG", "JOURNAL", "STATE", "read_journal", "run_search", "search"]


def searcher_names() -> tuple[str, ...]:
    from agents import SEARCHERS

    return tuple(SEARCHERS)


def make_searcher(name: str, objective: Objective, config: SearchConfig, run_dir: Path) -> Searcher:
    """The searcher ``name`` with the run's Optuna storage or agent checkpoint place."""
    from agents import searcher_class
    from agents.optuna_search import OptunaSearcher
    from agents.rl import RLSearcher

    cls = searcher_class(name)
    kwargs: dict[str, Any] = dict(config.searcher.options)
    if issubclass(cls, OptunaSearcher):
        make_sqlite_parent(config.searcher.storage)  # checked before the set-up, created only now
        kwargs["storage"] = config.searcher.storage or f"sqlite:///{(run_dir / 'optuna.db').resolve()}"
        kwargs["study_name"] = f"automl-{run_dir.name}"
        kwargs["stage_fidelity"] = config.searcher.stage_fidelity or None
    elif issubclass(cls, RLSearcher):
        kwargs["checkpoint_dir"] = run_dir / "agent"
    return cls(objective, seed=config.run.seed, **kwargs)


RESERVED_OPTIONS = {"seed": "run.seed", "storage": "searcher.storage", "study_name": "run.output", "checkpoint_dir": "run.output",
                    "stage_fidelity": "searcher.stage_fidelity"}


def check_searcher(config: SearchConfig) -> None:
    """The searcher's name and its ``searcher.options``, checked before any work."""
    if config.searcher.name not in searcher_names():
        raise ConfigError(f"unknown searcher {config.searcher.name!r}; choose one of {sorted(searcher_names())}")
    from agents import searcher_class

    check_searcher_options(config.searcher.name, searcher_class(config.searcher.name), config.searcher.options, RESERVED_OPTIONS)


# callbacks -------------------------------------------------------------------------------
class Journal(Callback):
    """Appends every new record to ``trials.jsonl`` (flushed and fsynced per line).

    A torn last line a crash left is cut off first. A write that fails (a full disk) is
    undone, so the journal keeps only whole records, and raised as
    :class:`~automl.errors.RunDirError` with how to resume.
    """

    def __init__(self, path: Path, known: set[int]) -> None:
        self.path = path
        self.known = set(known)
        repair_torn_tail(path)

    def on_trial(self, record: TrialRecord) -> bool:
        if record.number not in self.known:
            line = record.to_json() + "\n"
            with self.path.open("a") as fh:
                start = fh.tell()
                try:
                    half = len(line) // 2  # two writes, so the crash tests can tear a line (automl.faults)
                    fh.write(line[:half])
                    fh.flush()
                    faults.point("journal-write")
                    fh.write(line[half:])
                    fh.flush()
                    os.fsync(fh.fileno())
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        fh.truncate(start)
                    raise disk_error(exc, self.path, self.path.parent, f"the record of trial {record.number}") from None
            self.known.add(record.number)
        raise_if_terminated()  # a SIGTERM whose first raise was dropped stops the search here (automl.runs.lifecycle)
        return True


def trial_metrics(record: TrialRecord) -> dict[str, float]:
    """A child run's metrics: what a user compares, in the units of :mod:`automl.cost.units`.

    Shown values are rounded to 6 significant digits so the UI's columns stay readable;
    ``size_bytes`` and the journal keep the exact numbers.
    """
    m = record.metrics
    values = {
        "val_accuracy": m.accuracy, "loss": m.loss, "kl": m.kl, **cost_metrics(record.costs),
        "mean_bits": record.policy.mean_weight_bits(), "sparsity": record.policy.channel_sparsity(),
        "eval_seconds": record.seconds,
    }
    out = {k: shown(v) for k, v in values.items()}
    out.update({"size_bytes": record.costs.size_bytes, "feasible": float(record.feasible), "repaired": float(record.repaired)})
    return out


class MlflowLogging(Callback):
    """One nested child run per distinct evaluated policy, written in the background.

    A proposal of a policy already evaluated (a cache hit) gets no run of its own: the first
    run of that policy counts it (metric ``times_proposed_again``, set when the search ends)."""

    def __init__(self, tracker: MlflowTracker, logged: set[int], fidelity: int) -> None:
        self.tracker = tracker
        self.logged = set(logged)
        self.fidelity = fidelity
        self.first: dict[str, int] = {}  # policy key -> the trial whose run holds it
        self.again: dict[int, int] = {}  # that trial -> proposals of the same policy since

    def on_start(self, searcher: Searcher, objective: Objective) -> None:
        for r in searcher.records:  # a resumed search: its earlier distinct policies have their runs
            if not r.cache_hit:
                self.first.setdefault(r.policy.key(), r.number)

    def on_trial(self, record: TrialRecord) -> bool:
        if record.number in self.logged:
            return True
        key = record.policy.key()
        if record.cache_hit and key in self.first:
            number = self.first[key]
            self.again[number] = self.again.get(number, 0) + 1
            return True
        self.first.setdefault(key, record.number)
        lp = record.policy
        params = {
            "searcher": record.searcher, "fidelity": self.fidelity, "mean_bits": f"{lp.mean_weight_bits():.3f}",
            "sparsity": f"{lp.channel_sparsity():.3f}",
            "mean_act_bits": f"{sum(p.act_bits for _, p in lp) / len(lp):.3f}", "repaired": record.repaired,
        }
        tags = {"feasible": str(record.feasible).lower(), "repaired": str(record.repaired).lower(), "searcher": record.searcher}
        if record.repair is not None:
            tags["repair"] = json.dumps(record.repair.to_dict())[:4000]
            tags["repair_summary"] = repair_summary(record.repair)
        self.tracker.log_trial(record.number, trial_metrics(record), params, tags, lp.to_json())
        self.logged.add(record.number)
        return True

    def on_end(self, result: SearchResult) -> None:
        if not self.again:
            return
        self.tracker.flush()
        runs = self.tracker.logged_trials()
        for number, count in self.again.items():
            if number in runs:
                self.tracker.log_run_metrics(runs[number], {"times_proposed_again": float(count)})


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


def build_session(plan: RunPlan, task: Task | None = None, track: bool = True, timer: StageTimer | None = None,
                  budget_check: Callable[[BoundBudget, CostModel], None] | None = None) -> Session:
    """Check everything a user can get wrong, cheapest first, then build the problem.

    Nothing is written until the budget is bound (and ``budget_check`` passed): a bad task,
    profile or budget leaves no run directory and no tracking store behind. The evaluator is
    built before the budget is bound (its engine prices the ``.ampq`` header); then the run
    directory is made, the MLflow store opens and the evaluation cache is attached.
    """
    timer = timer or StageTimer()
    config, run_dir = plan.config, plan.run_dir
    uri = config.tracking.uri or default_tracking_uri(config.run.output)
    check_writable(run_dir)
    if track:
        check_tracking_uri(uri)  # before any evaluation work
    own_study = run_dir / "optuna.db"  # a resumed run's own study: checked like a given one
    check_storage(config.searcher.storage or (f"sqlite:///{own_study}" if own_study.is_file() else ""))
    budget = Budget.parse(list(config.budget))
    check_searcher(config)
    check_workers(config)
    from automl.quant.device import resolve_device

    resolve_device(config.run.device)  # a GPU asked for on a machine without one: refused before any store opens
    check_task_data(config.task, config.data_dir)  # a missing dataset likewise
    cwd = plan.state.get("cwd")
    if isinstance(cwd, str) and cwd not in sys.path:
        sys.path.insert(0, cwd)  # a task module importable where the run started stays importable on resume
    pin_threads(config.run.threads)
    if track:  # MLflow's import (seconds) overlaps the task and the analysis; it writes nothing
        threading.Thread(target=importlib.import_module, args=("mlflow",), name="mlflow-import", daemon=True).start()
    problem, cost_model, bound, inner = _build_problem(config, budget, task, timer)
    if budget_check is not None:
        budget_check(bound, cost_model)
    run_dir.mkdir(parents=True, exist_ok=True)
    opening = _open_tracker(uri, config, run_dir) if track else None
    try:
        evaluator = CachedEvaluator(inner, path=run_dir / "cache.sqlite")
    except BaseException:
        if opening is not None:  # wait for it: a store left half-created (a new SQLite file mid-migration) is worse
            concurrent.futures.wait([opening])
            _close_unused(opening)
        raise
    objective = Objective(evaluator, cost_model, bound, widen_activations=config.searcher.widen_activations)
    with timer.stage("mlflow"):  # what is left of opening the store once the problem is built
        tracker = opening.result() if opening is not None else None
    return Session(config, run_dir, problem, cost_model, bound, evaluator, objective, tracker, timer)


def _build_problem(config: SearchConfig, budget: Budget, task: Task | None,
                   timer: StageTimer) -> tuple[Problem, CostModel, BoundBudget, Evaluator]:
    """The task, its analysis, the evaluator (whose engine prices the .ampq header) and the bound budget."""
    with timer.stage("task"):  # for a reference task: load the shipped checkpoint (or train) and check it
        task = task or load_task(config.task, threads=config.run.threads, data_dir=config.data_dir)
    with timer.stage("analysis"):
        problem = Problem.from_task(task, config.space, device=config.run.device)
    task = problem.task  # the model the analysis describes (attention and the like rewritten)
    with timer.stage("cost_model"):
        refs = tuple(dict.fromkeys([*config.profiles, *budget.profile_refs]))  # ort-cpu*: measured on ONNX Runtime, cached
        profiles = resolve_profiles(refs, task.model, task.sample_input, problem.analysis, config.run.threads)
        check_profile_scales(profiles, config.evaluation.power_of_two)
    with timer.stage("evaluator"):  # BatchNorm folding, weight banks, calibration, the staged trace (writes nothing)
        evaluator = Evaluator(problem, config.evaluation, seed=config.run.seed)
    with timer.stage("cost_model"):  # the .ampq header, priced in size, written by the evaluator's engine
        container = container_bytes(task.model, problem.analysis, problem.space, task.sample_input,
                                    power_of_two=config.evaluation.power_of_two, engine=evaluator.engine)
        cost_model = CostModel(problem.analysis, problem.space, profiles, container)
        bound = budget.bind(cost_model)
    return problem, cost_model, bound, evaluator


def _close_unused(opening: concurrent.futures.Future[MlflowTracker]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


def _open_tracker(uri: str, config: SearchConfig, run_dir: Path) -> concurrent.futures.Future[MlflowTracker]:
    """Open the MLflow store on a thread of its own; ``result()`` gives the tracker or raises its error.

    The thread mostly imports and waits on the store while the main thread runs torch, so the two
    overlap even under the GIL. If building the problem fails first, the tracker is closed when it is
    ready (it has no run yet, so nothing is left RUNNING).
    """
    # A tracking server stores a new experiment's artifacts where it was told (--artifacts-destination
    # or --default-artifact-root); only a store this process opens itself gets the local mlartifacts.
    location = None if uri.startswith(("http://", "https://")) else artifact_root(config.run.output)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-open")
    future = pool.submit(MlflowTracker, uri, config.tracking.experiment, location, failure_log=run_dir / FAILURES_FILE)
    pool.shutdown(wait=False)
    return future


def _start_tracking(session: Session, resuming: bool, state: dict[str, Any]) -> None:
    tracker, cfg = session.tracker, session.config
    if tracker is None:
        return
    state_path = session.run_dir / STATE
    if resuming and state.get("parent_run_id"):
        tracker.attach_parent(state["parent_run_id"])
        tracker.mark_unfinished_children()
        return
    tracker.start_parent(
        f"{cfg.searcher.name}-{session.run_dir.name}", cfg.to_dict(),
        {RUN_DIR_TAG: str(session.run_dir.resolve()), "searcher": cfg.searcher.name, "budget": ", ".join(cfg.budget)},
    )
    state["parent_run_id"] = tracker.parent_id
    state_path.write_text(json.dumps(state))
    ev: Evaluator = session.evaluator.evaluator  # type: ignore[assignment]
    with session.timer.stage("baseline"):  # the float model on val and test (also fills the split caches)
        base_val, base_test = ev.baseline("val"), ev.baseline("test")
    fc = session.cost_model.float_costs()
    tracker.log_parent_metrics(
        {"float_val_accuracy": base_val.accuracy, "float_test_accuracy": base_test.accuracy, **cost_metrics(fc, "float_"),
         **limit_metrics(session.bound.limits)}
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
                searcher.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
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
    searcher.records.sort(key=lambda r: r.number)


def _finished_result(plan: RunPlan) -> SearchResult | None:
    """The saved result of a FINISHED run that a resume would add nothing to."""
    path = plan.run_dir / "result.json"
    if plan.state.get("status") != "FINISHED" or len(plan.journal) < plan.config.run.evaluations or not path.is_file():
        return None
    return SearchResult.from_json(path.read_text())


def _close(session: Session, status: str, state: dict[str, Any]) -> None:
    """End the parent run with ``status`` and record it; runs whatever ended the search.

    Never raises over the error that ended the search: a store that cannot be told the
    status is reported (``automl best`` or a resume closes the parent later), and a full
    disk that cannot take ``state.json`` leaves the owner file to tell the run was cut."""
    tracker = session.tracker
    if tracker is not None and tracker.parent_id is not None:
        state.setdefault("parent_run_id", tracker.parent_id)  # a stop right after the parent was made
    try:
        if tracker is not None:
            try:
                tracker.finish_parent(status)
            except TrackingError as exc:
                print(f"could not mark the MLflow parent run {status}: {exc}. `automl best` or a resume closes it "
                      "once the store answers.", file=sys.stderr, flush=True)
            tracker.close()
            if status != "FINISHED" and tracker.failures:  # a finished search printed it with its summary
                print(tracker.failure_summary(), file=sys.stderr, flush=True)
    finally:
        state["status"] = status
        try:
            (session.run_dir / STATE).write_text(json.dumps(state))
            remove_owner(session.run_dir)
        except OSError as exc:
            print(f"could not record the status in {session.run_dir / STATE}: {exc}", file=sys.stderr, flush=True)


def run_search(
    config: SearchConfig, task: Task | None = None, callbacks: Sequence[Callback] = (), quiet: bool = False,
    explicit: Collection[str] | None = None, timer: StageTimer | None = None,
) -> SearchResult:
    """Run (or resume) one search and return its result; see :class:`SearchConfig`.

    ``explicit`` names the keys the user set (a resume keeps the run's own value of every
    other key); ``None`` takes those that differ from the defaults. ``timer`` times the stages
    (one that already timed the task's load, for instance). The parent run ends FINISHED,
    FAILED, or KILLED (Ctrl-C, SIGTERM); a search stopped before its parent run exists leaves
    no run directory (see :func:`_keep_or_discard`).
    """
    from automl.runs.precheck import check_inputs, check_loose_budget

    check_inputs(config, task=task is None)  # every name, before any set-up; writes nothing
    if config.run.resume:  # a parent a kill -9 left RUNNING is closed first, even if this resume fails
        close_if_stale(find_run_dir(config.run.resume, config.run.output))
    plan = plan_run(config, explicit)
    cfg, run_dir = plan.config, plan.run_dir

    def say(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    if plan.resuming:
        if owner_alive(run_dir):
            raise ConfigError(f"run {str(run_dir)!r} is still being searched by another process; stop it before resuming")
        say(f"resuming {run_dir} with its own configuration: {len(plan.journal)} of {cfg.run.evaluations} evaluations done")
        for note in plan.notes:
            say(f"  override {note}")
        finished = _finished_result(plan)
        if finished is not None:
            say(f"the run is FINISHED with {finished.n_evaluations} evaluations; nothing to add "
                f"(pass --evaluations N with N > {finished.n_evaluations} to add trials)")
            return finished
    session: Session | None = None
    try:
        with handle_termination():
            check = None if plan.resuming else functools.partial(check_loose_budget, allow=cfg.run.allow_loose_budget,
                                                                  say=say)
            session = build_session(plan, task, timer=timer, budget_check=check)
            return _run(session, plan, callbacks, quiet, say)
    except BaseException as exc:
        kept = _keep_or_discard(plan, session)
        if isinstance(exc, (KeyboardInterrupt, Terminated)):
            exc.automl_run_dir = str(run_dir) if kept else None  # type: ignore[union-attr] - read by the CLI's message
        raise


def _keep_or_discard(plan: RunPlan, session: Session | None) -> bool:
    """After a search ended early: keep its run directory when it can be resumed (its MLflow
    parent run exists, so it holds the configuration and every record), else remove what this
    process created, so that an interrupted or failed set-up leaves nothing. Returns whether kept."""
    run_dir = plan.run_dir
    if plan.resuming:
        return True
    tracker = session.tracker if session is not None else None
    if tracker is not None and tracker.parent_id is not None:
        return run_dir.is_dir()
    shutil.rmtree(run_dir, ignore_errors=True)
    return False


def _run(session: Session, plan: RunPlan, callbacks: Sequence[Callback], quiet: bool, say: Callable[[str], None]) -> SearchResult:
    """The search of a built session, with its run's files and MLflow parent closed whatever ends it."""
    cfg, run_dir = plan.config, plan.run_dir
    state = dict(plan.state)
    status = "FAILED"
    try:
        try:
            (run_dir / CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2))
            write_owner(run_dir)
        except OSError as exc:
            raise disk_error(exc, run_dir / CONFIG, run_dir, "the run configuration") from None
        result = _search(session, plan, state, callbacks, quiet, say)
        status = "FINISHED"
    except TrackingError as exc:
        raise TrackingError(
            f"{exc}. The journal {run_dir / JOURNAL} keeps every evaluated policy; once the tracking store "
            f"answers, continue with: {command_prefix()} search --resume {run_dir}"
        ) from exc
    except (KeyboardInterrupt, Terminated):
        status = "KILLED"
        raise
    finally:
        _close(session, status, state)
    return result


def _search(
    session: Session, plan: RunPlan, state: dict[str, Any], callbacks: Sequence[Callback], quiet: bool, say: Any,
) -> SearchResult:
    cfg, run_dir = session.config, session.run_dir
    # Local workers start first: their start-up overlaps the set-up below (automl.runs.workers).
    started = start_workers(run_dir, cfg.run.workers, local_devices(cfg)) if cfg.run.workers > 1 else {}
    try:
        return _search_with(session, plan, state, callbacks, quiet, say, started)
    except BaseException:
        stop_workers(started)
        raise


def _search_with(
    session: Session, plan: RunPlan, state: dict[str, Any], callbacks: Sequence[Callback], quiet: bool, say: Any,
    started: dict[int, Any],
) -> SearchResult:
    cfg, run_dir, tracker = session.config, session.run_dir, session.tracker
    assert tracker is not None
    timer = session.timer
    with stage("set-up: MLflow parent run, float baseline", quiet), timer.stage("mlflow"):
        _start_tracking(session, plan.resuming, state)
    timer.add("mlflow", -timer.seconds.get("baseline", 0.0))  # the baselines are their own stage
    from automl.runs.sensitivity_stage import run_stage

    with timer.stage("sensitivity"):
        sensitivity = run_stage(session, plan.resuming, quiet)  # before the searcher: it reads the tables
    with stage(f"{cfg.searcher.name} searcher (warm start)", quiet), timer.stage("warm_start"):
        searcher = make_searcher(cfg.searcher.name, session.objective, cfg, run_dir)
    if plan.resuming:
        resume_searcher(searcher, list(plan.journal), single_worker=cfg.run.workers == 1)
    if cfg.run.workers <= 1:  # a resumed search continues as the uninterrupted one would (Objective.restore)
        session.objective.restore(searcher.records)
    done = {r.number for r in searcher.records}
    logged = set(tracker.logged_trials())
    journal = Journal(run_dir / JOURNAL, {r.number for r in plan.journal})
    cbs: list[Callback] = [journal, MlflowLogging(tracker, logged, cfg.evaluation.fidelity)]
    for record in searcher.records:  # trials evaluated before a crash but not yet journaled/logged
        for cb in cbs:
            cb.on_trial(record)
    best = max((r.accuracy for r in searcher.records if r.feasible), default=None)
    if not quiet:
        say(f"run directory: {run_dir}  (resume with: {command_prefix()} search --resume {run_dir})")
        say("budget: " + budget_line(session.bound))
        cbs.append(Progress(cfg.run.evaluations, len(done), best))
    cbs.extend(callbacks)
    speculation = None  # the winner's fine-tune beside the search, on the spare core (automl.runs.overlap)
    if not overlap_reason(cfg):
        speculation = SpeculativeFinetune(session.evaluator.evaluator, cfg.finetune, searcher.records)
        cbs.append(speculation)
    try:
        with timer.stage("search"):
            result = replace(run_searcher(searcher, session, cbs, started=started),
                             sensitivity_evaluations=sensitivity.evaluations)
        timer.add("evaluations", result.eval_seconds, within="search")
        if speculation is not None:
            timer.add("speculation", speculation.report.prepare_seconds, within="search")
        with timer.stage("mlflow"):
            tracker.flush()
        from automl.runs.results import finish_search

        finish_search(session, result, quiet=quiet, speculation=speculation, earlier={r.number for r in plan.journal})
    finally:
        if speculation is not None:
            speculation.close()
    return result


def search(
    task: Task, budget: str | Sequence[str] = DEFAULT_BUDGET, searcher: str | Mapping[str, Any] | None = None, *,
    quiet: bool = False, **sections: Any,
) -> SearchResult:
    """Python API of ``automl search``: the same configuration, a :class:`SearchResult` back.

    ``sections`` are the sections of :class:`~automl.runs.config.SearchConfig` as mappings (or
    their settings objects): ``space``, ``evaluation``, ``finetune``, ``searcher``, ``tracking``,
    ``run``, and ``profiles``; ``searcher`` may also be just the searcher's name.

    Example::

        import automl
        result = automl.search(my_task, budget=["size<=0.125x"], searcher="tpe", run={"evaluations": 50})
        print(result.best.policy, result.best.accuracy)
    """
    data: dict[str, Any] = {"task": task.name, "budget": (budget,) if isinstance(budget, str) else tuple(budget)}
    if searcher is not None:
        sections["searcher"] = {"name": searcher} if isinstance(searcher, str) else searcher
    for key, value in sections.items():
        data[key] = value.to_dict() if hasattr(value, "to_dict") else value
    config = SearchConfig.from_dict(data)
    return run_search(config, task=task, quiet=quiet, explicit=dotted_keys(data))
