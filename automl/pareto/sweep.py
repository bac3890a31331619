"""``automl pareto``: accuracy against cost over a sweep of budgets, mixed precision vs uniform.

One problem is built once (task, analysis, space, cost model, evaluator with one evaluation
cache), the sensitivity stage runs once, and then:

1. every uniform policy of the space with 8/6/4/3/2-bit weights (each activation
   bit-width of the space, each sparsity level, as :func:`agents.baselines.uniform_combinations`
   lists them) that fits the loosest budget is evaluated at the search fidelity;
2. the searcher runs ``evaluations`` distinct policies at each budget, loosest first, all
   through the same cache (a policy seen at an earlier level is free);
3. at each budget three winners are taken: the best mixed policy any search of the sweep
   found within it (the best-so-far envelope, so the front never rises as the budget
   tightens), the best uniform policy without pruning and the best uniform policy with
   pruning. Each winner is scored on the test split after the same final fine-tune
   (``finetune.steps``; 0 scores the search-fidelity model as it is).

MLflow: one parent run (``automl.kind = pareto``) with the CSV, the plot and the table;
one nested run per budget level, under it one run per evaluated policy. The files are in
``<output>/pareto/<timestamp>/``. The report is written by :mod:`automl.pareto.report`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from agents.baselines import UniformChoice, uniform_combinations
from agents.objective import Objective
from agents.records import TrialRecord
from automl.cost import CostModel
from automl.cost.units import limit_metrics
from automl.evaluation.task import Task
from automl.pareto.config import UNIFORM_WEIGHT_BITS, ParetoConfig
from automl.pareto.points import FrontPoint, Level, ParetoResult, weight_shares
from automl.problem.budget import BoundBudget, Budget
from automl.runs.console import stage
from automl.runs.lifecycle import RUN_DIR_TAG, Terminated, handle_termination, remove_owner, write_owner
from automl.runs.resume import JOURNAL, RunPlan
from automl.runs.runner import Journal, MlflowLogging, Progress, Session, build_session, make_searcher
from automl.runs.sensitivity_stage import SensitivityReport, sensitivity_stage
from automl.tracking.tracker import PARENT_TAG

SWEEP_TAG = "automl.sweep"


def _usable(record: TrialRecord) -> bool:
    return not record.metrics.stopped_early and math.isfinite(record.accuracy)


def envelope(records: list[TrialRecord], bounds: list[BoundBudget]) -> list[TrialRecord | None]:
    """Per bound, the most accurate fully evaluated record that meets it (``None`` if none does).

    Taken over all ``records`` whatever search produced them: a policy found under a
    tight budget also counts for every looser one, so the accuracies never rise as the
    bound tightens.
    """
    out: list[TrialRecord | None] = []
    for bound in bounds:
        fits = [r for r in records if _usable(r) and bound.feasible(r.costs)]
        out.append(max(fits, key=lambda r: (r.accuracy, -r.costs.size_bytes)) if fits else None)
    return out


def _best_uniform(uniform: list[tuple[UniformChoice, float]], bound: BoundBudget, pruned: bool) -> tuple[UniformChoice, float] | None:
    fits = [(c, acc) for c, acc in uniform if (pruned or c.sparsity == 0) and c.costs is not None
            and bound.feasible(c.costs) and math.isfinite(acc)]
    return max(fits, key=lambda ca: (ca[1], -ca[0].costs.size_bytes)) if fits else None  # type: ignore[union-attr]


def _say(quiet: bool, line: str) -> None:
    if not quiet:
        print(line, file=sys.stderr, flush=True)


def _bind_levels(config: ParetoConfig, cost_model: CostModel, quiet: bool) -> tuple[list[tuple[str, BoundBudget]], list[str]]:
    """The budgets bound to the model, loosest first; default levels below the cheapest policy are skipped."""
    from automl.errors import InfeasibleBudget

    bound, skipped = [], []
    for text in config.constraint_texts():
        try:
            bound.append((text, Budget.parse(text).bind(cost_model)))
        except InfeasibleBudget as exc:
            if config.budgets:  # the user asked for this level
                raise
            skipped.append(f"{text}: {exc}")
            _say(quiet, f"default level {text} skipped: {exc}")
    bound.sort(key=lambda tb: -tb[1].limits[0][1])
    return bound, skipped


def _evaluate_uniform(session: Session, loosest: BoundBudget, quiet: bool) -> list[tuple[UniformChoice, float]]:
    cm = session.cost_model
    choices = []
    for c in uniform_combinations(session.problem.space):
        if c.weight_bits in UNIFORM_WEIGHT_BITS:
            costs = cm.price(c.policy)
            if loosest.feasible(costs):
                choices.append(UniformChoice(c.weight_bits, c.act_bits, c.sparsity, c.policy, costs))
    session.evaluator.set_incumbent(None)  # uniform points are scored in full, never stopped early
    out = []
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(choices), desc="uniform curves", unit="eval", file=sys.stderr, dynamic_ncols=True)
    with stage(f"uniform curves: {len(choices)} uniform policies within {loosest.budget.constraints[0].text}", quiet):
        for c in choices:
            out.append((c, session.evaluator.evaluate(c.policy).accuracy))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return out


def _run_level(session: Session, index: int, text: str, bound: BoundBudget, sens: SensitivityReport,
               sweep_id: str, quiet: bool) -> Level:
    cfg, tracker = session.config, session.tracker
    level_dir = session.run_dir / f"level-{index:02d}"
    level_dir.mkdir(parents=True, exist_ok=True)
    objective = Objective(session.evaluator, session.cost_model, bound, sensitivities=sens.sensitivities)
    session.evaluator.set_incumbent(None)  # early stopping compares within this level only
    searcher = make_searcher(cfg.searcher.name, objective, cfg, level_dir)
    callbacks: list[Any] = [Journal(level_dir / JOURNAL, set())]
    run_id = None
    parent = tracker.parent_id if tracker is not None else None
    if tracker is not None:
        run = tracker.client.create_run(tracker.experiment_id, run_name=f"level-{index:02d} {text}", tags={
            PARENT_TAG: parent, "automl.kind": "pareto_level", SWEEP_TAG: sweep_id, "budget": text,
            "searcher": cfg.searcher.name, RUN_DIR_TAG: str(level_dir)})
        run_id = run.info.run_id
        tracker.parent_id = run_id  # the trials nest under the level
        callbacks.append(MlflowLogging(tracker, set(), cfg.evaluation.fidelity))
    if not quiet:
        callbacks.append(Progress(cfg.run.evaluations, 0, None))
    status = "FAILED"
    try:
        result = searcher.run(cfg.run.evaluations, callbacks)
        status = "FINISHED"
    finally:
        if tracker is not None and run_id is not None:
            tracker.flush()
            if status == "FINISHED" and result.best is not None:
                runs = tracker.logged_trials()
                if result.best.number in runs:
                    tracker.tag_best({f"pareto {text}": runs[result.best.number]})
                tracker.log_run_metrics(run_id, {"best_val_accuracy": result.best.accuracy,
                                                 "n_evaluations": float(result.n_evaluations),
                                                 **limit_metrics(bound.limits)})
            tracker.client.set_terminated(run_id, status)
            tracker.parent_id = parent
    (level_dir / "result.json").write_text(result.to_json())
    return Level(index, text, bound, result, run_id)


def _winners(result: ParetoResult, metric: str) -> list[FrontPoint]:
    cm_points: list[FrontPoint] = []
    bounds = [lv.bound for lv in result.levels]
    found_at = {id(r): lv.text for lv in result.levels for r in lv.result.records}
    mixed = envelope(result.records, bounds)
    for lv, rec in zip(result.levels, mixed, strict=True):
        if rec is None:
            cm_points.append(FrontPoint(lv.text, lv.limit, "mixed", "none fits", None, math.nan, math.nan))
        else:
            cm_points.append(FrontPoint(lv.text, lv.limit, "mixed", f"trial {rec.number} of {found_at[id(rec)]}",
                                        rec.policy, rec.costs.value(metric), rec.accuracy, found_at=found_at[id(rec)]))
        for method, pruned in (("uniform", False), ("uniform+pruning", True)):
            best = _best_uniform(result.uniform, lv.bound, pruned)
            if best is None:
                cm_points.append(FrontPoint(lv.text, lv.limit, method, "none fits", None, math.nan, math.nan))
            else:
                c, acc = best
                assert c.costs is not None
                cm_points.append(FrontPoint(lv.text, lv.limit, method, c.label, c.policy, c.costs.value(metric), acc))
    return cm_points


def _score_winners(session: Session, points: list[FrontPoint], quiet: bool) -> list[FrontPoint]:
    """Each distinct winner scored on the test split after the search's final fine-tune."""
    ev: Any = session.evaluator.evaluator  # the Evaluator itself: final() and the test split
    steps = session.config.finetune.steps
    recipe = session.config.finetune
    tested: dict[str, float] = {}
    distinct = {p.policy.key(): p.policy for p in points if p.policy is not None}
    what = f"{steps}-step final fine-tune, then the test split" if steps else "the test split (no fine-tune)"
    with stage(f"scoring {len(distinct)} distinct front policies: {what}", quiet):
        for key, policy in distinct.items():
            if steps:
                tested[key] = ev.final(policy, steps, "test", finetune=recipe)[0].accuracy
            else:
                tested[key] = ev.evaluate(policy, split="test").accuracy
    out = []
    for p in points:
        if p.policy is None:
            out.append(p)
            continue
        out.append(replace(p, test_accuracy=tested[p.policy.key()], finetune_steps=steps,
                           shares=weight_shares(session.cost_model, p.policy)))
    return out


