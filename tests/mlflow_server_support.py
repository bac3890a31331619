"""Start and stop a real ``mlflow server`` (tracking server) for the tests.

The server is the one the README's multi-host recipe runs: a SQL backend store (PostgreSQL
in the tests that use it), artifacts served through the server (``--artifacts-destination``,
so clients on other hosts upload them over HTTP), one request worker, and MLflow's job
runner off (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: it would start a Huey consumer the
tests do not need). It runs in its own session and is stopped by its process group (the
uvicorn workers it starts go with it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class MlflowServer:
    url: str
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 15 s."""
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc.poll()


def start_mlflow_server(
    backend_store_uri: str, artifacts: Path, host: str = "127.0.0.1", port: int | None = None,
    timeout: float = 180.0,
) -> MlflowServer:
    """Start ``mlflow server`` on ``host`` and wait until ``/health`` answers 200.

    Raises ``RuntimeError`` (with the end of the server's log) if it exits or does not
    answer within ``timeout`` seconds; the process is stopped in both cases."""
    port = port or free_port(host)
    artifacts.mkdir(parents=True, exist_ok=True)
    log = artifacts.parent / f"mlflow-server-{port}.log"
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", str(artifacts), "--host", host, "--port", str(port), "--workers", "1",
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    server = MlflowServer(f"http://{host}:{port}", proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}: {server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=2) as resp:  # noqa: S310 - our own server
                if resp.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"mlflow server at {server.url} did not answer /health in {timeout:.0f} s: {server.log_tail()}")
