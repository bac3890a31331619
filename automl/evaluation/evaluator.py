"""Scoring policies: post-training quantization, BatchNorm re-estimation, short QAT.

The :class:`Evaluator` is, with the cost model, the only component that touches the
network. It is built once per task: BatchNorm is folded, every allowed bit-width of every
layer is quantized once, activation ranges are calibrated once, and the validation split
and the float model's outputs on it are held in memory. Each ``evaluate(policy)`` then
gathers weights and runs one pass over the validation split.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from automl.analysis import ModelAnalysis, analyse
from automl.errors import ConfigError, DataError
from automl.evaluation.config import FIDELITIES, EvalConfig
from automl.evaluation.datafree import DataFreeConfig, calibration_inputs
from automl.evaluation.early_stop import EarlyStopRule
from automl.evaluation.finetune import FinetuneConfig, FinetuneReport
from automl.evaluation.finetune import finetune as run_finetune
from automl.evaluation.incremental import IncrementalForward, make_incremental
from automl.evaluation.losses import task_losses
from automl.evaluation.task import Task
from automl.problem.metrics import Metrics
from automl.quant.adaquant import AdaQuantConfig, adaquant
from automl.quant.device import device_generator, place_model, resolve_device, to_device
from automl.quant.engine import QuantEngine
from automl.quant.importance import channel_importance, channel_ranking
from search_spaces.policy import Policy
from search_spaces.space import SearchSpace, SpaceConfig

__all__ = ["FIDELITIES", "EvalConfig", "Evaluator", "Problem"]


def _batches(
    loader: object, name: str, limit: int | None = None, device: torch.device | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``(inputs, targets)`` batches of ``loader`` (the first ``limit``), moved to ``device``."""
    out = []
    for i, batch in enumerate(loader):  # type: ignore[attr-defined]
        if limit is not None and i >= limit:
            break
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise DataError(f"{name} must yield (inputs, targets) pairs, got {type(batch).__name__}")
        x, y = batch[0], batch[1]
        if device is not None:
            x, y = to_device(x, device, name), to_device(y, device, name)
        out.append((x, y))
    if not out:
        raise DataError(f"{name} yielded no batches; give it at least one (inputs, targets) batch")
    return out


@dataclass
class Problem:
    """A task analysed and turned into a search space (built once, shared by all parts).

    Attributes:
        task: the user's task; its model lies on ``device``.
        analysis: the model's layers, shapes and channel coupling.
        space: the search space.
        device: where every stage of the model layer runs (the evaluator, sensitivities, the
            fine-tune); chosen once, in :meth:`from_task`.
    """

    task: Task
    analysis: ModelAnalysis
    space: SearchSpace
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_task(cls, task: Task, space_config: SpaceConfig | None = None,
                  device: str | torch.device | None = "auto") -> Problem:
        """Analyse ``task`` on ``device`` and build its search space.

        Args:
            task: the user's task.
            space_config: the search space's choices (channels are ranked by its ``importance``:
                ``l1``, ``l2`` or ``taylor``).
            device: ``auto`` (a GPU when CUDA is available, else the CPU), ``cpu``, ``cuda`` or
                ``cuda:N`` (:func:`~automl.quant.device.resolve_device`). The task's model is moved
                there in place when it lies elsewhere, with a warning of the ``automl.device`` logger.

        Raises:
            ConfigError: ``device`` is malformed or not available on this machine.
        """
        space_config = space_config or SpaceConfig()
        importance = space_config.importance
        where = resolve_device(device)
        model = place_model(task.model, where).eval()
        analysis = analyse(model, to_device(task.sample_input, where, "Task.sample_input"))
        pairs = _batches(task.calib_loader, "calib_loader", 2, where) if importance == "taylor" else []
        scores = channel_importance(model, analysis, importance, [x for x, _ in pairs] or None,
                                    loss=getattr(task, "loss", None), calib_targets=[y for _, y in pairs])
        ranks = channel_ranking(analysis, scores)
        return cls(task, analysis, SearchSpace.build(analysis, space_config, ranks), where)


TEACHER_CACHE_BYTES = 256 * 2**20  # the float teacher's kept outputs on the train split (Evaluator.teacher_output)


