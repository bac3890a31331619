"""Optuna study storage from a URL: SQLite by default, any RDB URL, a journal file, or memory.

Several workers on several machines share one study by opening the same PostgreSQL (or
MySQL) URL; workers on one machine can share a SQLite file or a journal file. With an RDB
storage, running trials send heartbeats, so the trial of a worker that died is failed and
re-enqueued (same parameters) by the next worker that asks, instead of being lost.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, check_distribution_compatibility, distribution_to_json
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage
from optuna.storages._rdb import models as rdb_models  # the parameter row Optuna itself writes
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.storages.journal import JournalFileBackend, JournalStorage

from automl.errors import ConfigError

DEFAULT_STORAGE = "sqlite:///automl-optuna.db"
MAX_RETRIES = 2  # a policy whose worker died this often is not queued again (it may be what kills them)
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")


def open_storage(
    storage: str | BaseStorage | None = None,
    *,
    heartbeat_interval: int | None = 30,
    grace_period: int | None = 120,
) -> BaseStorage:
    """An Optuna storage for ``storage``.

    Args:
        storage: ``None`` for :data:`DEFAULT_STORAGE` (a SQLite file in the working
            directory); ``":memory:"``; an RDB URL (``sqlite:///study.db``,
            ``postgresql://user@host:5432/db``); ``journal:<path>`` or a path ending in
            ``.log`` / ``.journal`` for a journal file; or a storage object, used as is.
        heartbeat_interval: seconds between heartbeats of a running trial (RDB only;
            ``None`` disables stale-trial detection).
        grace_period: seconds without a heartbeat after which a running trial is stale.
    """
    if isinstance(storage, BaseStorage):
        return storage
    url = DEFAULT_STORAGE if storage is None else str(storage)
    if url in (":memory:", "memory"):
        return InMemoryStorage()
    if url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES):
        path = Path(url.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ConfigError(
            f"storage {url!r} is neither a database URL nor a journal file; use e.g. 'sqlite:///study.db', "
            "'postgresql://user@host/db', 'journal:study.log' or ':memory:'"
        )
    kwargs: dict = {}
    if url.startswith("sqlite"):
        # Concurrent workers on one SQLite file wait for the lock instead of failing at once.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
        db = url.split(":///", 1)[-1]
        if db and db != ":memory:":
            Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("postgresql://") and _has("psycopg2") and not _has("psycopg"):
        # SQLAlchemy 2.1 defaults to psycopg 3; the 'postgres' extra installs psycopg2.
        url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    try:
        with quiet_optuna():
            if heartbeat_interval:
                kwargs.update(
                    heartbeat_interval=int(heartbeat_interval),
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=requeue_stale(grace_period or 2 * int(heartbeat_interval)),
                )
            rdb = _open_rdb(url, kwargs)
            if url.startswith("sqlite"):
                _fast_sqlite(rdb)
            return rdb
    except Exception as exc:  # SQLAlchemy raises driver-specific errors
        raise ConfigError(
            f"cannot open the study storage {url!r}: {exc}. For PostgreSQL install psycopg2-binary "
            "(pip install 'automl-mpq[postgres]') and check that the server accepts connections."
        ) from exc


class BatchedRDBStorage(RDBStorage):
    """Optuna's RDB storage that can write a new trial's parameters in one transaction.

    Optuna writes every suggested parameter in a transaction of its own (find the trial,
    insert, commit), 52 of them for a ResNet-20 trial: much of what a trial's ``ask`` costs on
    SQLite (``benchmarks/study_storage.py``), and as many round trips to a
    PostgreSQL server. Inside :meth:`batched_params` the parameters this thread suggests are
    held and written together, with Optuna's checks (the trial is still updatable, each
    distribution is compatible with the study's), when the block ends. A reader in between
    (another worker) sees the new RUNNING trial without parameters for that moment, which
    the samplers skip as they skip a trial that has not suggested yet.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held = threading.local()

    @contextlib.contextmanager
    def batched_params(self) -> Iterator[None]:
        """Hold this thread's ``set_trial_param`` calls and write them in one transaction on exit."""
        if getattr(self._held, "params", None) is not None:  # nested: the outer block writes them
            yield
            return
        self._held.params = []
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            held, self._held.params = self._held.params, None
            # Written even when the block failed, as Optuna would have written them one by one;
            # a write error then must not hide the error that ended the block.
            with contextlib.suppress(Exception) if failed else contextlib.nullcontext():
                self._write_params(held)

    def _set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                         distribution: BaseDistribution, previous_distribution: BaseDistribution | None) -> None:
        held = getattr(self._held, "params", None)
        if held is None:
            super()._set_trial_param(trial_id, param_name, param_value_internal, distribution, previous_distribution)
        else:
            held.append((trial_id, param_name, param_value_internal, distribution, previous_distribution))

    def _write_params(self, held: list[tuple[int, str, float, BaseDistribution, BaseDistribution | None]]) -> None:
        if not held:
            return
        with _create_scoped_session(self.scoped_session, True) as session:
            checked: set[int] = set()
            for trial_id, name, value, dist, previous in held:
                if previous is None or trial_id not in checked:  # the first of a trial, or a parameter new to the study
                    self._set_trial_param_without_commit(session, trial_id, name, value, dist, previous)
                    checked.add(trial_id)
                    continue
                check_distribution_compatibility(previous, dist)
                session.add(rdb_models.TrialParamModel(trial_id=trial_id, param_name=name, param_value=value,
                                                       distribution_json=distribution_to_json(dist)))


