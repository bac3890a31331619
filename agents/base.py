"""The searcher interface: ``ask() -> Policy``, ``tell(policy, record)``, ``run(n_evaluations)``.

In Optuna's ask/tell spirit a searcher only proposes policies and learns from their
records; the :class:`~agents.objective.Objective` scores them, so every searcher is judged
the same way. :meth:`Searcher.run` is the default driver::

    objective = Objective(evaluator, cost_model, budget.bind(cost_model))
    result = RandomSearcher(objective, seed=0).run(100, callbacks=[MyProgress()])
    result.best.policy

Searchers that drive their own loop (RL agents learning from episodes) override
:meth:`Searcher.run` but keep its contract: each evaluation goes through the objective,
is told to the searcher, appears once in the result, and is passed to every callback.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from typing import ClassVar

from agents.objective import Objective
from agents.records import SearchResult, TrialRecord
from automl.errors import ConfigError
from search_spaces.policy import Policy


class Callback:
    """Hooks of a search; subclass and override what you need (all default to no-ops).

    The runner implements MLflow logging, progress bars and checkpoints with these; the
    searchers never call MLflow or print.

    - ``on_start(searcher, objective)``: before the first evaluation of :meth:`Searcher.run`
      (also on a resumed search, whose earlier records are in ``searcher.records``).
    - ``on_trial(record) -> bool``: after each evaluation; return ``False`` to stop the
      search after this trial (the result then holds fewer than ``n_evaluations`` records).
    - ``on_end(result)``: once, with the final result.
    """

    def on_start(self, searcher: Searcher, objective: Objective) -> None:
        """Called once before the first evaluation."""

    def on_trial(self, record: TrialRecord) -> bool:
        """Called after every evaluation; ``False`` stops the search."""
        return True

    def on_end(self, result: SearchResult) -> None:
        """Called once with the result."""


def notify_trial(callbacks: Sequence[Callback], record: TrialRecord) -> bool:
    """Pass ``record`` to every callback (all of them, even after one asks to stop); ``True`` = continue."""
    keep_going = True
    for cb in callbacks:
        if cb.on_trial(record) is False:
            keep_going = False
    return keep_going


class Searcher(abc.ABC):
    """Proposes policies and learns from their records.

    Args:
        objective: scores proposed policies (evaluator, cost model, budget, repair).
        seed: makes the sequence of proposals reproducible.

    Attributes:
        name: registry name of the searcher (``random``, ``tpe``, ``ppo``, ...).
        records: every record of this search so far, in trial-number order.
        max_duplicates: consecutive cache hits (proposals of already evaluated policies)
            after which :meth:`run` gives up; the reason lands in
            :attr:`SearchResult.stop_reason`. Cache hits cost no budget, so without this
            cap a searcher that has converged would loop forever.
        stop_reason: why the last run ended early, empty if it spent its budget.
    """

    name: ClassVar[str] = ""
    max_duplicates: int = 100

    def __init__(self, objective: Objective, *, seed: int = 0) -> None:
        self.objective = objective
        self.space = objective.space
        self.seed = int(seed)
        self.records: list[TrialRecord] = []
        self.stop_reason = ""
        self._elapsed = 0.0
        self._duplicates = 0

    @property
    def label(self) -> str:
        """The name recorded with every trial (``name`` unless an adapter refines it)."""
        return self.name

    @abc.abstractmethod
    def ask(self) -> Policy:
        """The next policy to evaluate."""

    @abc.abstractmethod
    def tell(self, policy: Policy, record: TrialRecord) -> None:
        """Learn from the record of ``policy`` (the policy :meth:`ask` returned)."""

    def evaluate(self, policy: Policy, number: int | None = None) -> TrialRecord:
        """Score ``policy`` through the objective and keep the record (numbered in order by default)."""
        record = self.objective(policy, number=len(self.records) if number is None else number, searcher=self.label)
        self.records.append(record)
        return record

    @property
    def n_distinct(self) -> int:
        """Records that were evaluated (not answered from the cache): what the budget counts."""
        return sum(1 for r in self.records if not r.cache_hit)

    def count_duplicate(self, record: TrialRecord) -> bool:
        """Track consecutive cache hits; ``False`` (and :attr:`stop_reason` set) once the cap is reached."""
        self._duplicates = self._duplicates + 1 if record.cache_hit else 0
        if self._duplicates >= self.max_duplicates:
            self.stop_reason = (
                f"{self._duplicates} consecutive proposals were already evaluated policies "
                f"(max_duplicates={self.max_duplicates}); the searcher has stopped finding new ones"
            )
            return False
        return True

    def run(self, n_evaluations: int, callbacks: Sequence[Callback] = ()) -> SearchResult:
        """Ask, evaluate and tell until the search holds ``n_evaluations`` distinct policies.

        A proposal of an already evaluated policy is answered from the cache, told to the
        searcher and recorded (``cache_hit``), but does not count; :attr:`max_duplicates`
        of them in a row end the search. A searcher that already holds records (a resumed
        search) evaluates only the rest.

        Args:
            n_evaluations: distinct policies to evaluate, at least 1.
            callbacks: see :class:`Callback`.

        Returns:
            Every record, the best feasible policy and the Pareto front.
        """
        check_evaluations(n_evaluations)
        start = time.perf_counter()
        for cb in callbacks:
            cb.on_start(self, self.objective)
        self.stop_reason = ""
        while self.n_distinct < n_evaluations:
            policy = self.ask()
            record = self.evaluate(policy)
            self.tell(policy, record)
            if not notify_trial(callbacks, record):
                self.stop_reason = "a callback asked to stop"
                break
            if not self.count_duplicate(record):
                break
        return self.finish(start, callbacks)

    def finish(self, start: float, callbacks: Sequence[Callback]) -> SearchResult:
        """Close a run that began at ``start`` (``perf_counter``): build the result, call ``on_end``."""
        self._elapsed += time.perf_counter() - start
        result = self.result()
        for cb in callbacks:
            cb.on_end(result)
        return result

    def result(self) -> SearchResult:
        """The search so far as a :class:`SearchResult`."""
        return SearchResult(
            searcher=self.label,
            records=tuple(sorted(self.records, key=lambda r: r.number)),
            limits=self.objective.limits,
            budget=self.objective.budget_text,
            wall_seconds=self._elapsed,
            seed=self.seed,
            stop_reason=self.stop_reason,
        )


def check_evaluations(n_evaluations: int) -> None:
    if not isinstance(n_evaluations, int) or isinstance(n_evaluations, bool) or n_evaluations < 1:
        raise ConfigError(f"n_evaluations must be a positive integer, got {n_evaluations!r}")