class Evaluator:
    """Evaluates policies on the validation split (or the test split for final reports).

    Everything runs on the problem's device (:attr:`Problem.device`): the engine, the held
    splits, the teacher outputs and every fine-tune. On a GPU, ``EvalConfig.tf32`` sets torch's
    process-wide TF32 switches (matmul and cuDNN) when the evaluator is built, off by default.
    """

    def __init__(self, problem: Problem, config: EvalConfig | None = None, seed: int = 0) -> None:
        self.problem = problem
        self.config = config or EvalConfig()
        self.seed = int(seed)
        self.device = problem.device
        task = problem.task
        self.float_model = place_model(task.model, self.device).eval()
        if self.device.type == "cuda":  # cuDNN allows TF32 by default: off unless asked, to score as the CPU does
            torch.backends.cuda.matmul.allow_tf32 = self.config.tf32
            torch.backends.cudnn.allow_tf32 = self.config.tf32
        synth = DataFreeConfig(samples=self.config.datafree_samples, steps=self.config.datafree_steps, seed=self.seed)
        calib = calibration_inputs(task, self.config.calibration, self.config.calib_batches, self.seed, synth,
                                   device=self.device)
        self.engine = QuantEngine(
            self.float_model, problem.analysis, problem.space, calib,
            weight_method=self.config.weight_method, act_method=self.config.act_method,
            power_of_two=self.config.power_of_two, device=self.device,
        )
        if self.config.channels_last:
            for ql in self.engine.layers.values():
                ql.channels_last = True
        self._bn_batch = self._layout(torch.cat(calib))
        if self.config.bn_samples:
            self._bn_batch = self._bn_batch[: self.config.bn_samples]
        self._splits: dict[str, tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]] = {}
        self._train_data: tuple[torch.Tensor, torch.Tensor] | None = None
        self._teacher: dict[tuple[int, int | None], list[torch.Tensor | None]] = {}
        self.last_finetune: FinetuneReport | None = None
        self.n_evaluations = 0
        self._final_ready: Policy | None = None  # the policy whose prepare_final state the engine holds
        self.final_reuses = 0  # prepare_final calls answered from that state
        self.incumbent: float | None = None
        self._stop_rule = EarlyStopRule(self.config.early_stop_delta)
        self.incremental, self.incremental_error = (
            make_incremental(self.engine, self.config.cache_mb) if self.config.incremental else (None, "off")
        )

    # data ----------------------------------------------------------------------------
    def _split(self, split: str) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        if split not in self._splits:
            loader = {"val": self.problem.task.val_loader, "test": self.problem.task.test_loader}.get(split)
            if loader is None:
                raise ConfigError(f"split must be 'val' or 'test', got {split!r}")
            batches = _batches(loader, f"{split}_loader", device=self.device)
            xs = [x for x, _ in batches]
            ys = torch.cat([y for _, y in batches])
            if self.config.eval_batch_size:  # the split re-cut into larger (or smaller) batches
                xs = list(torch.cat(xs).split(self.config.eval_batch_size))
            xs = [self._layout(x) for x in xs]
            with torch.no_grad():
                ref = torch.cat([self.float_model(x) for x in xs])  # the teacher's outputs
            self._splits[split] = (xs, ys, ref)
        return self._splits[split]

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in channels-last memory order when ``EvalConfig.channels_last`` asks for it (4-D inputs)."""
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last and x.dim() == 4 else x

    def _score(self, model: nn.Module, split: str, fidelity: int, start: float, inc: IncrementalForward | None = None) -> Metrics:
        xs, ys, ref = self._split(split)
        keep_going = self._early_stop(ys) if split == "val" and fidelity > 0 else None
        if inc is not None:
            outs = inc.outputs(self.engine.current, f"{split}:{fidelity}", xs, keep_going)  # type: ignore[arg-type]
        else:
            outs = []
            with torch.no_grad():
                for i, x in enumerate(xs):
                    outs.append(model(x))
                    if keep_going is not None and i + 1 < len(xs) and not keep_going(i, outs[-1]):
                        break
        outputs = torch.cat(outs)
        n = len(outputs)
        ys, ref = (ys, ref) if n == len(ys) else (ys[:n], ref[:n])
        loss, distill = task_losses(self.problem.task)
        with torch.no_grad():
            return Metrics(
                accuracy=float(self.problem.task.metric(outputs, ys)),
                loss=float(loss(outputs, ys)),
                kl=float(distill(outputs, ref)),
                fidelity=fidelity,
                seconds=time.perf_counter() - start,
                stopped_early=n < len(self._splits[split][1]),
                samples=n,
            )

    def _early_stop(self, ys: torch.Tensor):
        """The per-batch check of :mod:`automl.evaluation.early_stop`, or ``None`` when it does not apply."""
        if not self.config.early_stop or self.incumbent is None:
            return None
        incumbent, total, seen = self.incumbent, len(ys), [0, 0.0]
        metric, rule = self.problem.task.metric, self._stop_rule

        def keep_going(_i: int, out: torch.Tensor) -> bool:
            y = ys[seen[0]:seen[0] + len(out)]
            value = float(metric(out, y))
            if not 0.0 <= value <= 1.0:  # the bound needs a per-sample metric in [0, 1]
                return True
            seen[0] += len(out)
            seen[1] += value * len(out)
            return not rule.should_stop(seen[1] / seen[0], seen[0], total, incumbent)

        return keep_going

    def set_incumbent(self, accuracy: float | None) -> None:
        """The best full-split validation accuracy so far (early stopping compares against it)."""
        self.incumbent = None if accuracy is None else float(accuracy)

    # public --------------------------------------------------------------------------
    def baseline(self, split: str = "val") -> Metrics:
        """Metrics of the float model itself, from its outputs on ``split`` (held as the
        distillation targets, so the float model runs once per split)."""
        start = time.perf_counter()
        _, ys, ref = self._split(split)
        loss, distill = task_losses(self.problem.task)
        with torch.no_grad():
            return Metrics(accuracy=float(self.problem.task.metric(ref, ys)), loss=float(loss(ref, ys)),
                           kl=float(distill(ref, ref)), fidelity=0, seconds=time.perf_counter() - start,
                           stopped_early=False, samples=len(ys))

    def float_accuracy(self, split: str = "val") -> float:
        """The float model's task metric on ``split``, from the teacher outputs already held."""
        _, ys, ref = self._split(split)
        with torch.no_grad():
            return float(self.problem.task.metric(ref, ys))

    def evaluate(self, policy: Policy, fidelity: int | None = None, split: str = "val") -> Metrics:
        """Score ``policy``; deterministic for a given seed."""
        start = time.perf_counter()
        fidelity = fidelity or self.config.fidelity
        if fidelity not in FIDELITIES:
            raise ConfigError(f"fidelity must be 1, 2 or 3, got {fidelity!r}")
        model = self._apply(policy)
        # AdaQuant's weights depend on the whole prefix's outputs: no prefix reuse with it
        inc = self.incremental if fidelity < 3 and self.config.ptq != "adaquant" else None
        if fidelity >= 2 and self.engine.bn_affine:  # without BatchNorm, fidelity 2 is fidelity 1
            if inc is not None:
                inc.reestimate(self.engine.current, self._bn_batch)  # type: ignore[arg-type]
            else:
                self.engine.reestimate_batchnorm(self._bn_batch)
        if fidelity == 3:
            model = self.finetune(model, self.config.qat_steps)
        if self.config.ptq == "none" and (fidelity >= 2 or not self.engine.bn_affine):
            self._final_ready = self.engine.current  # the state prepare_final would build
        self.n_evaluations += 1
        return self._score(model, split, fidelity, start, inc)

    def _apply(self, policy: Policy, final: bool = False) -> nn.Module:
        self._final_ready = None
        model = self.engine.apply(policy)
        if self.config.ptq == "adaquant" or (final and self.config.ptq == "adaquant-final"):
            adaquant(self.engine, self._bn_batch, AdaQuantConfig(steps=self.config.adaquant_steps, seed=self.seed))
        return model

    def finetune(
        self, qmodel: nn.Module, steps: int, lr: float | None = None, config: FinetuneConfig | None = None
    ) -> nn.Module:
        """A trained copy of ``qmodel`` (see :func:`automl.evaluation.finetune.finetune`).

        Without ``config`` this is the short QAT of fidelity 3: ``steps`` of Adam on
        distillation from the float model at ``lr`` (``qat_lr`` by default), no validation.
        The report of the last fine-tune is kept in :attr:`last_finetune`.
        """
        cfg = config or FinetuneConfig.legacy(steps, lr or self.config.qat_lr, self.config.qat_psg)
        model, self.last_finetune = run_finetune(self, qmodel, cfg)
        return model

    def score(self, model: nn.Module, split: str = "val") -> Metrics:
        """Metrics of any model (e.g. a fine-tuned copy) on ``split``."""
        return self._score(model, split, 0, time.perf_counter())

    def train_batches(self, batch_size: int = 64, seed: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The training split shuffled once by ``seed`` and cut into batches (kept in memory)."""
        seed = self.seed if seed is None else seed
        if self._train_data is None:
            batches = _batches(self.problem.task.train_loader, "train_loader", device=self.device)
            self._train_data = (torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))
        xs, ys = self._train_data
        perm = torch.randperm(len(xs), generator=device_generator(self.device, seed), device=self.device)
        return list(zip(xs[perm].split(batch_size), ys[perm].split(batch_size), strict=True))

    def teacher_output(self, batch_size: int, seed: int | None, index: int, x: torch.Tensor) -> torch.Tensor:
        """The float model's output on ``x``, batch ``index`` of ``train_batches(batch_size, seed)``.

        Computed once per batch and kept: every fine-tune of a search (the speculative ones
        of :mod:`automl.runs.overlap`, the finalists', the winner's) walks the same batches, so
        from the second epoch or the second fine-tune on the teacher costs nothing. The
        same forward on the same batch gives the same tensor, so a fine-tune's result does
        not depend on whether the output came from here (``tests/test_finetune.py``). Kept
        only while the train split's outputs stay under :data:`TEACHER_CACHE_BYTES`.
        """
        cache = self._teacher.get((batch_size, seed))
        if cache is None:
            if self._train_data is None:
                self.train_batches(batch_size, seed)  # the train split, gathered once
            assert self._train_data is not None
            n = math.ceil(len(self._train_data[0]) / batch_size)  # as many as train_batches cuts
            cache = self._teacher[(batch_size, seed)] = [None] * n
        out = cache[index]
        if out is None:
            with torch.no_grad():
                out = self.float_model(x)
            if isinstance(out, torch.Tensor) and out.element_size() * out.numel() * len(cache) <= TEACHER_CACHE_BYTES:
                cache[index] = out  # one list slot per batch: a second thread writes the same value
        return out

    def evaluate_many(self, policies: Sequence[Policy], fidelity: int | None = None) -> list[Metrics]:
        return [self.evaluate(p, fidelity) for p in policies]

    def final(
        self, policy: Policy, finetune_steps: int, split: str = "test", *, finetune: FinetuneConfig | None = None,
        seed: int | None = None,
    ) -> tuple[Metrics, nn.Module]:
        """The deliverable of a search: ``policy`` with BatchNorm re-estimated (a no-op
        without BatchNorm) and fine-tuned, scored on ``split``.

        ``finetune`` is the recipe (:class:`~automl.evaluation.config.FinetuneConfig`: labels plus
        distillation, cosine schedule, keep-best on validation); without it the default
        recipe runs for ``finetune_steps`` steps (none when 0). The fine-tune's report
        (validation before and after) is kept in :attr:`last_finetune`. Returns the metrics
        and the trained quantized model (a copy; the engine's model is left as is)."""
        start = time.perf_counter()
        model = self.prepare_final(policy)
        model, report = run_finetune(self, model, self.final_recipe(finetune_steps, finetune), seed=seed)
        return self.score_final(model, report, split, start), model

    def final_recipe(self, finetune_steps: int, finetune: FinetuneConfig | None = None) -> FinetuneConfig:
        """The recipe :meth:`final` runs: ``finetune``, or the default one for ``finetune_steps``."""
        return finetune if finetune is not None else FinetuneConfig(steps=finetune_steps, psg=self.config.qat_psg)

    def prepare_final(self, policy: Policy) -> nn.Module:
        """The first half of :meth:`final`: ``policy`` applied (with ``adaquant-final``'s
        optimisation) and BatchNorm re-estimated, or, when the engine holds exactly that
        state (``policy`` was the last one evaluated, at fidelity 2), the engine's model as it
        is: the incremental re-estimation is bit-for-bit the full one. It is the engine's own
        model: copy it before the engine applies another policy. With ``ptq="none"`` a later :meth:`evaluate`
        is unaffected: it applies its policy from scratch, and the activation cache is keyed
        by policy (:mod:`automl.runs.overlap` relies on this)."""
        resolved = self.problem.space.resolve(policy)
        if self._holds_final(resolved):  # just evaluated at fidelity 2: the same apply and re-estimation
            self.final_reuses += 1
            return self.engine.qmodel
        model = self._apply(policy, final=True)
        if self.engine.bn_affine:
            self.engine.reestimate_batchnorm(self._bn_batch)
        if self.config.ptq == "none":
            self._final_ready = self.engine.current
        return model

    def _holds_final(self, resolved: Policy) -> bool:
        """Whether the engine still holds :meth:`prepare_final`'s state for ``resolved``: its
        last evaluation (or preparation) was of it, with BatchNorm re-estimated on the same
        batch, and nothing has applied a policy or dropped the corrections since."""
        if self._final_ready is None or self._final_ready != resolved or self.engine.current != resolved:
            return False
        return all(self.engine.layers[name].correction is not None for name in self.engine.bn_affine)

    def score_final(self, model: nn.Module, report: FinetuneReport, split: str, start: float) -> Metrics:
        """The second half of :meth:`final`: the fine-tuned ``model`` scored on ``split``,
        its fine-tune's ``report`` kept in :attr:`last_finetune`."""
        self.last_finetune = report
        return self._score(model, split, 3 if report.steps else 2, start)
