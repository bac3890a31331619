"""MLflow tracking of a search: one parent run, one nested child run per evaluated policy.

Child runs are written by a background thread through ``MlflowClient.log_batch`` (one
call for all metrics, params and tags of a trial), so logging overlaps evaluation instead
of adding to it. Every child run carries its trial number as a tag, which is what makes a
resumed search log each policy exactly once.
"""

from __future__ import annotations

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

from automl.errors import TrackingError
from automl.mlflow_ui import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, NOTE_TAG, VIEW_TAG, view_state
from automl.units import shown

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "automl.trial"
BEST_TAG = "best"


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
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    elif not uri.startswith(("file:", "postgresql", "mysql", "databricks")):
        raise TrackingError(f"tracking URI {uri!r} is not understood; use sqlite:///path.db, http://host:port or a file: URI")


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


class MlflowTracker:
    """Writes a search to MLflow. Thread-safe; :meth:`close` flushes pending trials."""

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None) -> None:
        _quiet_mlflow()
        check_tracking(uri)
        from mlflow import MlflowClient

        self.uri = uri
        try:
            self.client = MlflowClient(tracking_uri=uri)
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
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._errors: list[str] = []
        self._worker = threading.Thread(target=self._drain, name="mlflow-logger", daemon=True)
        self._worker.start()
        self.log_seconds = 0.0

    # background writer ---------------------------------------------------------------
    def _drain(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            start = time.perf_counter()
            try:
                job()
            except Exception as exc:  # noqa: BLE001 - logged, never kills the search
                self._errors.append(str(exc))
            self.log_seconds += time.perf_counter() - start

    def flush(self) -> None:
        done = threading.Event()
        self._queue.put(done.set)
        done.wait()

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._worker.join(timeout=30)

    @property
    def errors(self) -> list[str]:
        return list(self._errors)

    # parent --------------------------------------------------------------------------
    def start_parent(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        from mlflow.entities import Param, RunTag

        run = self.client.create_run(self.experiment_id, run_name=name, tags=dict(tags))
        self.parent_id = run.info.run_id
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
        self.client.update_run(run_id, status="RUNNING")

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
        """The experiment's shared runs-table view (columns, order); see :mod:`automl.mlflow_ui`."""
        self.client.set_experiment_tag(self.experiment_id, VIEW_TAG, view_state(latency_profiles))

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

        parent = self.parent_id
        assert parent is not None

        def job() -> None:
            run = self.client.create_run(
                self.experiment_id, run_name=f"trial-{number:04d}", tags={PARENT_TAG: parent, TRIAL_TAG: str(number)}
            )
            rid = run.info.run_id
            now = int(time.time() * 1000)
            self.client.log_batch(
                rid,
                metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                params=[Param(k, str(v)) for k, v in params.items()],
                tags=[RunTag(k, str(v)) for k, v in tags.items()],
            )
            self.client.log_text(rid, policy_json, "policy.json")
            self.client.set_terminated(rid, "FINISHED")

        self._queue.put(job)

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
