"""Several worker processes on one Optuna study: ``automl search --workers N`` and ``automl worker``.

Design (the simplest one that is correct with the stores the project already has):

- The study is the only thing workers share that needs coordination, and Optuna already
  makes it safe for concurrent processes (SQLite with WAL and a lock timeout, see
  :mod:`agents.storage`, or PostgreSQL across hosts). Every worker runs the ordinary
  :meth:`agents.optuna_search.OptunaSearcher.run` loop on the same study, so the number of
  evaluations, the surplus rule and the constant liar behave as for one process. The
  evaluation cache (``cache.sqlite`` of the run directory) is shared too; its SQLite file
  is opened per process.
- The parent process (``automl search --workers N``) evaluates nothing itself. It starts N
  subprocesses of ``python -m automl worker --join RUN_DIR`` as soon as the run directory
  holds its configuration, so that each worker's start-up (imports, task, model analysis,
  evaluator: seconds on ResNet-20) overlaps the parent's own set-up (MLflow parent run, float
  baseline, sensitivity tables, warm start); a worker that has built its evaluator waits for
  the parent's ``workers/ready`` marker (written once the study holds the warm start and
  the configuration) before it reads the sensitivity tables and asks for trials. The parent
  then *tails the study*: every poll it loads the finished trials' records (each trial
  carries its :class:`~agents.records.TrialRecord` as a user attribute) and hands the new
  ones to the run's callbacks. So the journal and MLflow keep exactly one writer, the
  parent, and every worker's trials land in the one journal and under the one parent run
  without file locks. Workers write nothing but the study and the cache.
- Dead workers. Each worker tags the trials it asks for with its host, pid and process
  start time (:data:`WORKER_ATTR`). The parent fails a RUNNING trial whose tagged process
  on this host is gone (checked every poll; a ``kill -9`` is seen within ``poll`` seconds),
  writes the reason into the trial (``fail_reason``) and re-queues its parameters with
  ``study.enqueue_trial`` (``retry_of`` names the failed trial). The failed trial holds no
  record, so it is neither counted nor journaled; its policy is evaluated by the next
  worker that asks. A worker that died with work left is replaced (at most ``2 N`` times).
  Trials of workers on other hosts are covered by Optuna's heartbeat instead: a RUNNING
  trial without a heartbeat for ``grace_period`` (120 s, :func:`agents.storage.open_storage`)
  is failed by Optuna and re-queued by :func:`agents.storage.requeue_stale` with the same
  ``retry_of`` / ``retry_reason`` attributes. A policy is re-queued at most
  :data:`agents.storage.MAX_RETRIES` times (it may be what kills its workers).
- ``automl worker --storage URL --study NAME`` joins from another host: the parent stores
  its configuration in the study's user attributes, so the joining host needs only the
  storage URL, the study name and the task importable there.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl.errors import ConfigError
from automl.runs.config import SearchConfig

if TYPE_CHECKING:
    from agents.base import Callback
    from agents.records import SearchResult

READY = "ready"  # run_dir/workers/ready: the study holds the configuration and the warm start
WORKER_ATTR = "worker"  # agents.optuna_search.WORKER_ATTR (not imported: this module loads without torch)
CONFIG_ATTR = "automl_config"
RUN_DIR_ATTR = "automl_run_dir"
OPTUNA_MODULE = "agents.optuna_search"


# checks ---------------------------------------------------------------------------------
def check_workers(config: SearchConfig) -> None:
    """``workers > 1`` needs an Optuna searcher and a storage several processes can open."""
    if config.run.workers <= 1:
        return
    from agents import SEARCHERS

    entry = SEARCHERS.get(config.searcher.name.lower().replace("-", "_"))
    if entry is not None and entry[0] != OPTUNA_MODULE:
        optuna_names = sorted(k for k, (mod, _) in SEARCHERS.items() if mod == OPTUNA_MODULE)
        raise ConfigError(
            f"--workers {config.run.workers} needs a searcher that keeps its state in an Optuna study "
            f"({', '.join(optuna_names)}); got searcher {config.searcher.name!r}. Use one of those, or --workers 1."
        )
    if config.searcher.storage.strip() in (":memory:", "memory"):
        raise ConfigError(
            f"--workers {config.run.workers} needs a storage every worker process can open; got {config.searcher.storage!r}. "
            "Leave --storage empty (a SQLite file in the run directory) or pass a database URL."
        )


# worker identity ------------------------------------------------------------------------
@functools.cache  # read once per process: the parent polls tag_alive twice a second
def process_space() -> str:
    """Which process list a pid refers to: the kernel's boot id and this pid namespace.

    Two containers or machines may share a hostname (``localhost``, a cloned image) while
    their pids mean different processes; a trial is judged by its pid only when this matches
    too. Empty where ``/proc`` does not say (then the hostname alone decides, as before).
    """
    parts = []
    try:
        parts.append(open("/proc/sys/kernel/random/boot_id").read().strip())
    except OSError:
        pass
    try:
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        pass
    return ":".join(parts)


def worker_tag() -> dict[str, Any]:
    """This process as the trials it runs record it: host, process space, pid, start time."""
    from automl.runs.lifecycle import _start_time

    return {"host": socket.gethostname(), "space": process_space(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def tag_alive(tag: Any) -> bool | None:
    """Whether the process of a :func:`worker_tag` still runs; ``None`` for another host (or
    another container with the same hostname) or no tag."""
    from automl.runs.lifecycle import _start_time

    if not isinstance(tag, dict) or tag.get("host") != socket.gethostname():
        return None
    if tag.get("space", "") != process_space():
        return None
    try:
        pid = int(tag["pid"])
        os.kill(pid, 0)
    except (KeyError, TypeError, ValueError):
        return None
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = tag.get("start")
    return start is None or _start_time(pid) in (None, start)


def fail_dead_trials(study: Any, storage: Any) -> list[int]:
    """Fail every RUNNING trial of ``study`` (kept in ``storage``, the storage object it was
    opened on) whose worker process (on this host) is gone and re-queue its parameters; returns
    the numbers of the failed trials."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from agents.storage import requeue

    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tag = t.user_attrs.get(WORKER_ATTR)
        if tag_alive(tag) is not False:
            continue
        reason = f"worker process {tag['pid']} on {tag['host']} died during the trial; its parameters were re-queued"
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # the worker finished it after all, or another process failed it first
        requeue(study, t, reason)
        failed.append(t.number)
    return failed


