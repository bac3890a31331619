"""Can the benchmark rank searchers? Same distinct evaluations, a fair uniform baseline, fine-tuned test accuracy.

Protocol (every searcher through ``agents.make_searcher`` and one :class:`agents.Objective`):

- **Search fidelity, stage, fine-tune as ``automl search``**: the evaluator scores at
  ``SearchConfig().evaluation.fidelity`` on the validation split; the sensitivity stage runs first with
  ``SearchConfig().searcher.sensitivity`` (:func:`automl.runs.sensitivity_stage.sensitivity_stage`);
  every row's best policy gets the search's final fine-tune
  (``SearchConfig().finetune``) and is scored on the test split.
- **Same distinct evaluations**: each searcher counts through a
  :class:`agents.baselines.DistinctEvaluator` (repeats and cache hits are free) that is
  charged the sensitivity stage's cost first; the search stops when the count reaches
  ``--evaluations`` (a searcher that runs out of new proposals, like the integer program's
  sweep, stops earlier and shows fewer). The wall seconds include the stage's.
- **Fair uniform baseline**: every uniform (weight bits, activation bits, sparsity)
  combination that fits (W2A8-style included, :func:`agents.baselines.feasible_uniform`),
  all evaluated at the search fidelity, the best fine-tuned like the winners.
- **Ranking** on ResNet-8 at ``size<=0.0625x``, ``size<=0.03125x``, a size + BitOps budget
  and a latency budget on the shipped ``bitserial`` profile; 3 seeds for tpe/nsga2/random,
  the best RL agent of seed 0, the integer program and the uniform baseline (mean +- sd), one
  seed for the others. The row's seed seeds its final fine-tune too (as ``--seed`` does), so
  the two deterministic searches still have a spread: the fine-tune's.
- **Headline** on ResNet-20 with the default searcher and the uniform baseline (``--headline-searchers``
  adds others) at
  ``size<=0.125x``/``0.0625x``/``0.03125x`` (the same seeds).
- **Ground truth**: the small plain CNN with layer-level choices only (one bit-width and
  sparsity per layer); its whole space at one budget is enumerated, and each searcher's
  regret (optimum minus its best, validation points at the search fidelity) after 10 % of
  the enumeration count is reported.

    python benchmarks/search_quality.py --jobs 2            # the full protocol (about 2 h on 2 cores)
    python benchmarks/search_quality.py --quick --jobs 1    # one seed, two budgets, fewer evaluations
    python benchmarks/search_quality.py --quick --seeds 3 --out rows.jsonl --resume   # add seeds 1, 2 to a run

It ends ``RESULT ft_gap_1_16=<points> ft_gap_1_32=<points> best_minus_uniform_1_16=<points>
best_minus_uniform_1_32=<points> regret_tiny=<points> best_learning_minus_warmstart=<points>
rl_minus_tpe=<points> rl_minus_random=<points>``: ResNet-20 float test accuracy minus the
best headline row's mean fine-tuned test accuracy (any of ``--headline-searchers``); on ResNet-8
the best searcher's mean minus the uniform baseline's mean; the default searcher's regret on
the plain CNN; and issue 10's figures (:func:`learning_figures`). Every comparison is between
means over the same seeds: only searchers run with the most seeds at a budget take part
(:func:`fully_seeded`), never the best single seed of a one-seed agent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from typing import Any

from agents import Objective, make_searcher
from agents.baselines import DistinctEvaluator, DistinctLimit, enumerate_layer_policies, feasible_uniform, uniform_set
from automl.cost import CostModel
from automl.cost.profiles import load_profiles
from automl.evaluation.evaluator import Evaluator, Problem
from automl.evaluation.finalists import screen
from automl.evaluation.finetune import FinetuneConfig
from automl.problem.budget import Budget
from automl.problem.cache import CachedEvaluator
from automl.reference.checkpoints import default_cache_dir, reference_task
from automl.runs.config import SearchConfig
from automl.runs.sensitivity_stage import SensitivityReport, sensitivity_stage
from automl.timing import pin_threads
from search_spaces.space import SpaceConfig

DEFAULTS = SearchConfig()
RANK_BUDGETS = ("size<=0.0625x", "size<=0.03125x", "size<=0.0625x,bitops<=0.01x", "latency<=0.03x@bitserial")
HEADLINE_BUDGETS = ("size<=0.125x", "size<=0.0625x", "size<=0.03125x")
# The saved rows' count (the search's default until it became 20; --headline-evaluations 20 gives the default's)
HEADLINE_EVALUATIONS = 60
SEEDED = ("ilp_tpe", "tpe", "nsga2", "random")
# The uniform baseline and the integer program search deterministically, but the final fine-tune
# is seeded like every row's (the row's seed), so they get the same seeds: every mean +- sd
# compares what a user gets over seeds, fine-tune noise included.
DETERMINISTIC = ("uniform", "ilp")
RL = ("ppo", "maskable_ppo", "ddpg", "td3", "sac")
ALL_SEARCHERS = ("ilp_tpe", "ilp", "tpe", "nsga2", "random", "gp", "cmaes", *RL)
QUICK_SEARCHERS = ("ilp_tpe", "ilp", "tpe", "nsga2", "random", "maskable_ppo")
TINY_BUDGET = "size<=0.2x"
TINY_SPACE = SpaceConfig(weight_bits=(0, 2, 4, 8), act_bits=(4, 8), n_groups=1, max_sparsity=0.5, sparsity_step=0.25)
TINY_SPACE_QUICK = TINY_SPACE.replace(max_sparsity=0.25)


def options_for(name: str, distinct: int) -> dict[str, Any]:
    """Constructor options: in-memory Optuna studies; the ILP may sweep as many optima as it has evaluations."""
    if name == "ilp_tpe":
        return {"storage": ":memory:", "sweep": max(1, distinct)}
    if name in ("tpe", "nsga2", "gp", "cmaes"):
        return {"storage": ":memory:"}
    if name == "ilp":
        return {"sweep": max(1, distinct), "time_limit": 10.0, "mip_rel_gap": 1e-3}
    return {}


@dataclass
class Row:
    arch: str
    budget: str
    searcher: str
    seed: int
    score: float
    test: float
    size_kb: float
    bitops_m: float
    distinct: int
    seconds: float


@dataclass
class Setup:
    """One network's shared parts: the evaluator, the cost model, the stage's tables."""

    arch: str
    problem: Problem
    cost_model: CostModel
    evaluator: Evaluator
    stage: SensitivityReport
    recipe: FinetuneConfig
    float_test: float


_SETUPS: dict[tuple[str, bool], Setup] = {}


def setup(arch: str, quick: bool, threads: int, cache_dir: str, finetune_steps: int = DEFAULTS.finetune.steps,
          finetune_patience: int = DEFAULTS.finetune.patience) -> Setup:
    """The network's setup, built once per process (the stage's tables come from ``cache_dir`` after the first);
    the final fine-tune's recipe is the search's default with ``finetune_steps`` and ``finetune_patience``."""
    key = (arch, quick)
    recipe = DEFAULTS.finetune.replace(steps=finetune_steps, patience=finetune_patience)
    if key in _SETUPS and _SETUPS[key].recipe != recipe:
        return replace(_SETUPS[key], recipe=recipe)
    if key not in _SETUPS:
        pin_threads(threads)
        task = reference_task(arch, log=None)
        space = (TINY_SPACE_QUICK if quick else TINY_SPACE) if arch == "plaincnn" else None
        problem = Problem.from_task(task, space)
        cost_model = CostModel(problem.analysis, problem.space, load_profiles(["bitserial"]))
        evaluator = Evaluator(problem, DEFAULTS.evaluation, seed=DEFAULTS.run.seed)
        stage = sensitivity_stage(evaluator, problem.space, DEFAULTS.evaluation.fidelity, DEFAULTS.searcher.sensitivity, cache_dir)
        _SETUPS[key] = Setup(arch, problem, cost_model, evaluator, stage, recipe,
                             evaluator.baseline("test").accuracy)
    return _SETUPS[key]


def _counter(s: Setup) -> DistinctEvaluator:
    """A fresh cache per run (wall seconds stay honest), counted, charged the stage's cost."""
    counter = DistinctEvaluator(CachedEvaluator(s.evaluator), s.problem.space)
    counter.charge(evaluations=s.stage.evaluations)
    return counter


