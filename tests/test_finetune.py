"""The final fine-tune: never worse on validation, labels + distillation, LSQ, a BN-free pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from automl.errors import ConfigError
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.finetune import FinetuneConfig
from automl.quant.engine import QuantLayer
from automl.runs.config import SearchConfig
from search_spaces.space import SpaceConfig
from tests.tasks import bn_free_cnn, small_resnet

ROOT = Path(__file__).resolve().parent.parent
LOW_BITS = SpaceConfig(weight_bits=(0, 2, 3), act_bits=(2, 3, 4))
TASKS = {"bn_free_cnn": bn_free_cnn, "small_resnet": small_resnet}


@pytest.fixture(scope="module", params=sorted(TASKS))
def evaluator(request) -> Evaluator:
    torch.set_num_threads(1)
    return Evaluator(Problem.from_task(TASKS[request.param](), LOW_BITS), EvalConfig(bn_samples=0, early_stop=False, fidelity=2))


def _policies(ev: Evaluator, n: int = 5) -> list:
    rng = np.random.default_rng(0)
    return [ev.problem.space.sample(rng) for _ in range(n)]


def test_fine_tune_never_lowers_validation_accuracy_on_random_low_bit_policies(evaluator):
    recipe = FinetuneConfig(steps=20, eval_every=5)
    gains = []
    for policy in _policies(evaluator):
        before = evaluator.evaluate(policy).accuracy  # the search's score: BN re-estimated, not trained
        _, model = evaluator.final(policy, 20, "test", finetune=recipe)
        report = evaluator.last_finetune
        after = evaluator.score(model, "val").accuracy
        assert report.before.accuracy == pytest.approx(before)
        assert after == pytest.approx(report.after.accuracy)
        assert after >= before
        gains.append(after - before)
    assert max(gains) > 0  # the recipe does train, it is not just returning its input


def test_keep_best_is_what_protects_validation_accuracy(evaluator):
    """A destructive learning rate lowers validation accuracy unless the best checkpoint is kept."""
    harsh = FinetuneConfig(steps=10, lr=3.0, eval_every=5, keep_best=False)
    drops = []
    for policy in _policies(evaluator, 3):
        before = evaluator.evaluate(policy).accuracy
        _, model = evaluator.final(policy, 10, "val", finetune=harsh)
        drops.append(evaluator.score(model, "val").accuracy < before)
        _, kept = evaluator.final(policy, 10, "val", finetune=FinetuneConfig(steps=10, lr=3.0, eval_every=5))
        assert evaluator.score(kept, "val").accuracy >= before
    assert any(drops)


def test_patience_ends_a_fine_tune_that_stops_improving(evaluator):
    """A destructive rate never beats the untrained checkpoint: patience ends it early."""
    harsh = FinetuneConfig(steps=40, lr=3.0, eval_every=5, patience=2, stop_at_float=False)
    policy = _policies(evaluator, 1)[0]
    _, model = evaluator.final(policy, 40, "val", finetune=harsh)
    report = evaluator.last_finetune
    assert report.stop_reason == "patience"
    assert report.steps == 10 and report.best_step == 0
    assert [h[0] for h in report.history] == [0, 5, 10]
    untouched = FinetuneConfig(steps=40, lr=3.0, eval_every=5, patience=0, stop_at_float=False)
    evaluator.final(policy, 40, "val", finetune=untouched)
    assert evaluator.last_finetune.steps == 40 and evaluator.last_finetune.stop_reason == "steps"


def test_a_policy_at_float_accuracy_is_not_trained(evaluator, monkeypatch):
    """Validation at (or above) the float model's: the fine-tune returns its input after one pass."""
    policy = _policies(evaluator, 1)[0]
    before = evaluator.evaluate(policy).accuracy
    monkeypatch.setattr(evaluator, "float_accuracy", lambda split="val": before)
    _, model = evaluator.final(policy, 30, "val", finetune=FinetuneConfig(steps=30, eval_every=5, stop_at_float=True))
    report = evaluator.last_finetune
    assert report.stop_reason == "float" and report.steps == 0 and report.best_step == 0
    assert evaluator.score(model, "val").accuracy == pytest.approx(before)
    # a target above what it starts at: it trains, and ends at the first check that reaches it
    monkeypatch.setattr(evaluator, "float_accuracy", lambda split="val": before + 1e-9)
    _, model = evaluator.final(policy, 30, "val", finetune=FinetuneConfig(steps=30, eval_every=5, patience=0,
                                                                                    stop_at_float=True))
    report = evaluator.last_finetune
    assert report.steps > 0
    if report.stop_reason == "float":
        assert report.after.accuracy > before and report.steps == report.best_step


