"""``automl ui``: the MLflow server on 127.0.0.1, its address printed at once and, once it answers,
the links that open each search (read from the server's REST API, so this process never imports
MLflow: the server's own start-up is the wait)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from automl.errors import ConfigError
from automl.runs.lifecycle import Terminated, handle_termination


def cmd_ui(uri: str, output: str, port: int, experiment: str) -> int:
    """Serve the store at ``uri`` (artifacts under ``output``) on 127.0.0.1:``port`` until Ctrl-C or SIGTERM."""
    from automl.runs.uris import check_tracking_uri
    from automl.tracking.tracker import artifact_root

    check_tracking_uri(uri)
    check_port(port)
    # Quiet: no access log per request, no warnings from the server's own imports.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--default-artifact-root",
        artifact_root(output), "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--uvicorn-opts", "--log-level warning --no-access-log",
    ]
    # Its own session, so stopping it reaches the server's worker processes too.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        with handle_termination():
            return _serve(proc, port, uri, experiment)
    except KeyboardInterrupt:
        return 0
    except Terminated as exc:
        return 128 + exc.signum
    finally:
        _stop_server(proc)


def check_port(port: int, host: str = "127.0.0.1") -> None:
    """Refuse a port that is out of range or taken, suggesting a free one (before the server starts)."""
    import socket

    if not 0 < port < 65536:
        raise ConfigError(f"--port {port} is not a TCP port; expected 1-65535, e.g. --port 5000")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a closed port's TIME_WAIT is free
        try:
            s.bind((host, port))
            return
        except OSError as exc:
            why = exc.strerror or str(exc)
    free = _free_port(host, port)
    raise ConfigError(
        f"--port {port} on {host} is not available ({why}): another program (perhaps another `automl ui`) listens "
        f"there. Pass a free port, e.g. --port {free} (free now), or stop the other program."
    )


def _free_port(host: str, near: int) -> int:
    import socket

    for port in [*range(near + 1, min(near + 21, 65536)), 0]:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    return 0


def _stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (its workers too), SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _serve(proc: subprocess.Popen, port: int, uri: str, experiment: str) -> int:
    """Print the address at once, then, when the server answers, the links to open (read from the
    server's REST API: no MLflow import in this process)."""
    url = f"http://127.0.0.1:{port}"
    print(f"MLflow UI: {url}  (starting; store {uri}; Ctrl-C stops it)", flush=True)
    import urllib.request

    started = time.perf_counter()
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                break
        except OSError:
            if proc.poll() is not None:
                print(f"the MLflow server exited with code {proc.returncode} before answering on {url}", file=sys.stderr)
                return 1
            if time.perf_counter() - started > 300:
                print(f"the MLflow server did not answer on {url} within 300 s", file=sys.stderr)
                return 1
            time.sleep(0.2)
    from automl.tracking.ui import ui_banner

    experiment_id, searches = _experiment_searches(url, experiment)
    print(f"ready in {time.perf_counter() - started:.0f} s. " + ui_banner(url, experiment, experiment_id, searches), flush=True)
    return proc.wait()  # Ctrl-C and SIGTERM: the caller stops the server's process group


def _experiment_searches(url: str, experiment: str, newest: int = 5) -> tuple[str | None, list[dict[str, str]]]:
    """The experiment's id and its newest searches, from the running server (nothing on an error)."""
    import json
    import urllib.parse
    import urllib.request

    api = f"{url}/api/2.0/mlflow"
    try:
        query = urllib.parse.urlencode({"experiment_name": experiment})
        with urllib.request.urlopen(f"{api}/experiments/get-by-name?{query}", timeout=10) as resp:
            experiment_id = json.load(resp)["experiment"]["experiment_id"]
    except (OSError, ValueError, KeyError):
        return None, []
    body = json.dumps({"experiment_ids": [experiment_id], "filter": "tags.`automl.kind` = 'search'",
                       "max_results": newest, "order_by": ["attributes.start_time DESC"]}).encode()
    request = urllib.request.Request(f"{api}/runs/search", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            runs = json.load(resp).get("runs", [])
    except (OSError, ValueError):
        return experiment_id, []
    searches = []
    for run in runs:
        tags = {t["key"]: t["value"] for t in run.get("data", {}).get("tags", [])}
        info = run["info"]
        searches.append({"run_id": info["run_id"], "name": info.get("run_name", info["run_id"]),
                         "status": info.get("status", "?"), "budget": tags.get("budget", "?")})
    return experiment_id, searches
