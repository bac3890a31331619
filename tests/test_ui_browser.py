"""The MLflow UI in a real headless browser: `automl ui` on two finished searches in one store.

Needs Chromium (Debian: `apt-get install chromium`). Without it the test is skipped, unless
the environment variable CI is set, where a missing browser is a failure.
"""

from __future__ import annotations

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
from html.parser import HTMLParser
from pathlib import Path

import pytest

from automl.runs.config import SearchConfig
from automl.runs.runner import run_search
from automl.tracking.tracker import default_tracking_uri
from automl.tracking.ui import run_path, search_path

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


def _search(tmp_path: Path, budget: str):
    from tests.tasks import tiny

    cfg = SearchConfig(task="tests.tasks:tiny", budget=(budget,), searcher={"name": "random"},
                       run={"evaluations": 5, "output": str(tmp_path)}, finetune={"steps": 2})
    return run_search(cfg, task=tiny(), quiet=True)


def test_two_searches_each_self_contained_best_child_shows_its_layers(tmp_path):
    """Two searches in one store: scripts/check_ui.py passes (each search's own view lists only its runs,
    best first; the best trial's page lists its layers); the best child's page is the ML view with the
    per-layer table in its parameters and description."""
    browser = _browser()
    from mlflow import MlflowClient

    first = _search(tmp_path, "size<=0.25x")
    second = _search(tmp_path, "size<=0.5x")
    check = subprocess.run([sys.executable, str(Path(__file__).resolve().parent.parent / "scripts" / "check_ui.py"),
                            "--output", str(tmp_path), "--screenshots", str(tmp_path / "ui")],
                           capture_output=True, text=True, timeout=900)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("FINISHED") == 2 and "all checks passed" in check.stdout

    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path))
    exp = client.get_experiment_by_name("automl-mpq")
    parents = client.search_runs([exp.experiment_id], "tags.`automl.kind` = 'search'", order_by=["attributes.start_time DESC"])
    assert len(parents) == 2
    best = client.search_runs([exp.experiment_id], f"tags.best = 'true' and tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert len(best) == 1
    best = best[0]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "automl", "ui", "--output", str(tmp_path), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_healthy(url, proc)
        dom = _render(browser, f"{url}/{run_path(exp.experiment_id, best.info.run_id)}", tmp_path / "best_child.png")
        runs_dom = _render(browser, f"{url}/{search_path(exp.experiment_id, parents[0].info.run_id)}", tmp_path / "runs.png")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # automl ui and the MLflow server it started
        proc.wait(timeout=30)
    assert f"trial-{second.best.number:04d}" in dom
    # The per-layer table on the page itself: one `layer NN: <name>` parameter per layer, in network order.
    names = [name for name, _ in second.best.policy]
    positions = [dom.find(f": {name}<") for name in names]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), dict(zip(names, positions, strict=True))
    for name, (_, lp) in zip(names, second.best.policy, strict=True):
        act = "fp32" if lp.act_bits == 32 else lp.act_bits
        assert re.search(rf"\| A {act} \| pruned \d+/{len(lp.weight_bits)} \|", dom), name
    # ... and in full in the description (below "Show more").
    parser = _Tables()
    parser.feed(dom)
    layer_tables = [t for t in parser.tables if t and "W bits per channel group" in t[0]]
    assert layer_tables, f"no per-layer table on the best child's page ({len(parser.tables)} tables)"
    header, *rows = layer_tables[0]
    assert header == ["layer", "W bits per channel group", "A bits", "pruned channels", "size kB", "size share"]
    assert [r[0] for r in rows] == names
    # The classic machine-learning view (model registry in the side bar), not the GenAI one (judges, prompts).
    assert "Model registry" in dom and "Judges" not in dom
    # The search's view: its own runs, ranked, with the compared metrics as columns; not the first search's.
    for column in ("rank", "val_accuracy", "test_accuracy", "size_kB", "bitops_M"):
        assert column in runs_dom, column
    assert first.best is not None and parents[1].info.run_name not in runs_dom
