"""Check that `automl ui` shows every search of a store on its own: start it, render the pages in
headless Chromium, check them and save a screenshot of each.

    .venv/bin/python scripts/check_ui.py --output automl-runs --screenshots automl-runs/ui

Checks, for every search (parent run) of the experiment:
  * `automl ui` prints a link to the search's own view;
  * that view lists only the search's runs, and a finished search's best trial first;
  * the best trial's page lists its per-layer table (the `layer NN: <name>` parameters);
and that the experiment's view groups the runs by search. Exits 1 when a check fails, 2 when
there is nothing to check, 3 without Chromium. Stops only the server it started.
"""

from __future__ import annotations

import argparse
import os
import re
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
    "--hide-scrollbars", "--window-size=1600,1100", "--virtual-time-budget=30000",
]
RUN_LINK = re.compile(r'href="#/experiments/\d+/runs/([0-9a-f]{32})')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
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


def render(browser: str, url: str, screenshot: Path) -> str:
    """The page's DOM after its scripts ran; its screenshot saved on the way (one browser start)."""
    with tempfile.TemporaryDirectory() as profile:
        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={screenshot.resolve()}", "--dump-dom"]
        return subprocess.run([browser, *flags, url], capture_output=True, text=True, timeout=240).stdout


def run_ids_in_order(dom: str) -> list[str]:
    """The run ids the runs table links to, top row first."""
    return list(dict.fromkeys(RUN_LINK.findall(dom)))


def read_banner(proc: subprocess.Popen, timeout: float = 120) -> str:
    """What `automl ui` printed up to its list of searches (it prints them once the server answers)."""
    import threading

    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.time() + timeout
    while time.time() < deadline and not any(line.startswith("ready in") for line in lines):
        time.sleep(0.2)
    time.sleep(1)  # the search lines follow the "ready" line at once
    return "".join(lines)


def check(output: str, experiment: str, shots: Path, browser: str) -> list[str]:
    """Every failed check as one line (empty when all pass)."""
    from mlflow import MlflowClient

    from automl.tracking.tracker import BEST_TAG, PARENT_TAG, default_tracking_uri
    from automl.tracking.ui import experiment_path, run_path, search_path

    client = MlflowClient(tracking_uri=default_tracking_uri(output))
    exp = client.get_experiment_by_name(experiment)
    parents = client.search_runs([exp.experiment_id], "tags.`automl.kind` = 'search'", max_results=1000) if exp else []
    if not parents:
        print(f"no search in experiment {experiment!r} of {output}; run one first", file=sys.stderr)
        raise SystemExit(2)
    shots.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    automl = Path(sys.executable).with_name("automl")
    proc = subprocess.Popen([str(automl), "ui", "--output", output, "--port", str(port), "--experiment", experiment],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    failures = []
    try:
        wait_healthy(url, proc)
        banner = read_banner(proc)
        grouped = render(browser, f"{url}/{experiment_path(exp.experiment_id)}", shots / "all_searches.png")
        if "automl.search" not in grouped:
            failures.append("the experiment's view is not grouped by search (no 'Group by: automl.search')")
        for parent in parents:
            name, pid = parent.info.run_name, parent.info.run_id
            link = f"{url}/{search_path(exp.experiment_id, pid)}"
            if link not in banner:
                failures.append(f"search {name}: `automl ui` did not print its link {link}")
            children = client.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` = '{pid}'", max_results=5000)
            own = {pid} | {c.info.run_id for c in children}
            dom = render(browser, link, shots / f"{name}.png")
            shown = run_ids_in_order(dom)
            if not shown:
                failures.append(f"search {name}: its view lists no run")
                continue
            strangers = [r for r in shown if r not in own]
            if strangers:
                failures.append(f"search {name}: its view lists {len(strangers)} run(s) of other searches")
            best = [c for c in children if c.data.tags.get(BEST_TAG) == "true"
                    and c.data.tags.get("best_for", "").startswith("budget:")]
            if parent.info.status == "FINISHED" and best:
                if shown[0] != best[0].info.run_id:
                    failures.append(f"search {name}: the first row is {shown[0]}, not its best trial {best[0].info.run_id}")
                layers = [k for k in best[0].data.params if k.startswith("layer ")]
                page = render(browser, f"{url}/{run_path(exp.experiment_id, best[0].info.run_id)}", shots / f"{name}-best.png")
                missing = [k for k in layers if k not in page]
                if not layers or missing:
                    failures.append(f"search {name}: the best trial's page lacks its per-layer rows {missing or '(none logged)'}")
            print(f"search {name} ({parent.info.status}): {len(shown)} runs listed, first {shown[0]}; "
                  f"screenshot {shots / (name + '.png')}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="automl-runs", help="the --output of the searches (holds mlflow.db)")
    parser.add_argument("--experiment", default="automl-mpq")
    parser.add_argument("--screenshots", default=None, help="folder for the screenshots (default <output>/ui)")
    args = parser.parse_args()
    browser = chromium()
    if browser is None:
        print("no chromium on PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 3
    if not (Path(args.output) / "mlflow.db").is_file():
        print(f"no tracking store {Path(args.output) / 'mlflow.db'}; run a search with --output {args.output} first",
              file=sys.stderr)
        return 2
    failures = check(args.output, args.experiment, Path(args.screenshots or Path(args.output) / "ui"), browser)
    for line in failures:
        print(f"FAILED: {line}", file=sys.stderr)
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
