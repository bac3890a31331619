"""What a search prints for its user: stages with timings, the budget in absolute units,
and follow-up commands that work when pasted (``.venv/bin/automl ...`` when that is how
``automl`` was started, not a bare ``automl`` that is not on ``PATH``)."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from automl.problem.budget import BoundBudget
    from automl.runs.runner import Session


def command_prefix() -> str:
    """How to run ``automl`` again from the current directory, as this process was run."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "automl" and argv0.exists():
        if shutil.which("automl") and Path(shutil.which("automl") or "").resolve() == argv0.resolve():
            return "automl"
        try:
            rel = os.path.relpath(argv0.resolve(), Path.cwd())
        except ValueError:
            rel = str(argv0.resolve())
        shown = rel if not rel.startswith("..") else str(argv0.resolve())
        return shlex.quote(shown if "/" in shown else f"./{shown}")
    found = shutil.which("automl")
    if found and Path(found).resolve().parent == Path(sys.executable).resolve().parent:
        return "automl"
    venv_bin = Path(sys.executable).parent / "automl"
    if venv_bin.exists():
        return shlex.quote(str(venv_bin))
    return f"{shlex.quote(sys.executable)} -m automl"


def budget_line(bound: BoundBudget) -> str:
    """The budget as written and as absolute limits: ``size<=0.125x  ->  size <= 34.07 KB``."""
    from automl.problem.budget import format_value

    limits = ", ".join(f"{m} <= {format_value(m.split('@')[0], v)}" for m, v in bound.limits)
    written = ", ".join(c.text for c in bound.budget.constraints)
    return f"{written}  ->  {limits}"


@contextlib.contextmanager
def stage(label: str, quiet: bool = False) -> Iterator[None]:
    """Print ``label ...`` when a stage starts and ``label: done in 12.3 s`` when it ends."""
    if quiet:
        yield
        return
    print(f"{label} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    print(f"{label}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def closing_lines(session: Session) -> str:
    """The last lines of a search: the absolute budget, what to open, commands that work as printed."""
    from automl.tracking.ui import search_path

    cmd = command_prefix()
    out = shlex.quote(session.config.run.output)
    run_dir = session.run_dir
    tracker = session.tracker
    uri = session.config.tracking.uri
    server = uri.startswith(("http://", "https://"))
    page = uri.rstrip("/") if server else "http://127.0.0.1:5000"
    if tracker is not None and tracker.parent_id is not None:  # this search alone, best trial first
        page += f"/{search_path(tracker.experiment_id, tracker.parent_id)}"
    ui = f"the MLflow server {uri}" if server else f"{cmd} ui --output {out}" + (f" --tracking-uri {uri}" if uri else "")
    return "\n".join([
        f"budget: {budget_line(session.bound)}",
        f"open: {run_dir / 'best_policies.md'} (table), {run_dir / 'pareto_front.png'} (accuracy vs cost), "
        f"{run_dir / 'best_model.onnx'} and {run_dir / 'best_model.ampq'} (the exported model)",
        f"MLflow UI:   {ui}, then this search: {page}",
        f"best table:  {cmd} best --output {out}",
        f"continue:    {cmd} search --resume {shlex.quote(str(run_dir))} --evaluations N",
    ])