def label(name: str, finalists: int, widen: bool = False) -> str:
    """The row's searcher column: ``tpe``, ``tpe+top3`` when 3 finalists were screened,
    ``tpe+wideA`` when activation bits no constraint prices were widened (``Objective(widen_activations=True)``)."""
    return name + (f"+top{finalists}" if finalists > 1 else "") + ("+wideA" if widen else "")


def _pick(s: Setup, records: Any, best: Any, finalists: int, finetune: bool) -> Any:
    """The record that gets the final fine-tune: the best score, or the best of the finalists
    after their short fine-tunes (``automl search --finalists``; the same steps)."""
    if finalists <= 1 or not finetune:
        return best
    winner, report = screen(s.evaluator, records, finalists, DEFAULTS.finetune.finalist_steps, s.recipe,
                            uniform_set(s.problem.space))
    print("  finalists (trial: score -> validation after the short fine-tune): " + ", ".join(
        f"{f.trial}{' uniform' if f.uniform else ''}: {100 * f.score:.1f} -> {100 * f.val_after:.1f}" for f in report)
        + f"; winner {getattr(winner, 'number', None)}", flush=True)
    return winner


def _finish(s: Setup, budget: str, name: str, seed: int, best: Any, distinct: int, start: float, finetune: bool) -> Row:
    if best is None:
        nan = float("nan")
        return Row(s.arch, budget, name, seed, nan, nan, nan, nan, distinct, time.perf_counter() - start)
    recipe = s.recipe  # a user's --seed seeds the search and the fine-tune alike
    test = (s.evaluator.final(best.policy, recipe.steps, "test", finetune=recipe, seed=seed)[0].accuracy
            if finetune else float("nan"))
    costs = s.cost_model.price(best.policy)
    return Row(s.arch, budget, name, seed, best.accuracy, test, costs.size_bytes / 1e3, costs.bitops / 1e6, distinct,
               time.perf_counter() - start + s.stage.seconds)


