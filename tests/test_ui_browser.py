"""The MLflow UI in a real headless browser: `automl ui` on a finished search, best child opened.

Needs Chromium (Debian: `apt-get install chromium`). Without it the test is skipped, unless
the environment variable CI is set, where a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from automl.runs.config import SearchConfig
from automl.runs.runner import run_search
from automl.tracking.tracker import default_tracking_uri
from automl.tracking.ui import experiment_path, run_path

pytestmark = pytest.mark.slow

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1600,1200", "--virtual-time-budget=30000"]


def _browser() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but no chromium is on PATH; install it (apt-get install chromium)")
        pytest.skip("no chromium on PATH: `make test-slow` needs it for the UI test (apt-get install chromium)")
    return path


class _Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th") and self.tables and self.tables[-1]:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"automl ui exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"automl ui did not answer on {url} within {timeout:.0f} s")


def _render(browser: str, url: str, screenshot: Path | None = None) -> str:
    with tempfile.TemporaryDirectory() as profile:
        flags = [*FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=240).stdout
        if screenshot is not None:
            subprocess.run([browser, *flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=240)
    return dom


def test_best_child_run_shows_its_per_layer_table_in_the_ml_view(tmp_path):
    browser = _browser()
    from mlflow import MlflowClient

    from tests.tasks import tiny

    cfg = SearchConfig(task="tests.tasks:tiny", searcher={"name": "random"}, run={"evaluations": 5, "output": str(tmp_path)}, finetune={"steps": 2})
    result = run_search(cfg, task=tiny(), quiet=True)
    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path))
    exp = client.get_experiment_by_name("automl-mpq")
    (best,) = client.search_runs([exp.experiment_id], "tags.best = 'true'")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "automl", "ui", "--output", str(tmp_path), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_healthy(url, proc)
        dom = _render(browser, f"{url}/{run_path(exp.experiment_id, best.info.run_id)}", tmp_path / "best_child.png")
        runs_dom = _render(browser, f"{url}/{experiment_path(exp.experiment_id)}", tmp_path / "runs.png")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # automl ui and the MLflow server it started
        proc.wait(timeout=30)
    assert f"trial-{result.best.number:04d}" in dom
    parser = _Tables()
    parser.feed(dom)
    layer_tables = [t for t in parser.tables if t and "W bits per channel group" in t[0]]
    assert layer_tables, f"no per-layer table on the best child's page ({len(parser.tables)} tables)"
    header, *rows = layer_tables[0]
    assert header == ["layer", "W bits per channel group", "A bits", "pruned channels", "size kB", "size share"]
    assert [r[0] for r in rows] == [name for name, _ in result.best.policy]
    for row, (_, lp) in zip(rows, result.best.policy, strict=True):
        assert row[2] == str(lp.act_bits)
        assert row[3].endswith(f"/{len(lp.weight_bits)}")
    # The classic machine-learning view (model registry in the side bar), not the GenAI one (judges, prompts).
    assert "Model registry" in dom and "Judges" not in dom
    # The runs table opens on the shared view: the compared metrics are columns.
    for column in ("val_accuracy", "test_accuracy", "size_kB", "bitops_M"):
        assert column in runs_dom, column
