"""``automl worker``: one worker process of a shared Optuna study (started by ``automl search
--workers N`` on this machine, or by hand on another host; see :mod:`automl.runs.workers`)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from automl.errors import ConfigError
from automl.runs.config import SearchConfig
from automl.runs.workers import CONFIG_ATTR, check_workers, wait_ready, worker_tag


def add_worker_parser(sub: argparse._SubParsersAction, parents: Sequence[argparse.ArgumentParser]) -> None:
    """``automl worker``: join a running search (same host: ``--join``; other host: ``--storage --study``)."""
    w = sub.add_parser("worker", help="join a running search as one more worker", parents=list(parents))
    w.add_argument("--join", help="the run directory of a running `automl search` on this host")
    w.add_argument("--storage", help="Optuna storage URL of the search (another host: PostgreSQL)")
    w.add_argument("--study", help="study name (printed by the search; automl-<run dir name>)")
    w.add_argument("--output", default="automl-runs", help="where this worker keeps its evaluation cache (--storage)")
    w.add_argument("--threads", type=int, help="torch threads of this worker (default: the search's)")
    w.add_argument("--device", help="where this worker evaluates: auto | cpu | cuda | cuda:N (default: the search's)")
    w.add_argument("--index", type=int, help="worker number: its sampler seed is the search's seed + 1000 (index + 1); "
                   "default: from the process id, so every worker proposes differently")


def worker_config(args: argparse.Namespace) -> tuple[SearchConfig, Path, str]:
    """The search's configuration, this worker's run directory and the study name."""
    if bool(args.join) == bool(args.storage or args.study):
        raise ConfigError("automl worker needs either --join RUN_DIR or both --storage URL and --study NAME")
    if args.join:
        run_dir = Path(args.join).expanduser().resolve()
        path = run_dir / "config.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--join {args.join!r}: cannot read {str(path)!r} ({exc}); pass the run directory "
                              "that `automl search` printed") from None
        cfg = SearchConfig.from_dict(data)
        if not cfg.searcher.storage:
            cfg = cfg.merged({"searcher.storage": f"sqlite:///{(run_dir / 'optuna.db').resolve()}"})
        study = f"automl-{run_dir.name}"
    else:
        if not (args.storage and args.study):
            raise ConfigError("automl worker --storage needs --study NAME too (and --study needs --storage)")
        import optuna

        from agents.storage import open_storage

        try:
            summary = optuna.load_study(study_name=args.study, storage=open_storage(args.storage))
        except KeyError:
            raise ConfigError(f"no study {args.study!r} in {args.storage!r}; pass the name the search printed") from None
        data = summary.user_attrs.get(CONFIG_ATTR)
        if not isinstance(data, dict):
            raise ConfigError(f"study {args.study!r} holds no automl-mpq search configuration; start it with "
                              "`automl search --workers N` first")
        cfg = SearchConfig.from_dict(data).merged({"searcher.storage": args.storage, "run.output": args.output})
        study = args.study
        run_dir = Path(args.output).expanduser().resolve() / "workers" / study
    if args.threads:
        cfg = cfg.merged({"run.threads": args.threads})
    if args.device:
        cfg = cfg.merged({"run.device": args.device})
    check_workers(cfg.merged({"run.workers": 2}))
    return cfg, run_dir, study


def cmd_worker(args: argparse.Namespace) -> int:
    """Run one worker until the study holds the search's evaluations."""
    cfg, run_dir, study_name = worker_config(args)
    from agents import searcher_class
    from automl.runs.lifecycle import handle_termination
    from automl.runs.resume import RunPlan
    from automl.runs.runner import build_session
    from automl.runs.sensitivity_stage import sensitivity_stage

    session = build_session(RunPlan(cfg, run_dir, resuming=True), track=False)
    if args.join:  # started early by the parent: its study, warm start and sensitivity tables come first
        wait_ready(run_dir)
    report = sensitivity_stage(session.evaluator, session.problem.space, cfg.evaluation.fidelity, cfg.searcher.sensitivity,
                               cache_dir=cfg.run.output, quiet=True)
    session.objective.sensitivities = report.sensitivities
    kwargs: dict[str, Any] = dict(cfg.searcher.options)
    kwargs.update(storage=cfg.searcher.storage, study_name=study_name, stage_fidelity=cfg.searcher.stage_fidelity or None)
    index = args.index if args.index is not None else os.getpid()
    searcher = searcher_class(cfg.searcher.name)(session.objective, seed=cfg.run.seed + 1000 * (index + 1), **kwargs)
    searcher.worker = worker_tag()
    with handle_termination():
        result = searcher.run(cfg.run.evaluations)
    print(f"worker {os.getpid()}: {sum(1 for r in result.records if not r.cache_hit)} distinct evaluations "
          f"in the study", flush=True)
    return 0