def uniform_row(s: Setup, budget: str, finalists: int = 1, seed: int = 0) -> Row:
    start = time.perf_counter()
    bound = Budget.parse(budget).bind(s.cost_model)
    counter = DistinctEvaluator(CachedEvaluator(s.evaluator), s.problem.space)
    objective = Objective(counter, s.cost_model, bound, repair=False)
    records = [objective(c.policy, number=i, searcher="uniform")
               for i, c in enumerate(feasible_uniform(s.problem.space, s.cost_model, bound))]
    best = max((r for r in records if r.feasible), key=lambda r: r.accuracy, default=None)
    best = _pick(s, records, best, finalists, True)
    row = _finish(s, budget, label("uniform", finalists), seed, best, counter.distinct, start, True)
    return replace(row, seconds=row.seconds - s.stage.seconds)  # the baseline needs no sensitivities


def searcher_row(s: Setup, budget: str, name: str, seed: int, distinct: int, finetune: bool = True,
                 evaluator: Any = None, finalists: int = 1, trials_per_distinct: int = 3,
                 widen: bool = False) -> tuple[Row, Any]:
    start = time.perf_counter()
    bound = Budget.parse(budget).bind(s.cost_model)
    counter = _counter(s) if evaluator is None else DistinctEvaluator(evaluator, s.problem.space)
    if evaluator is not None:
        counter.charge(evaluations=s.stage.evaluations)
    objective = Objective(counter, s.cost_model, bound, sensitivities=s.stage.sensitivities, widen_activations=widen)
    remaining = max(1, distinct - counter.distinct)
    searcher = make_searcher(name, objective, seed=seed, **options_for(name, remaining))
    # the trial cap only bounds a searcher that keeps proposing repeats; the distinct count stops the run
    result = searcher.run(trials_per_distinct * distinct, callbacks=[DistinctLimit(counter, distinct)])
    best = _pick(s, result.records, result.best, finalists, finetune)
    return _finish(s, budget, label(name, finalists, widen), seed, best, counter.distinct, start, finetune), result


