"""The final fine-tune of a search's winner: labels plus distillation, a schedule, keep-best.

:func:`finetune` trains the float weights behind every quantized layer through a
straight-through estimator at the policy's fixed per-channel bit-widths (pruned channels
stay exactly zero), optionally with learnable quantizer step sizes (LSQ). The loss is

    (1 - distill_weight) * task_loss(student, labels) + distill_weight * distill_loss(student, float model)

where ``task_loss`` is the task's own ``loss`` when it has one (else cross-entropy) and
``distill_loss`` the task's ``distill_loss`` when it has one (else the KL divergence from
the float model's softmax at ``temperature``). The learning rate follows a cosine
schedule from ``lr`` to 0 (or stays constant). Every ``eval_every`` steps and at the end
the model is scored on the validation split, and the best checkpoint (the untrained
model included) is returned, so the result is never worse on validation than the input.

Two rules end a fine-tune before its last step, both on validation and both recorded in
the report's ``stop_reason``: ``patience`` checks in a row without a better checkpoint
(the cosine schedule is then cut short), and ``stop_at_float``: once validation accuracy
reaches the float model's, the fine-tune has done what it is for, and further checkpoints
would be chosen on the noise of a few hundred validation images. It is off by default: a
model that was not trained to convergence (an outside LeNet-style CNN trained for two
epochs) gains well beyond its own float accuracy from training on labels, and stopping at
float accuracy took that away (benchmarks/search_speed.py, README).
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from automl.evaluation.config import FinetuneConfig
from automl.problem.metrics import Metrics
from automl.quant.engine import QuantLayer
from automl.quant.psg import with_psg

if TYPE_CHECKING:
    from automl.evaluation.evaluator import Evaluator


@dataclass(frozen=True)
class FinetuneReport:
    """What a fine-tune did.

    Attributes:
        steps: optimiser steps taken.
        before / after: validation metrics of the input and of the returned model.
        best_step: the step of the returned checkpoint (0 = the untrained model).
        history: ``(step, validation accuracy, validation loss)`` of every check.
        seconds: wall time.
        stop_reason: why it ended: ``steps`` (all of them), ``patience`` or ``float``
            (validation reached the float model's accuracy).
    """

    steps: int
    before: Metrics
    after: Metrics
    best_step: int
    history: tuple[tuple[int, float, float], ...]
    seconds: float
    stop_reason: str = "steps"

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "before": self.before.to_dict(), "after": self.after.to_dict(),
                "best_step": self.best_step, "history": [list(h) for h in self.history], "seconds": self.seconds,
                "stop_reason": self.stop_reason}


def _kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), log_target=True,
                    reduction="batchmean") * t * t


def _losses(task: Any, config: FinetuneConfig) -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    task_loss = getattr(task, "loss", None) or F.cross_entropy
    distill = getattr(task, "distill_loss", None) or (lambda s, t: _kl(s, t, config.temperature))
    return task_loss, distill


def _prepare(student: nn.Module, lsq: bool) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    weights: list[nn.Parameter] = []
    scales: list[nn.Parameter] = []
    for m in student.modules():
        if isinstance(m, QuantLayer):
            m.enable_qat(lsq=lsq)
            weights += [m.w_param, m.b_param]
            scales += [p for p in (m.w_scale, m.a_scale) if p is not None]
    return weights, scales


def _optimizer(config: FinetuneConfig, weights: list[nn.Parameter], scales: list[nn.Parameter]) -> torch.optim.Optimizer:
    groups: list[dict[str, Any]] = [{"params": weights, "weight_decay": config.weight_decay}]
    if scales:
        groups.append({"params": scales, "weight_decay": 0.0})
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def _better(m: Metrics, best: Metrics) -> bool:
    return m.accuracy > best.accuracy or (m.accuracy == best.accuracy and m.loss < best.loss)


def _loss(student: nn.Module, teacher: Callable[[], torch.Tensor], x: torch.Tensor, y: torch.Tensor, alpha: float,
          task_loss: Callable[..., torch.Tensor], distill: Callable[..., torch.Tensor]) -> torch.Tensor:
    """``(1 - alpha) * task loss + alpha * distillation loss`` of one batch (a term of weight 0 is
    skipped); ``teacher()`` gives the float model's output on ``x``."""
    out = student(x)
    loss = out.new_zeros(())
    if alpha < 1:
        loss = loss + (1 - alpha) * task_loss(out, y)
    if alpha > 0:
        loss = loss + alpha * distill(out, teacher())
    return loss


class Cancelled(Exception):
    """A fine-tune told to stop by its ``should_stop`` (a speculative one whose policy lost, :mod:`automl.runs.overlap`)."""


def finetune(
    evaluator: Evaluator, qmodel: nn.Module, config: FinetuneConfig, *,
    should_stop: Callable[[], bool] | None = None, seed_global: bool = True, seed: int | None = None,
) -> tuple[nn.Module, FinetuneReport]:
    """A fine-tuned copy of ``qmodel`` (the engine's model is left as is) and its report.

    Args:
        evaluator: supplies the float teacher, the training batches and the validation score.
        qmodel: the quantized model of a policy (``QuantEngine.apply`` after any BN re-estimation).
        config: see :class:`FinetuneConfig`.
        should_stop: checked before every step; ``True`` raises :class:`Cancelled`.
        seed: the data order's seed (and the global generator's, see ``seed_global``);
            ``evaluator.seed`` when ``None``.
        seed_global: seed torch's global generator with ``seed`` (for a task loss
            that draws from it; nothing in this module does: the data order has its own
            generator). A fine-tune on a background thread passes ``False``, since the
            global generator is shared with the search on the main thread (an RL agent
            samples its actions from it).
    """
    start = time.perf_counter()
    seed = evaluator.seed if seed is None else seed
    if seed_global:
        torch.manual_seed(seed)
    student = copy.deepcopy(qmodel).eval()
    # Eval mode throughout: BatchNorms that could not be folded keep their statistics.
    validate = config.keep_best or config.eval_every > 0
    before = evaluator.score(student, "val") if validate else Metrics(float("nan"), float("nan"), float("nan"), 0)
    batches = evaluator.train_batches(config.batch_size, seed)
    steps = int(math.ceil(config.epochs * len(batches))) if config.epochs else config.steps
    target = evaluator.float_accuracy("val") if validate and config.stop_at_float else math.inf
    weights, scales = _prepare(student, config.lsq)
    task_loss, distill = _losses(evaluator.problem.task, config)
    opt = _optimizer(config, weights, scales)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1)) if config.schedule == "cosine" else None
    opt = with_psg(opt, student, config.psg)  # type: ignore[assignment]  # PSG (automl/quant/psg.py); unchanged at 0
    best, best_step, best_state = before, 0, _trainable_state(student)
    history = [(0, before.accuracy, before.loss)] if validate else []
    alpha = config.distill_weight
    taken, reason, stale = 0, "steps", 0
    if steps and before.accuracy >= target:
        reason, steps = "float", 0
    for step in range(1, steps + 1):
        if should_stop is not None and should_stop():
            raise Cancelled(f"stopped before step {step} of {steps}")
        i = (step - 1) % len(batches)
        x, y = batches[i]
        teacher = functools.partial(evaluator.teacher_output, config.batch_size, seed, i, x)
        loss = _loss(student, teacher, x, y, alpha, task_loss, distill)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        taken = step
        if validate and ((config.eval_every and step % config.eval_every == 0) or step == steps):
            m = evaluator.score(student, "val")
            history.append((step, m.accuracy, m.loss))
            if _better(m, best) or not config.keep_best:
                best, best_step, best_state, stale = m, step, _trainable_state(student), 0
            else:
                stale += 1
            if step < steps and best.accuracy >= target:
                reason = "float"
                break
            if step < steps and config.patience and stale >= config.patience:
                reason = "patience"
                break
    if config.keep_best:
        with torch.no_grad():
            for k, p in student.named_parameters():
                p.copy_(best_state[k])
    for m in student.modules():
        if isinstance(m, QuantLayer):
            m.freeze_scales()
    after = best if validate else before
    report = FinetuneReport(taken, before, after, best_step if config.keep_best else taken, tuple(history),
                            time.perf_counter() - start, reason)
    return student.eval(), report
