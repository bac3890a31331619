"""A policy-result cache: an identical policy is never evaluated twice.

:class:`CachedEvaluator` wraps any evaluator (:class:`~automl.problem.metrics.PolicyEvaluator`)
and keys each result by :meth:`Policy.key` and the fidelity it was evaluated at. Results
live in memory and, when a ``path`` is given, in a SQLite file that several processes
(``SubprocVecEnv`` workers, resumed searches) read and write concurrently.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automl import faults
from automl.errors import ConfigError
from automl.problem.metrics import Metrics, PolicyEvaluator
from search_spaces.policy import Policy

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    fidelity INTEGER NOT NULL,
    policy TEXT NOT NULL,
    metrics TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (namespace, key, fidelity)
)
"""


@dataclass(frozen=True)
class CacheStats:
    """How often the cache answered.

    Attributes:
        hits: answers from the cache (memory or file).
        misses: evaluations actually run.
        disk_hits: the part of ``hits`` read from the SQLite file (another process or an
            earlier run evaluated the policy).
    """

    hits: int = 0
    misses: int = 0
    disk_hits: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"hits": self.hits, "misses": self.misses, "disk_hits": self.disk_hits, "hit_rate": self.hit_rate}


def evaluator_fidelity(evaluator: object) -> int:
    """The fidelity ``evaluator`` scores at by default (``config.fidelity``, ``fidelity`` or 0)."""
    config = getattr(evaluator, "config", None)
    value = getattr(config, "fidelity", None)
    if value is None:
        value = getattr(evaluator, "fidelity", 0)
    return int(value)


class CachedEvaluator:
    """Evaluates each distinct (policy, fidelity) once; answers repeats from the cache.

    Attributes the wrapped evaluator has (``baseline``, ``problem``, ...) are reachable
    through the wrapper.

    Args:
        evaluator: anything with ``evaluate(policy) -> Metrics``; ``evaluate(policy,
            fidelity)`` must also work when a fidelity is passed explicitly.
        path: a SQLite file shared between processes and runs; memory only when ``None``.
        namespace: separates results of different models or tasks kept in one file (the
            policy key names layers and bits, not the weights behind them).

    Two processes that miss on the same policy at the same moment both evaluate it; the
    file keeps the first result. Within one process a policy is evaluated once.
    """

    def __init__(self, evaluator: PolicyEvaluator, path: str | os.PathLike[str] | None = None, namespace: str = "") -> None:
        if not callable(getattr(evaluator, "evaluate", None)):
            raise ConfigError(
                f"CachedEvaluator needs an object with evaluate(policy) -> Metrics, got {type(evaluator).__name__}. "
                "Pass an automl.evaluation.evaluator.Evaluator or another PolicyEvaluator."
            )
        self.evaluator = evaluator
        self.path = Path(path) if path is not None else None
        self.namespace = namespace
        self._memory: dict[tuple[str, int], Metrics] = {}
        self._hits = self._misses = self._disk_hits = 0
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        if self.path is not None:
            self._connection()  # fail now, not at the first miss, when the file cannot be opened

    # the wrapped evaluator -----------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("evaluator")
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(inner, name)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_conn"] = None  # a connection cannot cross a process boundary; reopened on use
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # public --------------------------------------------------------------------------
    @property
    def stats(self) -> CacheStats:
        return CacheStats(self._hits, self._misses, self._disk_hits)

    def __len__(self) -> int:
        return len(self._memory)

    def __contains__(self, policy: Policy) -> bool:
        return self.lookup(policy) is not None

    def lookup(self, policy: Policy, fidelity: int | None = None) -> Metrics | None:
        """The cached result of ``policy`` without evaluating it (and without counting)."""
        key = (policy.key(), evaluator_fidelity(self.evaluator) if fidelity is None else int(fidelity))
        found = self._memory.get(key)
        if found is None and self.path is not None:
            found = self._read(*key)
            if found is not None:
                self._memory[key] = found
        return found

    def evaluate(self, policy: Policy, fidelity: int | None = None) -> Metrics:
        """The metrics of ``policy`` at ``fidelity`` (the evaluator's default when ``None``)."""
        level = evaluator_fidelity(self.evaluator) if fidelity is None else int(fidelity)
        key = (policy.key(), level)
        found = self._memory.get(key)
        if found is not None:
            self._hits += 1
            return found
        if self.path is not None:
            found = self._read(*key)
            if found is not None:
                self._memory[key] = found
                self._hits += 1
                self._disk_hits += 1
                return found
        self._misses += 1
        metrics = self.evaluator.evaluate(policy) if fidelity is None else self.evaluator.evaluate(policy, fidelity)  # type: ignore[call-arg]
        self._memory[key] = metrics
        faults.point("evaluation")
        if self.path is not None:
            self._write(key[0], level, policy, metrics)
        faults.point("cache-write")
        return metrics

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # SQLite --------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            assert self.path is not None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(_SCHEMA)
            except (sqlite3.Error, OSError) as exc:
                raise ConfigError(
                    f"cannot open the evaluation cache {str(self.path)!r}: {exc}. Give a writable path "
                    "(its folder is created) or path=None for an in-memory cache."
                ) from exc
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def _read(self, key: str, fidelity: int) -> Metrics | None:
        row = self._connection().execute(
            "SELECT metrics FROM evaluations WHERE namespace = ? AND key = ? AND fidelity = ?",
            (self.namespace, key, fidelity),
        ).fetchone()
        return Metrics.from_dict(json.loads(row[0])) if row else None

    def _write(self, key: str, fidelity: int, policy: Policy, metrics: Metrics) -> None:
        try:
            self._connection().execute(
                "INSERT OR IGNORE INTO evaluations (namespace, key, fidelity, policy, metrics, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (self.namespace, key, fidelity, policy.to_json(), json.dumps(metrics.to_dict()), time.time()),
            )
        except sqlite3.OperationalError as exc:
            if "full" not in str(exc):
                raise
            assert self.path is not None
            raise ConfigError(
                f"cannot write the evaluation cache {str(self.path)!r}: the disk is full ({exc}). Free space, then "
                "resume the search (`automl search --resume <run dir>`); every journaled record is kept."
            ) from None
