"""Every name a user gives, checked before any expensive set-up and without writing anything.

``automl search`` and ``automl pareto`` call :func:`check_inputs` before torch, MLflow or
Optuna are imported: the searcher, the budget's grammar, metrics and profiles, the hardware
profiles, the task, the output directory, the tracking store, the study storage and the run to
resume. A typo then fails in about the time ``automl --help`` takes, and leaves no file behind
(no run directory, no ``mlflow.db``): every check reads, none creates.

:func:`check_loose_budget` is the one check that needs the model: once the budget is bound to
the cost model, before the run directory and the tracking store are made.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from automl.errors import ConfigError, LooseBudget, ProfileError, RunDirError
from automl.problem.budget import format_value
from automl.runs.config import SearchConfig

if TYPE_CHECKING:
    from automl.cost import CostModel
    from automl.problem.budget import BoundBudget

# The measured ONNX Runtime profiles (automl.export.ort_profile.ORT_NAME, which imports torch).
ORT_NAME = re.compile(r"^ort-(cpu|cuda|tensorrt)(?:-b(\d+))?$")


def check_profile_ref(ref: str, where: str) -> None:
    """A hardware profile reference: ``ort-<provider>[-b<N>]``, a shipped name or a readable profile YAML."""
    if ORT_NAME.match(ref):
        return
    from automl.cost.profiles import load_profile, shipped_profiles

    try:
        load_profile(ref)
    except ProfileError as exc:
        if "no hardware profile" not in str(exc):
            raise ProfileError(f"{where}: {exc}") from None
        looks_like_path = "/" in ref or ref.endswith((".yaml", ".yml"))
        what = (f"the file {str(Path(ref).expanduser().resolve())!r} does not exist" if looks_like_path
                else "no profile has that name")
        raise ProfileError(
            f"{where} names the hardware profile {ref!r}, but {what}. Expected ort-cpu or ort-cpu-b<N> (ONNX Runtime on "
            f"this CPU, measured once and cached; ort-cuda, ort-tensorrt on a GPU), a shipped model of an accelerator ({', '.join(shipped_profiles())}), "
            "or the path of a profile YAML file (write one with `automl profile-hardware`)."
        ) from None


def check_output(output: str) -> None:
    """The output directory can be created or written; probed without creating it."""
    from automl.runs.resume import check_writable

    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--output {output!r} is an existing file, not a directory; pass a directory for the run's files")
    check_writable(out / "runs" / "new")


def check_inputs(config: SearchConfig, *, resuming: bool | None = None, task: bool = True) -> None:
    """Check every name in ``config`` cheaply (no torch, no MLflow, no Optuna) and write nothing.

    Args:
        config: the user's configuration.
        resuming: whether ``config.run.resume`` continues a run (default: when it is set); a
            resumed run's task and budget are its own and checked when it is loaded.
        task: whether to check the task name (the Python API passes a built task).

    Raises:
        AutoMLError: the first bad name, with what was expected and how to fix it.
    """
    from agents import SEARCHERS
    from automl.problem.budget import Budget
    from automl.runs.loading import check_task_spec
    from automl.runs.uris import check_storage, check_tracking_uri
    from automl.runs.workers import check_workers
    from automl.tracking.tracker import default_tracking_uri

    resuming = bool(config.run.resume) if resuming is None else resuming
    if resuming:
        from automl.runs.resume import find_run_dir

        find_run_dir(config.run.resume, config.run.output)
    else:
        if config.searcher.name.lower().replace("-", "_") not in SEARCHERS:
            raise ConfigError(f"unknown searcher {config.searcher.name!r}; choose one of {sorted(SEARCHERS)}")
        budget = Budget.parse(list(config.budget))
        for ref in config.profiles:
            check_profile_ref(ref, f"--profile {ref!r}")
        for c in budget.constraints:
            if c.profile is not None:
                check_profile_ref(c.profile, f"the budget {c.text!r}")
        if task:
            check_task_spec(config.task)
        check_workers(config)
    check_output(config.run.output)
    check_tracking_uri(config.tracking.uri or default_tracking_uri(config.run.output))
    check_storage(config.searcher.storage)


def check_loose_budget(bound: BoundBudget, cost_model: CostModel, allow: bool = False, say: Callable[[str], None] = print) -> None:
    """Refuse a budget that the float model already meets (every policy would qualify), unless
    ``allow``; a single constraint that the float model meets is reported and kept.

    Raises:
        LooseBudget: every limit is at least the float model's cost and ``allow`` is false.
    """
    fc = cost_model.float_costs()
    loose = [(m, lim) for m, lim in bound.limits if fc.value(m) <= lim * (1 + 1e-9)]
    if not loose:
        return
    text = "; ".join(f"{m} <= {format_value(m.split('@')[0], lim)} while the float model has "
                     f"{format_value(m.split('@')[0], fc.value(m))} ({lim / fc.value(m):.3g}x float)"
                     for m, lim in loose if fc.value(m) > 0)
    written = ", ".join(c.text for c in bound.budget.constraints)
    if len(loose) < len(bound.limits):
        say(f"warning: part of the budget {written!r} is looser than the float model and constrains nothing: {text}.")
        return
    if allow:
        say(f"warning: the budget {written!r} is looser than the float model ({text}); searching anyway "
            "(run.allow_loose_budget).")
        return
    raise LooseBudget(
        f"the budget {written!r} is looser than the float model, which already meets it: {text}. Every policy would "
        "qualify, so the search would only trade accuracy for nothing. Expected a limit below the float model's cost, "
        "e.g. size<=0.125x; to search anyway pass --allow-loose-budget (run.allow_loose_budget: true)."
    )