# jobs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    arch: str
    budget: str
    searcher: str
    seed: int
    distinct: int
    quick: bool
    threads: int
    cache_dir: str
    finetune_steps: int
    out: str = ""
    finalists: int = 1
    widen: bool = False
    finetune_patience: int = DEFAULTS.finetune.patience


def run_job(job: Job) -> Row:
    s = setup(job.arch, job.quick, job.threads, job.cache_dir, job.finetune_steps, job.finetune_patience)
    row = uniform_row(s, job.budget, job.finalists, job.seed) if job.searcher == "uniform" else \
        searcher_row(s, job.budget, job.searcher, job.seed, job.distinct, finalists=job.finalists, widen=job.widen)[0]
    print(f"[{job.arch}] {format_row(row)}", flush=True)
    if job.out:  # one JSON line per row, so a run cut short can still be summarised (--summarise)
        with open(job.out, "a") as fh:
            fh.write(json.dumps(asdict(row)) + "\n")
    return row


def _key(x: Job | Row) -> tuple[str, str, str, int]:
    name = label(x.searcher, x.finalists, x.widen) if isinstance(x, Job) else x.searcher
    return (x.arch, x.budget, name, x.seed)


def run_jobs(jobs: list[Job], n: int, done: dict[tuple[str, str, str, int], Row] | None = None) -> list[Row]:
    """Every job's row; a job whose row is in ``done`` (``--resume``) is not run again."""
    done = done or {}
    todo = [j for j in jobs if _key(j) not in done]
    if n <= 1 or len(todo) <= 1:
        fresh = [run_job(j) for j in todo]
    else:
        with ProcessPoolExecutor(min(n, len(todo)), mp_context=get_context("spawn")) as pool:
            fresh = list(pool.map(run_job, todo))
    rows = {**done, **{_key(r): r for r in fresh}}
    return [rows[_key(j)] for j in jobs]


def load_rows(path: str) -> list[Row]:
    return [Row(**json.loads(line)) for line in open(path) if line.strip()]


def ground_truth(quick: bool, threads: int, cache_dir: str,
                 searchers: tuple[str, ...]) -> tuple[list[tuple[str, float, int]], float, int]:
    """``(searcher, regret in points, distinct)`` rows, the optimum and the enumeration count on the plain CNN."""
    s = setup("plaincnn", quick, threads, cache_dir)
    bound = Budget.parse(TINY_BUDGET).bind(s.cost_model)
    shared = CachedEvaluator(s.evaluator)
    feasible = [p for p in enumerate_layer_policies(s.problem.space) if bound.feasible(s.cost_model.price(p))]
    optimum = max(shared.evaluate(p).accuracy for p in feasible)
    budget = max(1, len(feasible) // 10)
    out = []
    for name in searchers:
        # A cache of its own per searcher: proposals answered from the enumeration's cache looked
        # like repeats to the searcher, which stopped after max_duplicates of them with fewer than
        # `budget` distinct policies. Evaluations are deterministic, so only the seconds change.
        row, _ = searcher_row(s, TINY_BUDGET, name, 0, budget, finetune=False, evaluator=CachedEvaluator(s.evaluator),
                              trials_per_distinct=20)
        out.append((name, 100 * (optimum - row.score), row.distinct))
        print(f"[tiny] {name}: best {100 * row.score:.2f} %, regret {out[-1][1]:.2f} points, {row.distinct} distinct",
              flush=True)
    return out, optimum, len(feasible)


# report ----------------------------------------------------------------------------------
HEADER = ("| network | budget | searcher | seeds | val acc % (fid. {f}) | test acc % (fine-tuned) | size KB | MBitOps "
          "| distinct evaluations | wall s |\n|---|---|---|---|---|---|---|---|---|---|")


def format_row(r: Row) -> str:
    return (f"| {r.arch} | {r.budget} | {r.searcher} | {r.seed} | {100 * r.score:.2f} | {100 * r.test:.2f} | "
            f"{r.size_kb:.2f} | {r.bitops_m:.2f} | {r.distinct} | {r.seconds:.0f} |")


def _ms(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    if len(values) == 1:
        return f"{scale * values[0]:.{digits}f}"
    return f"{scale * statistics.mean(values):.{digits}f} +- {scale * statistics.stdev(values):.{digits}f}"


def table(rows: list[Row]) -> list[str]:
    """One line per (network, budget, searcher): mean +- sd over its seeds."""
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.arch, r.budget, r.searcher), []).append(r)
    out = []
    for (arch, budget, name), rs in groups.items():
        out.append(
            f"| {arch} | {budget} | {name} | {len(rs)} | {_ms([r.score for r in rs])} | {_ms([r.test for r in rs])} | "
            f"{_ms([r.size_kb for r in rs], 1)} | {_ms([r.bitops_m for r in rs], 1)} | "
            f"{_ms([float(r.distinct) for r in rs], 1, 0)} | {_ms([r.seconds for r in rs], 1, 0)} |"
        )
    return out


