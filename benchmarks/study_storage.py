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
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path
from unittest import mock

import optuna

from agents import storage as project_storage


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--params", type=int, default=63)
    args = parser.parse_args()
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
    print(f"RESULT memory_ms={memory:.1f} sqlite_ms={sqlite:.1f} sqlite_batched_ms={batched:.1f} "
          f"batched_over_sqlite={batched / sqlite:.2f} sqlite_stale_pool_ms={stale:.1f}")


if __name__ == "__main__":
    main()
