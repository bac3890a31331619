"""Choosing the winner by a short fine-tune of the search's top policies.

The search score (validation accuracy at the search fidelity) ranks policies by what they
are before the final fine-tune. At tight budgets most candidates score near chance there
and the order of the top few says little about what the fine-tune makes of them
(the proxy-fidelity and searcher-comparison pages of ``docs/results/``: a higher score at a
tight budget need not mean a better fine-tuned model). With ``finetune.finalists = k > 1`` the ``k`` best distinct feasible policies
each get a short fine-tune (``finetune.finalist_steps`` steps of the final recipe, its
cosine schedule compressed to them) and the one with the best validation accuracy after
it goes on to the full fine-tune. Ties keep the better search score. One of the ``k`` is
the best-scored uniform policy the search evaluated (the warm start evaluates some): the
score misjudges the two kinds against each other (a uniform policy can score far below mixed
ones and still fine-tune higher; see the searcher comparison in ``docs/results/``).

Every screened policy is reported (trial, search score, validation after the short run,
seconds), so the choice is visible in ``best_policies.json`` and MLflow, and its cost is
timed as the ``finalists`` stage.
"""

from __future__ import annotations

import time
from collections.abc import Container, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from automl.evaluation.finetune import FinetuneConfig


@dataclass(frozen=True)
class Finalist:
    """One screened policy: its trial, search score, validation accuracy after the short fine-tune, and whether it is uniform."""

    trial: int
    score: float
    val_after: float
    seconds: float
    uniform: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def top_distinct(records: Iterable[Any], k: int, uniform: Container[Any] = ()) -> list[Any]:
    """The ``k`` best feasible records by search score, one per policy, early-stopped ones left out.

    With ``uniform`` (the uniform policies of the space) and ``k >= 2``, the best-scored
    uniform record is among them, in place of the ``k``-th best if none of the first ``k``
    is uniform: the score ranks within the mixed and the uniform policies, not across them.
    """
    seen: set[Any] = set()
    ranked = []
    for r in sorted((r for r in records if r.feasible and not r.metrics.stopped_early), key=lambda r: (-r.accuracy, r.number)):
        if r.policy not in seen:
            seen.add(r.policy)
            ranked.append(r)
    out = ranked[:k]
    if k >= 2 and not any(r.policy in uniform for r in out):
        best_uniform = next((r for r in ranked if r.policy in uniform), None)
        if best_uniform is not None:
            out = [*out[: k - 1], best_uniform]
    return out


def screen(evaluator: Any, records: Iterable[Any], k: int, steps: int,
           recipe: FinetuneConfig, uniform: Container[Any] = ()) -> tuple[Any | None, list[Finalist]]:
    """``(winner, report)``: the record whose policy validates best after ``steps`` of ``recipe``.

    ``uniform``: see :func:`top_distinct`. With ``k <= 1``, ``steps == 0`` or a single
    candidate nothing is fine-tuned: the best by search score wins and the report is empty.
    """
    top = top_distinct(records, max(1, k), uniform)
    if not top:
        return None, []
    if k <= 1 or steps <= 0 or len(top) == 1:
        return top[0], []
    short = recipe.replace(steps=steps, epochs=0.0, eval_every=max(1, steps // 2), patience=0, stop_at_float=False)
    report = []
    for r in top:
        start = time.perf_counter()
        metrics, _ = evaluator.final(r.policy, steps, "val", finetune=short)
        report.append(Finalist(r.number, r.accuracy, metrics.accuracy, time.perf_counter() - start, r.policy in uniform))
    best = max(range(len(top)), key=lambda i: (report[i].val_after, report[i].score, -i))
    return top[best], report