def mean_test(rows: list[Row], arch: str, budget: str, name: str) -> float:
    vals = [r.test for r in rows if (r.arch, r.budget, r.searcher) == (arch, budget, name)]
    return statistics.mean(vals) if vals else float("nan")


def _base(name: str) -> str:
    return name.split("+")[0]


def fully_seeded(rows: list[Row], arch: str, budget: str) -> set[str]:
    """The searchers run with the most seeds at ``(arch, budget)``: the ones a mean is taken over.

    The comparisons of the RESULT line pick the best of these only. A maximum over the one-seed
    agents as well would select on the test split (with 750 test images one image is 0.13 points
    and a single fine-tune's spread is a few tenths), so a lucky single run would stand for its
    searcher."""
    seeds: dict[str, set[int]] = {}
    for r in rows:
        if (r.arch, r.budget) == (arch, budget):
            seeds.setdefault(r.searcher, set()).add(r.seed)
    most = max((len(v) for v in seeds.values()), default=0)
    return {n for n, v in seeds.items() if len(v) == most}


def best_rl(rows: list[Row], budgets: tuple[str, ...]) -> str | None:
    """The RL searcher with the best mean fine-tuned test accuracy over ``budgets`` (its row label)."""
    names = {r.searcher for r in rows if r.arch == "resnet8" and _base(r.searcher) in RL
             and all(r.searcher in fully_seeded(rows, "resnet8", b) for b in budgets)}
    scores = {n: statistics.mean(mean_test(rows, "resnet8", b, n) for b in budgets) for n in names}
    return max(scores, key=lambda n: scores[n]) if scores else None


def learning_figures(rows: list[Row], budgets: tuple[str, ...] = ("size<=0.0625x", "size<=0.03125x")) -> dict[str, float]:
    """Issue 10's figures on ResNet-8, fine-tuned test points (mean over seeds):
    the worst over ``budgets`` of (best learning searcher minus the integer program, the warm
    start of TPE/NSGA-II and the reference of the RL agents), and the mean over ``budgets``
    of the best RL agent minus TPE and minus random search; only searchers run with every seed
    count (:func:`fully_seeded`)."""
    nan = float("nan")
    names = {r.searcher for r in rows if r.arch == "resnet8"
             and all(r.searcher in fully_seeded(rows, "resnet8", b) for b in budgets)}
    learning = [n for n in names if _base(n) not in ("uniform", "ilp", "ilp_tpe", "random")]  # pure learners
    def pick(base: str) -> str | None:
        return next((n for n in names if _base(n) == base), None)
    ilp, tpe, rnd = pick("ilp"), pick("tpe"), pick("random")
    rl = best_rl(rows, budgets)
    out = {"best_learning_minus_warmstart": nan, "rl_minus_tpe": nan, "rl_minus_random": nan}
    if learning and ilp:
        out["best_learning_minus_warmstart"] = 100 * min(
            max(mean_test(rows, "resnet8", b, n) for n in learning) - mean_test(rows, "resnet8", b, ilp) for b in budgets)
    for key, other in (("rl_minus_tpe", tpe), ("rl_minus_random", rnd)):
        if rl and other:
            out[key] = 100 * statistics.mean(mean_test(rows, "resnet8", b, rl) - mean_test(rows, "resnet8", b, other)
                                             for b in budgets)
    return out


