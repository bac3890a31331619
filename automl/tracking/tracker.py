"""MLflow tracking of a search: one parent run, one nested child run per evaluated policy.

Child runs are written by a background thread through ``MlflowClient.log_batch`` (one
call for all metrics, params and tags of a trial), so logging overlaps evaluation instead
of adding to it. Every child run carries its trial number as a tag, which is what makes a
resumed search log each policy exactly once.

Every client call goes through :class:`RetryingClient`: a failed call is retried (at most
:data:`WRITE_ATTEMPTS` tries, backoff doubling from :data:`BACKOFF` s), then raised as
:class:`~automl.errors.TrackingError`. A write on the background thread that still fails
is never dropped silently: it is counted in :attr:`MlflowTracker.failures`, appended at
once to ``mlflow_write_failures.jsonl`` in the run directory, printed with the search's
summary, and stored as the tag ``mlflow_write_failures`` on the parent run as soon as the
store answers again (at the end of the search, or when a resume reattaches the parent).
Once a call has failed every try, the store counts as down: later calls get one try each
(no backoff) until one succeeds, so a dead server does not stall the search.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from automl import faults
from automl.cost.units import shown
from automl.errors import TrackingError
from automl.paths import check_sqlite_creatable
from automl.tracking.ui import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    NOTE_TAG,
    RANK,
    SEARCH_TAG,
    VIEW_PREFIX,
    VIEW_TAG,
    search_view_key,
    search_view_state,
    view_state,
)

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "automl.trial"
RUN_DIR_TAG = "automl.run_dir"  # a search parent's run directory (automl.runs.lifecycle names it too)
BEST_TAG = "best"
FAILURES_TAG = "mlflow_write_failures"
FAILURES_FILE = "mlflow_write_failures.jsonl"
WRITE_ATTEMPTS = 4
BACKOFF = 0.5
# MLflow errors that another try cannot fix (the request itself is wrong).
_FINAL_CODES = ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST")


def default_tracking_uri(output: str | Path) -> str:
    """The embedded store: a SQLite file under the run directory."""
    path = Path(output).resolve() / "mlflow.db"
    return f"sqlite:///{path}"


def artifact_root(output: str | Path) -> str:
    return (Path(output).resolve() / "mlartifacts").as_uri()


def check_tracking(uri: str, timeout: float = 3.0) -> None:
    """Fail fast, before any evaluation work, when the tracking store cannot be reached."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - user-given tracking server
                if resp.status != 200:
                    raise TrackingError(f"MLflow tracking server {uri} answered {resp.status} on /health")
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(
                f"cannot reach the MLflow tracking server at {uri} ({exc}). Start it (e.g. `automl ui`), fix "
                "--tracking-uri, or leave --tracking-uri empty to log to the local SQLite store."
            ) from exc
    elif uri.startswith("sqlite:///"):
        _check_creatable(sqlite_path(uri), uri)
    elif not uri.startswith(("file:", "postgresql", "mysql", "databricks")):
        raise TrackingError(f"tracking URI {uri!r} is not understood; use sqlite:///path.db, http://host:port or a file: URI")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI, else ``None``."""
    return Path(uri[len("sqlite:///") :]).expanduser() if uri.startswith("sqlite:///") else None


def _check_creatable(path: Path | None, uri: str) -> None:
    """A SQLite store can be opened or created at ``path`` (see :func:`automl.paths.check_sqlite_creatable`)."""
    if path is not None:
        check_sqlite_creatable(path, f"tracking store {uri!r}", TrackingError, "pass a database file path",
                               ". Pass a writable --output (the store is <output>/mlflow.db) or another --tracking-uri.")


def _quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
        out[prefix] = text[:500]


class RetryingClient:
    """An ``MlflowClient`` whose every call is retried with backoff, then raised as
    :class:`TrackingError` naming the store and the call."""

    def __init__(self, inner: Any, uri: str, attempts: int | None = None, backoff: float | None = None) -> None:
        self.inner, self.uri = inner, uri
        self.attempts = WRITE_ATTEMPTS if attempts is None else int(attempts)
        self.backoff = BACKOFF if backoff is None else float(backoff)
        self.down = False

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.inner, name)
        if not callable(fn):
            return fn

        def call(*args: Any, **kwargs: Any) -> Any:
            tries = 1 if self.down else self.attempts
            for i in range(tries):
                try:
                    out = fn(*args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - MLflow, HTTP and database errors alike
                    if getattr(exc, "error_code", None) in _FINAL_CODES:
                        raise TrackingError(f"MLflow store {self.uri} refused {name}: {_first_line(exc)}") from exc
                    if i < tries - 1:
                        time.sleep(self.backoff * 2**i)
                        continue
                    self.down = True
                    raise TrackingError(
                        f"MLflow store {self.uri} failed on {name} after {tries} attempt(s): {_first_line(exc)}"
                    ) from exc
                self.down = False
                return out
            raise AssertionError("unreachable")

        return call


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


class MlflowTracker:
    """Writes a search to MLflow. Thread-safe; :meth:`close` flushes pending trials.

    Args:
        failure_log: a JSON-lines file that gets one line per background write that
            failed every try (the run directory's :data:`FAILURES_FILE`).
    """

    def __init__(
        self, uri: str, experiment: str, artifact_location: str | None = None, failure_log: Path | None = None,
    ) -> None:
        _quiet_mlflow()
        check_tracking(uri)
        db = sqlite_path(uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        from mlflow import MlflowClient

        self.uri = uri
        self.failure_log = failure_log
        try:
            self.client: Any = RetryingClient(MlflowClient(tracking_uri=uri), uri)
            exp = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (
                exp.experiment_id
                if exp
                else self.client.create_experiment(
                    experiment,
                    artifact_location=artifact_location,
                    # MLflow 3 opens GenAI experiments on a traces page; ours are model-training runs.
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, VIEW_TAG: view_state()},
                )
            )
            if exp is not None and EXPERIMENT_KIND_TAG not in exp.tags:  # an experiment made by an older version
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        except Exception as exc:  # noqa: BLE001 - any store failure is reported the same way
            raise TrackingError(f"cannot open MLflow experiment {experiment!r} at {uri}: {exc}") from exc
        self.parent_id: str | None = None
        self.search_name = ""  # the parent run's name: every run of the search carries it (SEARCH_TAG)
        self._queue: queue.Queue[tuple[str, Callable[[], None]] | None] = queue.Queue()
        self.failures: list[dict[str, str]] = []
        self._worker = threading.Thread(target=self._drain, name="mlflow-logger", daemon=True)
        self._worker.start()
        self.log_seconds = 0.0

    # background writer ---------------------------------------------------------------
    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            what, job = item
            start = time.perf_counter()
            try:
                job()
            except Exception as exc:  # noqa: BLE001 - reported, never kills the search
                self._record_failure(what, exc)
            self.log_seconds += time.perf_counter() - start

    def _record_failure(self, what: str, exc: BaseException) -> None:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "what": what, "error": str(exc)}
        self.failures.append(entry)
        if self.failure_log is not None:
            try:
                with self.failure_log.open("a") as fh:
                    fh.write(json.dumps(entry) + "\n")
            except OSError:
                pass  # still counted in memory and printed with the summary

    def failure_count(self) -> int:
        """Failed background writes of the whole run (every session, from the failure log)."""
        if self.failure_log is not None and self.failure_log.is_file():
            return sum(1 for line in self.failure_log.read_text().splitlines() if line.strip())
        return len(self.failures)

    def failure_summary(self) -> str:
        """One paragraph on the failed writes of this session, empty when there were none."""
        if not self.failures:
            return ""
        shown_items = "; ".join(f"{f['what']}: {f['error'][:160]}" for f in self.failures[:5])
        more = f" and {len(self.failures) - 5} more" if len(self.failures) > 5 else ""
        where = f" (all listed in {self.failure_log})" if self.failure_log is not None else ""
        return (f"MLflow: {len(self.failures)} write(s) failed after retries{where}: {shown_items}{more}. The journal "
                "keeps every policy; `automl search --resume <run dir>` logs the missing child runs once the store "
                "answers.")

    def _tag_failures(self) -> None:
        n = self.failure_count()
        if n and self.parent_id is not None:
            self.client.set_tag(self.parent_id, FAILURES_TAG, str(n))

    def flush(self) -> None:
        done = threading.Event()
        self._queue.put(("flush", done.set))
        done.wait()

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._worker.join(timeout=30)

    @property
    def errors(self) -> list[str]:
        return [f["error"] for f in self.failures]

    # parent --------------------------------------------------------------------------
    def start_parent(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        from mlflow.entities import Param, RunTag

        run = self.client.create_run(self.experiment_id, run_name=name, tags={**tags, SEARCH_TAG: name})
        self.parent_id = run.info.run_id
        self.search_name = name
        self._set_search_view()
        flat: dict[str, str] = {}
        _flatten("", params, flat)
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 90):
            self.client.log_batch(self.parent_id, params=items[i : i + 90], tags=[RunTag("automl.kind", "search")])
        return self.parent_id

    def attach_parent(self, run_id: str) -> None:
        """Continue logging into an existing parent run (resume)."""
        run = self.client.get_run(run_id)
        self.parent_id = run.info.run_id
        self.search_name = run.data.tags.get(SEARCH_TAG) or run.info.run_name
        if SEARCH_TAG not in run.data.tags:  # a search begun by an earlier version
            self.client.set_tag(run_id, SEARCH_TAG, self.search_name)
        self.client.update_run(run_id, status="RUNNING")
        self._tag_failures()  # failures of an earlier session, now that the store answers

    def log_parent_metrics(self, metrics: Mapping[str, float]) -> None:
        assert self.parent_id is not None
        self.log_run_metrics(self.parent_id, metrics)

    def log_parent_json(self, obj: Any, artifact_file: str) -> None:
        assert self.parent_id is not None
        self.client.log_text(self.parent_id, json.dumps(obj, indent=2, default=str), artifact_file)

    def log_parent_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        assert self.parent_id is not None
        self.client.log_artifact(self.parent_id, str(path), artifact_path)

    def set_view(self, latency_profiles: list[str] | tuple[str, ...] = ()) -> None:
        """The experiment's shared runs-table view (grouped by search) and this search's own view,
        now ordered by ``rank``; see :mod:`automl.tracking.ui`."""
        self.client.set_experiment_tag(self.experiment_id, VIEW_TAG, view_state(latency_profiles))
        self._set_search_view(latency_profiles, ranked=True)

    def _set_search_view(self, latency_profiles: list[str] | tuple[str, ...] = (), ranked: bool = False) -> None:
        assert self.parent_id is not None
        self.client.set_experiment_tag(self.experiment_id, VIEW_PREFIX + search_view_key(self.parent_id),
                                       search_view_state(self.search_name, latency_profiles, ranked))

    def log_ranks(self, ranks: Mapping[str, int]) -> None:
        """The metric ``rank`` on each child run (run id -> rank, 1 = best), which the search's view sorts by."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for run_id, rank in ranks.items():
            self.client.log_batch(run_id, metrics=[Metric(RANK, float(rank), now, 0)])

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        """Parameters of a finished run; those it already holds (a resume) are left as they are."""
        from mlflow.entities import Param

        held = self.client.get_run(run_id).data.params
        items = [Param(k, v) for k, v in params.items() if k not in held]
        for i in range(0, len(items), 90):
            self.client.log_batch(run_id, params=items[i : i + 90])

    def set_note(self, run_id: str, markdown: str) -> None:
        """A run's description, shown (rendered as Markdown) at the top of its page."""
        self.client.set_tag(run_id, NOTE_TAG, markdown)

    def log_run_metrics(self, run_id: str, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, shown(float(v)), now, 0) for k, v in metrics.items()])

    def log_run_file(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def finish_parent(self, status: str = "FINISHED") -> None:
        self.flush()
        if self.parent_id:
            if self.failures:
                self._tag_failures()
                self.mark_unfinished_children("FAILED")
            self.client.set_terminated(self.parent_id, status)

    # children ------------------------------------------------------------------------
    def logged_trials(self) -> dict[int, str]:
        """Trial number -> child run id of the trials this parent already holds."""
        assert self.parent_id is not None
        out: dict[int, str] = {}
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], f"tags.`{PARENT_TAG}` = '{self.parent_id}'", max_results=1000, page_token=token
            )
            for r in page:
                if TRIAL_TAG in r.data.tags and r.info.status == "FINISHED":
                    out[int(r.data.tags[TRIAL_TAG])] = r.info.run_id
            token = page.token
            if not token:
                return out

    def log_trial(
        self, number: int, metrics: Mapping[str, float], params: Mapping[str, Any], tags: Mapping[str, str],
        policy_json: str,
    ) -> None:
        """Queue one child run (metrics, params, tags and the policy as a JSON artifact)."""
        from mlflow.entities import Metric, Param, RunTag

        parent, search = self.parent_id, self.search_name
        assert parent is not None

        def job() -> None:
            run = self.client.create_run(
                self.experiment_id, run_name=f"trial-{number:04d}",
                tags={PARENT_TAG: parent, TRIAL_TAG: str(number), SEARCH_TAG: search},
            )
            rid = run.info.run_id
            faults.point("mlflow-write")
            now = int(time.time() * 1000)
            try:
                self.client.log_batch(
                    rid,
                    metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                    params=[Param(k, str(v)) for k, v in params.items()],
                    tags=[RunTag(k, str(v)) for k, v in tags.items()],
                )
                self.client.log_text(rid, policy_json, "policy.json")
                self.client.set_terminated(rid, "FINISHED")
            except TrackingError:
                with contextlib.suppress(Exception):  # not left RUNNING if the store still takes this
                    self.client.inner.set_terminated(rid, "FAILED")
                raise

        self._queue.put((f"trial {number}", job))

    def tag_best(self, run_ids: Mapping[str, str]) -> None:
        """Tag child runs ``best=true`` (and which budget they are best for)."""
        self.flush()
        if self.parent_id is not None:  # a resumed search that found better: the old winners step down
            stale = self.client.search_runs(
                [self.experiment_id], f"tags.`{PARENT_TAG}` = '{self.parent_id}' and tags.{BEST_TAG} = 'true'", max_results=1000
            )
            for r in stale:
                if r.info.run_id not in run_ids.values():
                    self.client.set_tag(r.info.run_id, BEST_TAG, "false")
                    self.client.set_tag(r.info.run_id, "best_for", "(no longer best after a resume)")
        for label, rid in run_ids.items():
            self.client.set_tag(rid, BEST_TAG, "true")
            self.client.set_tag(rid, "best_for", label)

    def mark_unfinished_children(self, status: str = "KILLED") -> int:
        """Close child runs that a crash left RUNNING; returns how many."""
        assert self.parent_id is not None
        runs = self.client.search_runs([self.experiment_id], f"tags.`{PARENT_TAG}` = '{self.parent_id}'", max_results=5000)
        n = 0
        for r in runs:
            if r.info.status == "RUNNING":
                self.client.set_terminated(r.info.run_id, status)
                n += 1
        return n
