"""What a fine-tune beside the search costs, on a thread or in a forked process.

The winner's fine-tune runs on a background thread while the search evaluates
(:mod:`automl.runs.overlap`). Two things can slow both sides: the GIL (torch releases it inside
kernels, but every op dispatch and the Python around it needs it) and the hardware (two
cores sharing caches and memory bandwidth). This benchmark separates them on the reference
ResNet-20, 1 torch thread per side: a fine-tune alone, an evaluation loop alone, then the
fine-tune next to the loop on a thread and in a forked process (no GIL shared). A process
that fine-tunes faster than the thread shows the GIL's share; the evaluations' slowdown
next to the process is the hardware's.

    python benchmarks/overlap_contention.py            # 50 steps, about 3 minutes
    python benchmarks/overlap_contention.py --steps 25

Each run appends one row to ``docs/results/overlap_contention.jsonl``; ``--summarise`` writes the
page of the saved runs, whose RESULT line is the latest run's.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import results

from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.finetune import FinetuneConfig, finetune
from automl.reference.checkpoints import reference_task
from automl.timing import pin_threads

TITLE = "A fine-tune beside the search: thread against process"


def figures(r: dict[str, Any]) -> str:
    return (f"ft_thread_over_alone={r['ft_thread'] / r['ft_alone']:.3f} ft_process_over_alone={r['ft_process'] / r['ft_alone']:.3f} "
            f"eval_beside_thread_over_alone={r['eval_thread'] / r['eval_alone']:.3f} "
            f"eval_beside_process_over_alone={r['eval_process'] / r['eval_alone']:.3f}")


def summary(rows: list[dict[str, Any]]) -> results.Summary:
    """One line per run (seconds); the RESULT line is the latest run's."""
    table = results.runs_table(rows, [
        ("steps", lambda r: r["steps"]),
        ("fine-tune s: alone / thread / process", lambda r: f"{r['ft_alone']:.2f} / {r['ft_thread']:.2f} / {r['ft_process']:.2f}"),
        ("evaluation s: alone / thread / process",
         lambda r: f"{r['eval_alone']:.3f} / {r['eval_thread']:.3f} / {r['eval_process']:.3f}"),
        ("figures", figures)])
    return results.Summary((table,), "RESULT " + figures(rows[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="fine-tune steps (validation every 25)")
    parser.add_argument("--alone-seconds", type=float, default=25.0, help="length of the evaluation loop alone")
    parser.add_argument("--threads", type=int, default=1)
    results.add_arguments(parser, "overlap_contention")
    args = parser.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    if args.steps < 1 or args.alone_seconds <= 0 or args.threads < 1:
        parser.error(f"expected --steps >= 1, --alone-seconds > 0 and --threads >= 1, got {args.steps}, "
                     f"{args.alone_seconds} and {args.threads}")
    pin_threads(args.threads)
    problem = Problem.from_task(reference_task("resnet20", log=None))
    ev = Evaluator(problem, EvalConfig(fidelity=2))
    rng = np.random.default_rng(0)
    policies = [problem.space.sample(rng) for _ in range(40)]
    recipe = FinetuneConfig(steps=args.steps, eval_every=25, patience=0)
    model = copy.deepcopy(ev.prepare_final(policies[0]))

    def tune() -> float:
        start = time.perf_counter()
        finetune(ev, model, recipe, seed_global=False)
        return time.perf_counter() - start

    def evaluations(until: Callable[[], bool]) -> float:
        """Seconds per evaluation of a loop over the other policies until ``until()``."""
        n, start = 0, time.perf_counter()
        while n == 0 or not until():
            ev.evaluate(policies[1 + n % (len(policies) - 1)])
            n += 1
        return (time.perf_counter() - start) / n

    tune()  # the teacher outputs and training batches are built once, as in a search
    ft_alone = tune()
    t0 = time.perf_counter()
    eval_alone = evaluations(lambda: time.perf_counter() - t0 > args.alone_seconds)

    result: dict[str, float] = {}
    thread = threading.Thread(target=lambda: result.setdefault("seconds", tune()))
    thread.start()
    eval_thread = evaluations(lambda: not thread.is_alive())
    thread.join()
    ft_thread = result["seconds"]

    ctx = mp.get_context("fork")  # the child inherits the built evaluator; nothing else runs in it
    queue = ctx.Queue()
    proc = ctx.Process(target=lambda: queue.put(tune()))
    proc.start()
    eval_proc = evaluations(lambda: not proc.is_alive())
    ft_proc = queue.get()
    proc.join()

    print(f"fine-tune of {args.steps} steps: alone {ft_alone:.2f} s, beside evaluations on a thread {ft_thread:.2f} s, "
          f"in a process {ft_proc:.2f} s")
    print(f"evaluation: alone {eval_alone:.3f} s, beside the thread {eval_thread:.3f} s, beside the process {eval_proc:.3f} s")
    row = {"steps": args.steps, "ft_alone": ft_alone, "ft_thread": ft_thread, "ft_process": ft_proc,
           "eval_alone": eval_alone, "eval_thread": eval_thread, "eval_process": eval_proc}
    return results.finish(args, [row], "overlap_contention", summary, threads=args.threads)


if __name__ == "__main__":
    raise SystemExit(main())