# the parent -----------------------------------------------------------------------------
def run_searcher(
    searcher: Any, session: Any, callbacks: Sequence[Callback], poll: float = 0.5,
    started: dict[int, subprocess.Popen] | None = None,
) -> SearchResult:
    """``searcher.run`` for one worker; the coordinator of :func:`coordinate` for several
    (``started``: the workers :func:`start_workers` already started)."""
    cfg = session.config
    if cfg.run.workers <= 1:
        return searcher.run(cfg.run.evaluations, callbacks)
    return coordinate(searcher, session.run_dir, cfg, callbacks, poll=poll, started=started)


def start_workers(run_dir: Path, workers: int, devices: Sequence[str] = ()) -> dict[int, subprocess.Popen]:
    """Start the local workers early: they build their evaluators while the parent sets up,
    then wait for :func:`coordinate`'s ready marker. A marker left by an earlier (resumed)
    run is removed first. Worker ``i`` runs on ``devices[i]`` when given (else on the run's
    device). Stop them with :func:`stop_workers` if the parent fails before :func:`coordinate`
    takes them over."""
    (run_dir / "workers").mkdir(exist_ok=True)
    (run_dir / "workers" / READY).unlink(missing_ok=True)
    return {i: _spawn(run_dir, i, devices[i] if devices else None) for i in range(workers)}


def local_devices(config: SearchConfig) -> tuple[str, ...]:
    """The device of each local worker: ``run.devices`` dealt round-robin, or, with ``run.device``
    ``auto`` and several GPUs, one GPU per worker; ``()`` when every worker takes ``run.device``."""
    run = config.run
    if not run.devices and run.device != "auto":
        return ()
    from automl.quant.device import worker_devices

    return worker_devices(run.workers, run.devices or "auto")


def stop_workers(procs: dict[int, subprocess.Popen]) -> None:
    """SIGTERM (then SIGKILL) to the workers of :func:`start_workers` that still run."""
    _stop(procs.values())