@contextlib.contextmanager
def batched_params(storage: BaseStorage) -> Iterator[None]:
    """:meth:`BatchedRDBStorage.batched_params` for such a storage; nothing for another."""
    with storage.batched_params() if isinstance(storage, BatchedRDBStorage) else contextlib.nullcontext():
        yield


def _open_rdb(url: str, kwargs: dict, attempts: int = 4) -> RDBStorage:
    """Open an RDB storage; workers that start together on a new database race to create its
    schema (PostgreSQL: 'type studydirection already exists'; SQLite: 'UNIQUE constraint failed:
    alembic_version.version_num' or 'table ... already exists'), so the loser retries."""
    import time

    for attempt in range(attempts):
        try:
            return BatchedRDBStorage(url, **kwargs)
        except Exception as exc:  # noqa: BLE001 - driver-specific; re-raised on the last attempt
            text = str(exc)
            raced = "already exists" in text or "UNIQUE constraint failed: alembic_version" in text
            if attempt == attempts - 1 or not raced:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _fast_sqlite(storage: RDBStorage) -> None:
    """Write-ahead logging with ``synchronous=NORMAL``: a commit no longer waits for an
    fsync (Optuna commits once per suggested parameter, ~50 per trial here, and an fsync
    per commit dominates a trial's storage time). A process crash loses nothing; only a power cut can lose
    the last commits."""
    from sqlalchemy import event, text

    def on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001 - SQLAlchemy's signature
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(storage.engine, "connect", on_connect)
    # The pool still holds the connection that created the schema, made before the
    # listener: drop it, or every commit keeps paying the fsync (benchmarks/study_storage.py
    # measures both).
    storage.engine.dispose()
    with storage.engine.connect() as conn:
        conn.execute(text("PRAGMA journal_mode=WAL"))


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Silence Optuna's notes that heartbeats are experimental and meant for ``Study.optimize``:
    this module runs the heartbeat thread that ``optimize`` would run, around ask/tell."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        # CMA-ES is told the excess in its value instead (agents.optuna_search).
        warnings.filterwarnings("ignore", message="Constraints have been set, but CmaEsSampler")
        yield


def heartbeat_enabled(storage: BaseStorage) -> bool:
    return isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None


@contextlib.contextmanager
def heartbeat(storage: BaseStorage, trial_id: int) -> Iterator[None]:
    """Record heartbeats of ``trial_id`` while the block runs (a no-op without heartbeats)."""
    inner = storage
    if not isinstance(inner, RDBStorage) or not heartbeat_enabled(inner):
        yield
        return
    interval = inner.get_heartbeat_interval()
    stop = threading.Event()

    def beat() -> None:
        while True:
            inner.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale(study: optuna.Study, storage: BaseStorage) -> None:
    """Fail (and re-enqueue) trials of ``study`` (opened on ``storage``) whose worker stopped sending heartbeats."""
    if heartbeat_enabled(storage):
        with quiet_optuna():
            optuna.storages.fail_stale_trials(study)


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str) -> bool:
    """Queue the parameters of ``trial`` (failed because its worker died) again, recording
    ``reason`` and the failed trial's number; ``False`` after :data:`MAX_RETRIES` retries."""
    retries = int(trial.user_attrs.get("retry_count", 0))
    if retries >= MAX_RETRIES:
        return False
    attrs = {**{k: v for k, v in trial.user_attrs.items() if k == "warm_start"},
             "retry_of": trial.number, "retry_reason": reason, "retry_count": retries + 1}
    study.enqueue_trial(trial.params, user_attrs=attrs)
    return True


def requeue_stale(grace: int) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Optuna's stale-trial callback for a storage whose grace period is ``grace`` seconds: a
    trial failed for a missing heartbeat is queued again, the reason naming the grace period."""
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        requeue(study, trial, f"no heartbeat from its worker for {grace} s (worker on another host gone?)")
    return callback
