"""The life of a search process: signals, an owner file, and closing runs a crash left open.

A parent run must end FINISHED, FAILED or KILLED. SIGINT already raises
``KeyboardInterrupt``; :func:`handle_termination` turns SIGTERM into :class:`Terminated`,
so the runner's ``finally`` sets the status and flushes the journal. A ``kill -9`` runs no
code at all, so each search writes ``owner.json`` (pid, host, process start time) into its
run directory and removes it when it ends; :func:`close_stale_runs` (called by a resume and
by ``automl best``) marks a RUNNING parent KILLED when its owner process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

OWNER = "owner.json"
RUN_DIR_TAG = "automl.run_dir"  # = automl.tracking.tracker.RUN_DIR_TAG (not imported: this module loads with the CLI)


class Terminated(BaseException):  # noqa: N818 - like KeyboardInterrupt, not an error
    """Raised in the main thread when the process receives SIGTERM."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


_received: list[int] = []  # the SIGTERM of the innermost handle_termination block, once it has fired


@contextlib.contextmanager
def handle_termination() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` (once; a second SIGTERM during
    clean-up is ignored). Only the main thread can install handlers; elsewhere a no-op.

    Python runs a signal handler at the next bytecode of the main thread, and that can be
    inside a ``__del__`` or a weakref callback, where an exception is printed and dropped,
    and the search would run on to its end (the likely cause of one CI failure of
    ``test_sigterm_ends_the_parent_killed``, where a SIGTERM was ignored; not reproduced in
    six reruns). So the signal is also kept, and :func:`raise_if_terminated`, called after
    every trial, raises it again.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def on_term(signum: int, _frame: Any) -> None:
        nonlocal fired
        if not fired:
            fired = True
            _received.append(signum)
            raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _received.clear()


def raise_if_terminated() -> None:
    """Raise :class:`Terminated` if a SIGTERM arrived in this :func:`handle_termination` block
    (its first raise may have been dropped; see there). A no-op otherwise."""
    if _received:
        raise Terminated(_received[0])


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def write_owner(run_dir: Path) -> None:
    """Record this process as the owner of ``run_dir``."""
    info = {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid())}
    (run_dir / OWNER).write_text(json.dumps(info))


def remove_owner(run_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (run_dir / OWNER).unlink()


def owner_alive(run_dir: Path) -> bool | None:
    """Whether the process that owns ``run_dir`` still runs: ``None`` when that cannot be
    told from here (another host), ``False`` when there is no owner file or it is gone."""
    try:
        info = json.loads((run_dir / OWNER).read_text())
        pid, host = int(info["pid"]), str(info["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname():
        return None
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = info.get("start")
    return start is None or _start_time(pid) in (None, start)


def close_stale_runs(client: Any, experiment_ids: list[str]) -> list[str]:
    """Mark KILLED every RUNNING search parent (and its RUNNING children) whose owner
    process is gone; returns the parent run ids it closed."""
    closed = []
    runs = client.search_runs(experiment_ids, "attributes.status = 'RUNNING' and tags.`automl.kind` = 'search'", max_results=1000)
    for run in runs:
        run_dir = run.data.tags.get(RUN_DIR_TAG)
        if not run_dir or owner_alive(Path(run_dir)) is not False:
            continue
        children = client.search_runs(
            [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}' and attributes.status = 'RUNNING'",
            max_results=5000,
        )
        for child in children:
            client.set_terminated(child.info.run_id, "KILLED")
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    return closed


def close_stale_in_store(uri: str) -> list[str]:
    """:func:`close_stale_runs` over every experiment of the tracking store at ``uri``."""
    from automl.runs.uris import check_tracking_uri
    from automl.tracking.tracker import _quiet_mlflow

    _quiet_mlflow()
    check_tracking_uri(uri)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return close_stale_runs(client, ids) if ids else []


def close_if_stale(run_dir: Path) -> bool:
    """Close the parent run of ``run_dir`` as KILLED if a dead process left it RUNNING
    (the resume then reopens it, or leaves it closed if the resume fails)."""
    try:
        state = json.loads((run_dir / "state.json").read_text())
        saved = json.loads((run_dir / "config.json").read_text())
        parent = state["parent_run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if owner_alive(run_dir) is not False or state.get("status") in ("FINISHED", "FAILED", "KILLED"):
        return False
    from automl.tracking.tracker import _quiet_mlflow, default_tracking_uri

    _quiet_mlflow()
    uri = saved.get("tracking_uri") or default_tracking_uri(run_dir.parent.parent)
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        run = client.get_run(parent)
        if run.info.status != "RUNNING":
            return False
        close_stale_runs(client, [run.info.experiment_id])
    except Exception:  # noqa: BLE001 - best effort; the resume reports a store it cannot open itself
        return False
    return True
