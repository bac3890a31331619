"""The final fine-tune, started on the spare core while the search still runs.

A search ends by fine-tuning its winner, a quarter of the wall time of the default
ResNet-20 search (``benchmarks/search_speed.py``). The winner is the incumbent at the end:
the best feasible record so far by the rule of :func:`agents.records.best_record`. So
:class:`SpeculativeFinetune`, a search callback, starts a fine-tune of every new incumbent
on a background thread (cancelling the one before); if the search ends on that incumbent,
the fine-tune has already run, in part or whole, beside the search, and the final stage
only waits for the rest. It computes what the foreground fine-tune computes (the same
prepared model, recipe and single-threaded kernels), so the result does not depend on
whether it overlapped; ``tests/test_overlap.py`` checks it bit for bit.

A thread rather than a process: torch releases the GIL inside its kernels, so a second
Python thread at the same torch thread count runs on another core, and it shares the
evaluator's data and float teacher in memory instead of rebuilding them.

When it runs (:func:`overlap_reason` says why not otherwise; ``finetune.overlap``
turns it off): one worker, a fine-tune to run, one finalist, ``evaluation.ptq="none"``
(AdaQuant's final optimisation works on the engine the search is using), and a core to
spare: the process may use at least twice its torch threads. Its cost is recorded in
:class:`OverlapReport`: the search-side seconds preparing each speculation (timed as
``seconds_speculation`` within the search), the fine-tune seconds that ran beside the
search, how many were started and whether the last was the winner.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from agents.base import Callback
from agents.records import TrialRecord, best_record
from automl.evaluation.finetune import Cancelled, FinetuneConfig, FinetuneReport, finetune
from search_spaces.policy import Policy


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def overlap_reason(config: Any, cores: int | None = None) -> str:
    """Why the fine-tune cannot overlap the search under ``config`` (a ``SearchConfig``); ``""`` if it can."""
    cores = usable_cores() if cores is None else cores
    if not config.finetune.overlap:
        return "finetune.overlap is off"
    if config.finetune.steps <= 0:
        return "no fine-tune (finetune.steps is 0)"
    if config.run.workers > 1:
        return "the workers use the cores"
    if config.finetune.finalists > 1:
        return "finalists are screened after the search"
    if config.evaluation.ptq != "none":
        return f"evaluation.ptq={config.evaluation.ptq!r} changes the engine the search uses"
    if cores < 2 * config.run.threads:
        return f"no spare core ({cores} usable, {config.run.threads} torch thread(s) per fine-tune and search)"
    return ""


@dataclass
class OverlapReport:
    """What the speculative fine-tunes did.

    Attributes:
        started: speculative fine-tunes started (one per new incumbent).
        cancelled: of those, stopped because a better incumbent came.
        hit: the last one was the search's winner and its fine-tune was used.
        prepare_seconds: search-side seconds applying each incumbent and copying its model.
        background_seconds: fine-tune seconds run on the background thread (all of them).
        overlapped_seconds: seconds of the winner's fine-tune that ran before the search ended.
        wait_seconds: seconds the final stage waited for the winner's fine-tune to finish.
    """

    started: int = 0
    cancelled: int = 0
    hit: bool = False
    prepare_seconds: float = 0.0
    background_seconds: float = 0.0
    overlapped_seconds: float = 0.0
    wait_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def overlap_line(report: OverlapReport) -> str:
    """One line for the terminal summary."""
    head = f"fine-tune beside the search (spare core): {report.started} started, {report.cancelled} superseded; "
    if not report.hit:
        return head + "the winner's fine-tune ran after the search"
    return head + (f"the winner's ran {report.overlapped_seconds:.0f} s during the search, the final stage "
                   f"waited {report.wait_seconds:.0f} s")


class _Job:
    """One fine-tune on its own thread."""

    def __init__(self, evaluator: Any, policy: Policy, model: nn.Module, recipe: FinetuneConfig) -> None:
        self.policy = policy
        self.stop = threading.Event()
        self.result: tuple[nn.Module, FinetuneReport] | None = None
        self.error: BaseException | None = None
        self.started = time.perf_counter()
        self.seconds = 0.0
        self._args = (evaluator, model, recipe)
        self.thread = threading.Thread(target=self._run, name="automl-speculative-finetune", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        evaluator, model, recipe = self._args
        try:
            self.result = finetune(evaluator, model, recipe, should_stop=self.stop.is_set, seed_global=False)
        except Cancelled:
            pass
        except BaseException as exc:  # handed to the main thread by SpeculativeFinetune.take
            self.error = exc
        finally:
            self.seconds = time.perf_counter() - self.started
            self._args = ()


class SpeculativeFinetune(Callback):
    """Fine-tunes each new incumbent of a search on a background thread (see the module docstring).

    Args:
        evaluator: the :class:`~automl.evaluation.evaluator.Evaluator` of the search.
        recipe: the final fine-tune's recipe.
        records: the records before this search started (a resumed search's), which set
            the first incumbent.
    """

    def __init__(self, evaluator: Any, recipe: FinetuneConfig, records: Iterable[TrialRecord] = ()) -> None:
        self.evaluator = evaluator
        self.recipe = recipe
        self.report = OverlapReport()
        self._records: list[TrialRecord] = list(records)
        self._job: _Job | None = None  # the speculation on the current incumbent
        self._jobs: list[_Job] = []  # every one started
        self._search_end: float | None = None
        self._consider()

    def on_trial(self, record: TrialRecord) -> bool:
        self._records.append(record)
        self._consider()
        return True

    def on_end(self, result: Any) -> None:
        self._search_end = time.perf_counter()

    def _consider(self) -> None:
        best = best_record(self._records)
        if best is None or (self._job is not None and self._job.policy == best.policy):
            return
        start = time.perf_counter()
        self._cancel()
        # prepared on this thread (the engine is the search's), then copied: the engine moves on
        model = copy.deepcopy(self.evaluator.prepare_final(best.policy))
        self.evaluator.train_batches(self.recipe.batch_size, self.evaluator.seed)  # the shared data, built once, here
        self._job = _Job(self.evaluator, best.policy, model, self.recipe)
        self._jobs.append(self._job)
        self.report.started += 1
        self.report.prepare_seconds += time.perf_counter() - start

    def _cancel(self) -> None:
        if self._job is not None:
            self._job.stop.set()
            self._job = None

    def take(self, policy: Policy) -> tuple[nn.Module, FinetuneReport] | None:
        """The winner's fine-tuned model and report, waiting for its fine-tune to end;
        ``None`` (and every speculation stopped) when the last speculation was another policy.

        Raises:
            BaseException: whatever the background fine-tune raised (the foreground one would have).
        """
        job, end = self._job, self._search_end or time.perf_counter()
        if job is None or job.policy != policy:
            self.close()
            return None
        start = time.perf_counter()
        job.thread.join()
        self._job = None  # finished: close() has nothing of it to stop
        self.close()
        self.report.wait_seconds = time.perf_counter() - start
        if job.error is not None:
            raise job.error
        assert job.result is not None
        self.report.hit = True
        self.report.overlapped_seconds = max(0.0, min(job.seconds, end - job.started))
        return job.result

    def close(self) -> None:
        """Stop any running speculation and wait for every thread (each stops within a step)."""
        self._cancel()
        for job in self._jobs:
            job.thread.join()
        self.report.cancelled = sum(1 for j in self._jobs if j.stop.is_set())
        self.report.background_seconds = sum(j.seconds for j in self._jobs)