def summary(rows: list[Row], tiny: list[tuple[str, float, int]], float_test: float) -> str:
    def gap(budget: str) -> float:  # the better headline row's mean over its seeds, not a best seed
        names = fully_seeded(rows, "resnet20", budget)
        if not names:
            return float("nan")
        return 100 * (float_test - max(mean_test(rows, "resnet20", budget, n) for n in names))

    def best_minus_uniform(budget: str) -> float:
        names = {n for n in fully_seeded(rows, "resnet8", budget) if _base(n) != "uniform"}
        best = max((mean_test(rows, "resnet8", budget, n) for n in names), default=float("nan"))
        uniform = next((r.searcher for r in rows if r.arch == "resnet8" and _base(r.searcher) == "uniform"), "uniform")
        return 100 * (best - mean_test(rows, "resnet8", budget, uniform))

    regret = next((g for n, g, _ in tiny if n == DEFAULTS.searcher.name), float("nan"))
    return (f"RESULT ft_gap_1_16={gap('size<=0.0625x'):.2f} ft_gap_1_32={gap('size<=0.03125x'):.2f} "
            f"best_minus_uniform_1_16={best_minus_uniform('size<=0.0625x'):.2f} "
            f"best_minus_uniform_1_32={best_minus_uniform('size<=0.03125x'):.2f} regret_tiny={regret:.2f} "
            + " ".join(f"{k}={v:.2f}" for k, v in learning_figures(rows).items()))


