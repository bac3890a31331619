"""Check that `automl ui` shows a search's runs: start it, render the experiment page in
headless Chromium, look for the runs in the page and save a screenshot.

    .venv/bin/python scripts/check_ui.py --output automl-runs --screenshot ui.png

Exits non-zero when the page does not list the runs. Stops only the server it started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1400,900", "--virtual-time-budget=20000",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"automl ui exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"automl ui did not answer on {url} within {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="automl-runs", help="run directory of a finished search")
    parser.add_argument("--experiment", default="automl-mpq")
    parser.add_argument("--screenshot", default="automl-runs/ui.png")
    args = parser.parse_args()
    browser = chromium()
    if browser is None:
        print("no chromium on PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 3
    from mlflow import MlflowClient

    from automl.tracking.tracker import default_tracking_uri
    from automl.tracking.ui import experiment_path

    client = MlflowClient(tracking_uri=default_tracking_uri(args.output))
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None:
        print(f"no experiment {args.experiment!r} in {args.output}; run a search first", file=sys.stderr)
        return 2
    parent = client.search_runs([exp.experiment_id], "tags.`automl.kind` = 'search'", max_results=1)[0]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    automl = Path(sys.executable).with_name("automl")
    proc = subprocess.Popen([str(automl), "ui", "--output", args.output, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(url, proc)
        page = f"{url}/{experiment_path(exp.experiment_id)}"  # the ML view, on the shared runs-table view
        with tempfile.TemporaryDirectory() as profile:
            flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
            dom = subprocess.run([browser, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
            Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([browser, *flags, f"--screenshot={Path(args.screenshot).resolve()}", page],
                           capture_output=True, timeout=120)
        name = parent.info.run_name
        found = name in dom and "val_accuracy" in dom
        print(f"experiment page {page}: parent run {name!r} {'listed' if found else 'NOT listed'} "
              f"with metric columns; screenshot {args.screenshot}")
        return 0 if found else 1
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


if __name__ == "__main__":
    raise SystemExit(main())