def _start_parent(session: Session, config: ParetoConfig, texts: list[str], sweep_id: str) -> None:
    tracker = session.tracker
    if tracker is None:
        return
    tracker.start_parent(f"pareto-{session.run_dir.name}", config.to_dict(),
                         {RUN_DIR_TAG: str(session.run_dir), SWEEP_TAG: sweep_id, "searcher": session.config.searcher.name,
                          "budget": "; ".join(texts), "metric": config.metric})
    assert tracker.parent_id is not None
    tracker.client.set_tag(tracker.parent_id, "automl.kind", "pareto")


def run_pareto(config: ParetoConfig, task: Task | None = None, quiet: bool = False) -> ParetoResult:
    """Run a sweep (see the module docstring) and write its CSV, plot and table.

    Raises:
        InfeasibleBudget: an explicit budget that even the cheapest policy exceeds (before any evaluation).
    """
    from automl.pareto.report import write_report

    cfg = config.search
    output = Path(cfg.run.output).expanduser().resolve()
    sweep_dir = output / "pareto" / time.strftime("%Y%m%d-%H%M%S")
    while sweep_dir.exists():
        sweep_dir = sweep_dir.with_name(sweep_dir.name + "x")
    texts = config.constraint_texts()
    search_cfg = cfg.merged({"run.output": str(output), "budget": (texts[0],)})
    session = build_session(RunPlan(search_cfg, sweep_dir, state={"cwd": str(Path.cwd())}), task)
    try:
        bound, skipped = _bind_levels(config, session.cost_model, quiet)
    except Exception:
        if session.tracker is not None:
            session.tracker.close()
        raise
    (sweep_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    write_owner(sweep_dir)
    sweep_id = sweep_dir.name
    status = "FAILED"
    try:
        with handle_termination():
            _start_parent(session, config, [t for t, _ in bound], sweep_id)
            result = _sweep(session, config, bound, skipped, sweep_id, quiet)
            write_report(session, result, quiet)
            status = "FINISHED"
    except (KeyboardInterrupt, Terminated):
        status = "KILLED"
        raise
    finally:
        if session.tracker is not None:
            session.tracker.finish_parent(status)
            session.tracker.close()
        remove_owner(sweep_dir)
    return result


def _sweep(session: Session, config: ParetoConfig, bound: list[tuple[str, BoundBudget]], skipped: list[str],
           sweep_id: str, quiet: bool) -> ParetoResult:
    cfg = session.config
    ev: Any = session.evaluator.evaluator
    float_val = ev.baseline("val").accuracy
    with stage(f"sensitivities ({cfg.searcher.sensitivity}), once for the sweep", quiet):
        sens = sensitivity_stage(session.evaluator, session.problem.space, cfg.evaluation.fidelity, cfg.searcher.sensitivity,
                                 cache_dir=cfg.run.output, quiet=quiet)
    uniform = _evaluate_uniform(session, bound[0][1], quiet)
    levels = []
    for i, (text, b) in enumerate(bound, 1):
        _say(quiet, f"level {i}/{len(bound)}: {text} ({cfg.searcher.name}, {cfg.run.evaluations} evaluations)")
        levels.append(_run_level(session, i, text, b, sens, sweep_id, quiet))
    result = ParetoResult(config, session.run_dir, levels, uniform, [], sens, float_val, session.cost_model.float_costs().value(config.metric), skipped,
                          parent_run_id=session.tracker.parent_id if session.tracker is not None else None)
    result.points = _score_winners(session, _winners(result, config.metric), quiet)
    return result