def wait_ready(run_dir: Path, poll: float = 0.2) -> None:
    """Block a ``--join`` worker until the parent has published the study (its ready marker).

    Raises:
        ConfigError: the parent that owns the run directory stopped before publishing it.
    """
    from automl.runs.lifecycle import owner_alive

    marker = run_dir / "workers" / READY
    while not marker.exists():
        if owner_alive(run_dir) is False:
            raise ConfigError(f"the search that owns {str(run_dir)!r} is not running and never published its study "
                              f"(no {str(marker)!r}); resume it with: automl search --resume {run_dir} --workers N")
        time.sleep(poll)


def _spawn(run_dir: Path, index: int, device: str | None = None) -> subprocess.Popen:
    logs = run_dir / "workers"
    logs.mkdir(exist_ok=True)
    log = (logs / f"worker-{index}.log").open("ab")
    cmd = [sys.executable, "-m", "automl", "worker", "--join", str(run_dir), "--index", str(index)]
    cmd += ["--device", device] if device else []
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        log.close()


def _tail(run_dir: Path, index: int, lines: int = 8) -> str:
    try:
        text = (run_dir / "workers" / f"worker-{index}.log").read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line for line in text.strip().splitlines()[-lines:])


def coordinate(
    searcher: Any, run_dir: Path, cfg: SearchConfig, callbacks: Sequence[Callback], poll: float = 0.5,
    started: dict[int, subprocess.Popen] | None = None,
) -> SearchResult:
    """Start ``cfg.run.workers`` worker processes on the searcher's study and feed every trial they
    finish to ``callbacks`` (journal, MLflow, progress) until they are done.

    Raises:
        ConfigError: a worker stopped on a bad input (exit 2) before any trial.
    """
    start = time.perf_counter()
    study = searcher.study
    study.set_user_attr(CONFIG_ATTR, cfg.to_dict())
    study.set_user_attr(RUN_DIR_ATTR, str(run_dir.resolve()))
    for cb in callbacks:
        cb.on_start(searcher, searcher.objective)
    seen = {r.number for r in searcher.records}
    print(f"{cfg.run.workers} workers on this host (logs in {run_dir / 'workers'}); more join with: automl worker --join "
          f"{run_dir}  or, from another host on a shared database: automl worker --storage <its URL> --study "
          f"{searcher.study_name}", file=sys.stderr, flush=True)
    devices = local_devices(cfg)
    procs = dict(started) if started else start_workers(run_dir, cfg.run.workers, devices)
    if hasattr(searcher, "prime"):  # ilp_tpe: its sweep is queued before any worker asks
        searcher.prime(cfg.run.evaluations)
    (run_dir / "workers" / READY).write_text(searcher.study_name + "\n")
    restarts, next_index = 0, max(procs, default=-1) + 1
    stop_reason = ""
    try:
        while True:
            for i, proc in list(procs.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del procs[i]
                fail_dead_trials(study, searcher.storage)
                if rc == 2 and not searcher.n_distinct:
                    raise ConfigError(f"worker {i} stopped on a bad input: {_tail(run_dir, i)}")
                if rc != 0 and not _done(searcher, cfg.run.evaluations) and restarts < 2 * cfg.run.workers:
                    restarts += 1
                    device = devices[i % len(devices)] if devices else None  # the replacement takes its place
                    procs[next_index] = _spawn(run_dir, next_index, device)
                    next_index += 1
            fail_dead_trials(study, searcher.storage)
            if not _feed(searcher, seen, callbacks):
                stop_reason = "a callback asked to stop"
                break
            if not procs:
                break
            time.sleep(poll)
    finally:
        _stop(procs.values())
        if procs:
            fail_dead_trials(study, searcher.storage)
    _feed(searcher, seen, callbacks)
    searcher.stop_reason = stop_reason
    return searcher.finish(start, callbacks)


def _done(searcher: Any, n: int) -> bool:
    searcher.sync()
    return searcher.n_distinct >= n


def _feed(searcher: Any, seen: set[int], callbacks: Sequence[Callback]) -> bool:
    """Hand the study's newly finished records to ``callbacks``; ``False`` if one asks to stop."""
    from agents.base import notify_trial

    searcher.sync()
    for record in searcher.records:
        if record.number not in seen:
            seen.add(record.number)
            if not notify_trial(callbacks, record):
                return False
    return True


def _stop(procs: Any, wait: float = 10.0) -> None:
    """SIGTERM to running workers (their trials are failed and re-queued), SIGKILL after ``wait`` s."""
    procs = [p for p in procs if p.poll() is None]
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + wait
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# the worker -----------------------------------------------------------------------------