def test_task_loss_is_used_when_the_task_has_one():
    task = bn_free_cnn()
    calls = []

    def loss(out, y):
        calls.append(len(y))
        return torch.nn.functional.cross_entropy(out, y)

    task.loss = loss  # the optional Task.loss attribute, looked up with getattr
    try:
        ev = Evaluator(Problem.from_task(task, LOW_BITS), EvalConfig(bn_samples=0, early_stop=False, fidelity=2))
        ev.final(_policies(ev, 1)[0], 3, "test", finetune=FinetuneConfig(steps=3, eval_every=0))
    finally:
        del task.loss
    assert calls.count(64) == 3  # one call per training step (scoring calls the task loss too, on 200-image batches)
    seen = len(calls)
    ev.final(_policies(ev, 1)[0], 3, "test", finetune=FinetuneConfig(steps=3, distill_weight=1.0))
    assert len(calls) == seen  # the task no longer has the loss: nothing calls it


def test_lsq_learns_step_sizes_and_freezes_them_for_inference():
    ev = Evaluator(Problem.from_task(bn_free_cnn(), LOW_BITS), EvalConfig(bn_samples=0, early_stop=False, fidelity=2))
    policy = _policies(ev, 1)[0]
    ev.engine.apply(policy)
    initial = {n: ql._scale.clone() for n, ql in ev.engine.layers.items()}
    _, model = ev.final(policy, 15, "test", finetune=FinetuneConfig(steps=15, lsq=True, keep_best=False, eval_every=0))
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}
    assert all(m.w_scale is None and m.a_scale is None for m in layers.values())
    changed = [n for n, m in layers.items() if not torch.allclose(m._scale, initial[n])]
    assert changed
    with torch.no_grad():  # inference after freezing equals the trained forward
        x = next(iter(ev.problem.task.val_loader))[0]
        assert torch.isfinite(model(x)).all()


def test_bn_free_network_fidelity_two_equals_fidelity_one():
    ev = Evaluator(Problem.from_task(bn_free_cnn(), LOW_BITS), EvalConfig(bn_samples=0, early_stop=False, fidelity=2))
    assert not ev.engine.bn_affine
    policy = _policies(ev, 1)[0]
    assert ev.evaluate(policy, fidelity=2).accuracy == ev.evaluate(policy, fidelity=1).accuracy


@pytest.mark.slow
def test_whole_pipeline_on_a_bn_free_cnn(tmp_path):
    from automl.runs.runner import search

    result = search(bn_free_cnn(), budget="size<=0.15x", searcher="random", quiet=True, run={"evaluations": 3, "output": str(tmp_path)}, finetune={"steps": 15, "eval_every": 5}, space={"weight_bits": [0, 2, 3, 4, 8], "act_bits": [4, 8]})
    assert result.best is not None and result.sensitivity_evaluations > 0
    run_dir = next((tmp_path / "runs").iterdir())
    best = next(iter(json.loads((run_dir / "best_policies.json").read_text()).values()))
    assert best["val_after_finetune"] >= best["val_before_finetune"]
    assert (run_dir / "best_model.ampq").stat().st_size > 0
    assert (run_dir / "sensitivities.csv").exists()


def test_finetune_options_are_checked():
    with pytest.raises(ConfigError, match="optimizer"):
        FinetuneConfig(optimizer="rmsprop")
    with pytest.raises(ConfigError, match="distill_weight"):
        SearchConfig(finetune={"distill_weight": 1.5})
    with pytest.raises(ConfigError, match="finetune.lr: must be greater than 0"):
        SearchConfig(finetune={"lr": 0})
    recipe = SearchConfig(finetune={"lr": 0.05, "optimizer": "adam", "lsq": True}).finetune
    assert (recipe.lr, recipe.optimizer, recipe.lsq) == (0.05, "adam", True)
    assert FinetuneConfig.from_dict(recipe.to_dict()) == recipe


def test_cli_rejects_a_bad_optimizer_with_exit_code_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "automl", "search", "--task", "tests.tasks:tiny", "--finetune-optimizer", "rmsprop",
         "--output", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "finetune.optimizer: must be 'sgd' or 'adam', got 'rmsprop'" in done.stderr and "Traceback" not in done.stderr


def test_the_teachers_outputs_are_computed_once_and_change_no_fine_tune(evaluator, monkeypatch):
    """A second fine-tune on the same batches takes the float model's outputs from the cache,
    and ends bit for bit where a fine-tune without the cache ends."""
    import automl.evaluation.evaluator as evaluate

    policy = _policies(evaluator, 1)[0]
    recipe = FinetuneConfig(steps=12, eval_every=4, batch_size=32)
    calls = []
    real = evaluator.float_model.forward
    monkeypatch.setattr(evaluator.float_model, "forward", lambda x: (calls.append(len(x)), real(x))[1])
    _, first = evaluator.final(policy, 12, "val", finetune=recipe)
    train_calls = sum(n == 32 for n in calls)
    assert train_calls > 0
    calls.clear()
    _, cached = evaluator.final(policy, 12, "val", finetune=recipe)
    assert sum(n == 32 for n in calls) == 0  # no teacher pass on the train batches the second time
    monkeypatch.setattr(evaluate, "TEACHER_CACHE_BYTES", 0)
    evaluator._teacher.clear()
    _, uncached = evaluator.final(policy, 12, "val", finetune=recipe)
    for a, b, c in zip(first.parameters(), cached.parameters(), uncached.parameters(), strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert all(out is None for cache in evaluator._teacher.values() for out in cache)  # over the limit: not kept
