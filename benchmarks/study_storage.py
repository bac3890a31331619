"""What one Optuna trial costs in the study storage a search uses, before any evaluation.

A trial of the compact encoding asks for about 52 parameters on ResNet-20; Optuna's RDB
storage commits each one. Times ``ask`` + 63 ``suggest_int`` + ``tell`` with the random
sampler (no sampling cost) on: an in-memory storage (the floor), the project's SQLite
storage as :func:`agents.storage.open_storage` opens it, the same with the parameters
suggested inside :func:`agents.storage.batched_params` (as the Optuna searchers ask: one
transaction for all of them), and the storage with its connection pool left as Optuna made
it (the connection created before the ``synchronous=NORMAL`` listener, so every commit
waits for an fsync).

    python benchmarks/study_storage.py [--trials 20] [--params 63]

Each run appends one row to ``docs/results/study_storage.jsonl``; ``--summarise`` writes the page of
the saved runs, whose RESULT line is the latest run's.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import optuna
import results

from agents import storage as project_storage

TITLE = "Study storage: what one Optuna trial costs before any evaluation"


def per_trial_ms(storage: optuna.storages.BaseStorage, trials: int, params: int, batched: bool = False) -> float:
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    start = time.perf_counter()
    for _ in range(trials):
        with project_storage.batched_params(storage) if batched else contextlib.nullcontext():
            trial = study.ask()
            for k in range(params):
                trial.suggest_int(f"p{k}", 0, 8)
        study.tell(trial, 0.5)
    return (time.perf_counter() - start) / trials * 1e3


def figures(r: dict[str, Any]) -> str:
    return (f"memory_ms={r['memory_ms']:.1f} sqlite_ms={r['sqlite_ms']:.1f} sqlite_batched_ms={r['sqlite_batched_ms']:.1f} "
            f"batched_over_sqlite={r['sqlite_batched_ms'] / r['sqlite_ms']:.2f} sqlite_stale_pool_ms={r['sqlite_stale_pool_ms']:.1f}")


def summary(rows: list[dict[str, Any]]) -> results.Summary:
    """One line per run (ms per trial); the RESULT line is the latest run's."""
    table = results.runs_table(rows, [("parameters, trials", lambda r: f"{r['params']}, {r['trials']}"),
                                      ("figures", figures)])
    return results.Summary((table,), "RESULT " + figures(rows[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--params", type=int, default=63)
    results.add_arguments(parser, "study_storage")
    args = parser.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        memory = per_trial_ms(optuna.storages.InMemoryStorage(), args.trials, args.params)
        sqlite = per_trial_ms(project_storage.open_storage(f"sqlite:///{Path(tmp) / 'a.db'}"), args.trials, args.params)
        batched = per_trial_ms(project_storage.open_storage(f"sqlite:///{Path(tmp) / 'c.db'}"), args.trials, args.params,
                               batched=True)
        with mock.patch("sqlalchemy.engine.Engine.dispose"):  # keep the pool Optuna made
            stale = per_trial_ms(project_storage.open_storage(f"sqlite:///{Path(tmp) / 'b.db'}"), args.trials, args.params)
    print(f"{args.params} parameters per trial, {args.trials} trials: in memory {memory:.1f} ms, "
          f"SQLite as opened by the project {sqlite:.1f} ms, the same with the parameters in one transaction "
          f"{batched:.1f} ms, SQLite with the pool not reopened {stale:.1f} ms")
    row = {"params": args.params, "trials": args.trials, "memory_ms": memory, "sqlite_ms": sqlite,
           "sqlite_batched_ms": batched, "sqlite_stale_pool_ms": stale}
    return results.finish(args, [row], "study_storage", summary)


if __name__ == "__main__":
    raise SystemExit(main())