def plan(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], int, int]:
    """``(ranking budgets, headline budgets, searchers, ranking evaluations, headline evaluations)``."""
    if args.quick:
        return RANK_BUDGETS[:2], HEADLINE_BUDGETS[1:], QUICK_SEARCHERS, args.evaluations or 60, args.headline_evaluations or 60
    return (RANK_BUDGETS, HEADLINE_BUDGETS, ALL_SEARCHERS, args.evaluations or 150,
            args.headline_evaluations or HEADLINE_EVALUATIONS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, two budgets per network, fewer evaluations")
    ap.add_argument("--evaluations", type=int, default=0, help="distinct evaluations per ResNet-8 search (stage included)")
    ap.add_argument("--headline-evaluations", type=int, default=0, help="the same for the ResNet-20 rows")
    ap.add_argument("--searchers", default="", help="comma-separated subset of the ranking searchers")
    ap.add_argument("--seeds", type=int, default=0, help="seeds of tpe/nsga2/random/best RL, the ILP and uniform rows (their fine-tunes) (3; 1 with --quick)")
    ap.add_argument("--jobs", type=int, default=1, help="parallel processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--cache-dir", default=str(default_cache_dir()), help="where the sensitivity tables are cached")
    ap.add_argument("--finetune-steps", type=int, default=DEFAULTS.finetune.steps,
                    help="steps of the final fine-tune (SearchConfig's default; lower only to smoke-test the script)")
    ap.add_argument("--out", default="", help="append every row as a JSON line to this file")
    ap.add_argument("--summarise", default="", help="only print the table and RESULT of rows saved by --out")
    ap.add_argument("--finalists", type=int, default=1,
                    help="screen this many of each search's best policies by a short fine-tune (automl search --finalists)")
    ap.add_argument("--headline-searchers", default=f"uniform,{DEFAULTS.searcher.name}",
                    help="the ResNet-20 headline rows' searchers (default: the uniform baseline and the default searcher)")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the rows already in --out (same settings assumed) and run only the missing ones")
    args = ap.parse_args(argv)
    from agents import SEARCHERS

    for option in ("searchers", "headline_searchers"):
        unknown = [x.strip() for x in getattr(args, option).split(",") if x.strip() and x.strip() not in (*SEARCHERS, "uniform")]
        if unknown:
            ap.error(f"--{option.replace('_', '-')}: unknown searcher(s) {unknown}; choose from {sorted(SEARCHERS)} or uniform")
    if args.resume and not args.out:
        ap.error("--resume needs --out (the rows file of the run to continue)")
    if args.summarise:
        rows = load_rows(args.summarise)
        print(f"(summary of {len(rows)} saved rows; no ground truth)\n" + HEADER.format(f=DEFAULTS.evaluation.fidelity))
        print("\n".join(table(rows)))
        r20 = setup("resnet20", args.quick, args.threads, args.cache_dir).float_test
        print(summary(rows, [], r20))
        return 0
    start = time.perf_counter()
    rank_budgets, head_budgets, searchers, n_rank, n_head = plan(args)
    if args.searchers:
        searchers = tuple(x.strip() for x in args.searchers.split(",") if x.strip())
    seeds = args.seeds or (1 if args.quick else 3)
    float_test = {}
    for arch in ("resnet8", "resnet20", "plaincnn"):  # stage tables cached before any fork
        s = setup(arch, args.quick, args.threads, args.cache_dir, args.finetune_steps)
        float_test[arch] = s.float_test
        print(f"{arch}: float test {100 * s.float_test:.2f} %, sensitivities ({s.stage.method}) worth "
              f"{s.stage.evaluations} evaluations, {s.stage.seconds:.0f} s", flush=True)
    tiny, optimum, count = ground_truth(args.quick, args.threads, args.cache_dir, searchers)  # cheap: first
    common = {"quick": args.quick, "threads": args.threads, "cache_dir": args.cache_dir,
              "finetune_steps": args.finetune_steps, "out": args.out, "finalists": args.finalists}
    jobs = [Job("resnet8", b, n, 0, n_rank, **common) for b in rank_budgets for n in ("uniform", *searchers)]
    headline = tuple(x.strip() for x in args.headline_searchers.split(",") if x.strip())
    jobs += [Job("resnet20", b, n, 0, n_head, **common) for b in head_budgets for n in headline]
    done = {_key(r): r for r in load_rows(args.out)} if args.resume and os.path.exists(args.out) else {}
    if done:
        print(f"--resume: {len(done)} rows read from {args.out}", flush=True)
    rows = run_jobs(jobs, args.jobs, done)
    if seeds > 1:
        extra = [n for n in ("uniform", *searchers) if n in SEEDED + DETERMINISTIC]
        rl = best_rl(rows, rank_budgets)
        extra += [_base(rl)] if rl else []
        more = [Job("resnet8", b, n, seed, n_rank, **common) for seed in range(1, seeds) for b in rank_budgets for n in extra]
        more += [Job("resnet20", b, n, seed, n_head, **common)
                 for seed in range(1, seeds) for b in head_budgets for n in headline]
        rows += run_jobs(more, args.jobs, done)
    print(f"\nsearch fidelity {DEFAULTS.evaluation.fidelity}, sensitivities {DEFAULTS.searcher.sensitivity}, fine-tune "
          f"{_SETUPS[('resnet8', args.quick)].recipe}; ResNet-8 {n_rank} and ResNet-20 {n_head} distinct evaluations per "
          f"search; {seeds} seed(s); {time.perf_counter() - start:.0f} s in total\n")
    print(HEADER.format(f=DEFAULTS.evaluation.fidelity))
    print("\n".join(table(rows)))
    print(f"\nGround truth: plain CNN, layer-level space, {TINY_BUDGET}: {count} feasible policies enumerated, optimum "
          f"{100 * optimum:.2f} % (val, fidelity {DEFAULTS.evaluation.fidelity}); each searcher {max(1, count // 10)} distinct "
          "evaluations\n\n| searcher | regret (points) | distinct evaluations |\n|---|---|---|")
    for name, regret, distinct in tiny:
        print(f"| {name} | {regret:.2f} | {distinct} |")
    print(summary(rows, tiny, float_test["resnet20"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
