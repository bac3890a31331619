"""The winner by a short fine-tune of the search's best policies (``--finalists``)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from automl.errors import ConfigError
from automl.evaluation.finalists import screen, top_distinct
from automl.evaluation.finetune import FinetuneConfig
from automl.runs.config import SearchConfig


def _record(number: int, policy: str, accuracy: float, feasible: bool = True, stopped: bool = False) -> SimpleNamespace:
    return SimpleNamespace(number=number, policy=policy, accuracy=accuracy, feasible=feasible,
                           metrics=SimpleNamespace(stopped_early=stopped))


class FakeEvaluator:
    """Validation after the short fine-tune is a known function of the policy."""

    def __init__(self, after: dict[str, float]) -> None:
        self.after = after
        self.calls: list[tuple[str, int, str, FinetuneConfig]] = []

    def final(self, policy, steps, split, *, finetune):
        self.calls.append((policy, steps, split, finetune))
        return SimpleNamespace(accuracy=self.after[policy]), None


RECORDS = [
    _record(0, "a", 0.30),
    _record(1, "b", 0.90, feasible=False),   # infeasible: never a finalist
    _record(2, "c", 0.28),
    _record(3, "a", 0.30),                    # a repeat of trial 0
    _record(4, "d", 0.50, stopped=True),      # stopped early: its score is a bound, not a score
    _record(5, "e", 0.25),
    _record(6, "f", 0.10),
]


def test_top_distinct_skips_repeats_infeasible_and_early_stopped():
    assert [r.number for r in top_distinct(RECORDS, 3)] == [0, 2, 5]


def test_the_best_uniform_policy_takes_the_last_place_unless_one_is_already_there():
    assert [r.number for r in top_distinct(RECORDS, 3, uniform={"f"})] == [0, 2, 6]  # f: the only uniform one
    assert [r.number for r in top_distinct(RECORDS, 3, uniform={"c", "f"})] == [0, 2, 5]  # c is a top-3 already
    assert [r.number for r in top_distinct(RECORDS, 1, uniform={"f"})] == [0]  # one finalist: the best score
    assert [r.number for r in top_distinct(RECORDS, 3, uniform={"b", "d"})] == [0, 2, 5]  # not eligible


def test_a_uniform_finalist_can_win_and_is_reported_as_uniform():
    ev = FakeEvaluator({"a": 0.91, "c": 0.92, "f": 0.97})
    winner, report = screen(ev, RECORDS, 3, 40, FinetuneConfig(), uniform={"f"})
    assert winner.number == 6 and [f.uniform for f in report] == [False, False, True]


def test_the_finalist_that_validates_best_after_the_short_fine_tune_wins():
    ev = FakeEvaluator({"a": 0.91, "c": 0.96, "e": 0.93})
    winner, report = screen(ev, RECORDS, 3, 40, FinetuneConfig(steps=500, patience=3))
    assert winner.number == 2  # second by search score, first after the fine-tune
    assert [(f.trial, f.val_after) for f in report] == [(0, 0.91), (2, 0.96), (5, 0.93)]
    assert all(split == "val" and steps == 40 for _, steps, split, _ in ev.calls)
    short = ev.calls[0][3]
    assert (short.steps, short.patience) == (40, 0)


def test_ties_keep_the_better_search_score():
    ev = FakeEvaluator({"a": 0.95, "c": 0.95})
    winner, _ = screen(ev, RECORDS, 2, 10, FinetuneConfig())
    assert winner.number == 0


def test_one_finalist_is_the_best_score_without_any_fine_tune():
    ev = FakeEvaluator({})
    winner, report = screen(ev, RECORDS, 1, 50, FinetuneConfig())
    assert (winner.number, report, ev.calls) == (0, [], [])
    assert screen(ev, [], 3, 50, FinetuneConfig()) == (None, [])


def test_finalist_options_are_checked():
    with pytest.raises(ConfigError, match="finetune.finalists: must be greater than or equal to 1"):
        SearchConfig(finetune={"finalists": 0})
    with pytest.raises(ConfigError, match="finetune.finalist_steps: must be greater than or equal to 1"):
        SearchConfig(finetune={"finalist_steps": 0})


def test_a_search_with_finalists_reports_them_and_fine_tunes_their_winner(tmp_path):
    from automl.runs.runner import search
    from tests.tasks import tiny

    result = search(tiny(), budget="size<=0.3x",  quiet=True, run={"evaluations": 6, "output": str(tmp_path)}, finetune={"steps": 4, "eval_every": 2, "finalists": 2, "finalist_steps": 2}, searcher={"name": "random", "sensitivity": "heuristic"})
    run_dir = next((tmp_path / "runs").iterdir())
    best = next(iter(json.loads((run_dir / "best_policies.json").read_text()).values()))
    finalists = best["finalists"]
    assert len(finalists) == 2
    top = max(finalists, key=lambda f: (f["val_after"], f["score"]))
    assert best["trial"] == top["trial"]
    assert sorted((f["score"] for f in finalists), reverse=True) == [f["score"] for f in finalists]
    assert result.best is not None and max(f["score"] for f in finalists) == pytest.approx(result.best.accuracy)
    timings = json.loads((run_dir / "timings.json").read_text())
    assert timings["seconds_finalists"] > 0
