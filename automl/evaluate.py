"""Scoring policies: post-training quantization, BatchNorm re-estimation, short QAT.

The :class:`Evaluator` is, with the cost model, the only component that touches the
network. It is built once per task: BatchNorm is folded, every allowed bit-width of every
layer is quantized once, activation ranges are calibrated once, and the validation split
and the float model's outputs on it are held in memory. Each ``evaluate(policy)`` then
gathers weights and runs one pass over the validation split.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from automl.analysis import ModelAnalysis, analyse
from automl.datafree import DataFreeConfig, calibration_inputs
from automl.errors import ConfigError, DataError
from automl.importance import channel_importance, channel_ranking
from automl.metrics import Metrics
from automl.quant.adaquant import AdaQuantConfig, adaquant
from automl.quant.engine import QuantEngine, QuantLayer
from automl.quant.methods import check_method_options
from automl.quant.psg import with_psg
from automl.task import Task
from search_spaces.policy import Policy
from search_spaces.space import SearchSpace, SpaceConfig

FIDELITIES = (1, 2, 3)


@dataclass(frozen=True)
class EvalConfig:
    """How policies are scored.

    Attributes:
        fidelity: 1 = PTQ; 2 = PTQ + BatchNorm re-estimation; 3 = 2 + ``qat_steps`` of
            quantization-aware fine-tuning distilled from the float model.
        weight_method / act_method / power_of_two: see :class:`QuantEngine`.
        importance: channel importance criterion (``l1``, ``l2``, ``taylor``).
        calib_batches: how many calibration batches calibrate activation ranges.
        qat_steps / qat_lr: fine-tuning length and learning rate at fidelity 3.
        seed: makes fidelity 3 deterministic.
        ptq: ``"none"`` (round-to-nearest), ``"adaquant"`` (layer-wise optimised weights,
            :mod:`automl.quant.adaquant`, after every ``apply``: at every fidelity and in
            ``final``) or ``"adaquant-final"`` (only in ``final``, before the fine-tune and export).
        adaquant_steps: AdaQuant's optimisation steps per layer.
        calibration: ``"data"`` (the task's calibration loader) or ``"data-free"``
            (inputs synthesised from BatchNorm statistics, :mod:`automl.datafree`).
        datafree_samples / datafree_steps: how many inputs are synthesised, and Adam steps per batch.
        psg: position-based scaled gradient strength in [0, 1] for every fine-tune
            (:mod:`automl.quant.psg`); 0 is plain Adam.
    """

    fidelity: int = 1
    weight_method: str = "mse"
    act_method: str = "mse"
    power_of_two: bool = False
    importance: str = "l1"
    calib_batches: int = 2
    qat_steps: int = 40
    qat_lr: float = 5e-4
    seed: int = 0
    ptq: str = "none"
    adaquant_steps: int = 60
    calibration: str = "data"
    datafree_samples: int = 128
    datafree_steps: int = 100
    psg: float = 0.0

    def __post_init__(self) -> None:
        if self.fidelity not in FIDELITIES:
            raise ConfigError(f"fidelity must be 1, 2 or 3, got {self.fidelity!r}")
        if self.calib_batches < 1 or self.qat_steps < 0:
            raise ConfigError("calib_batches must be >= 1 and qat_steps >= 0")
        check_method_options(self.ptq, self.adaquant_steps, self.calibration, self.psg)


def _batches(loader: object, name: str, limit: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for i, batch in enumerate(loader):  # type: ignore[attr-defined]
        if limit is not None and i >= limit:
            break
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise DataError(f"{name} must yield (inputs, targets) pairs, got {type(batch).__name__}")
        out.append((batch[0], batch[1]))
    if not out:
        raise DataError(f"{name} yielded no batches; give it at least one (inputs, targets) batch")
    return out


@dataclass
class Problem:
    """A task analysed and turned into a search space (built once, shared by all parts)."""

    task: Task
    analysis: ModelAnalysis
    space: SearchSpace

    @classmethod
    def from_task(cls, task: Task, space_config: SpaceConfig | None = None, importance: str = "l1") -> Problem:
        model = task.model.eval()
        analysis = analyse(model, task.sample_input)
        calib = [x for x, _ in _batches(task.calib_loader, "calib_loader", 2)] if importance == "taylor" else None
        ranks = channel_ranking(analysis, channel_importance(model, analysis, importance, calib))
        return cls(task, analysis, SearchSpace.build(analysis, space_config, ranks))


class Evaluator:
    """Evaluates policies on the validation split (or the test split for final reports)."""

    def __init__(self, problem: Problem, config: EvalConfig | None = None) -> None:
        self.problem = problem
        self.config = config or EvalConfig()
        task = problem.task
        self.float_model = task.model.eval()
        synth = DataFreeConfig(samples=self.config.datafree_samples, steps=self.config.datafree_steps, seed=self.config.seed)
        calib = calibration_inputs(task, self.config.calibration, self.config.calib_batches, self.config.seed, synth)
        self.engine = QuantEngine(
            self.float_model, problem.analysis, problem.space, calib,
            weight_method=self.config.weight_method, act_method=self.config.act_method,
            power_of_two=self.config.power_of_two,
        )
        self._bn_batch = torch.cat(calib)
        self._splits: dict[str, tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]] = {}
        self._train: list[torch.Tensor] | None = None
        self.n_evaluations = 0

    # data ----------------------------------------------------------------------------
    def _split(self, split: str) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        if split not in self._splits:
            loader = {"val": self.problem.task.val_loader, "test": self.problem.task.test_loader}.get(split)
            if loader is None:
                raise ConfigError(f"split must be 'val' or 'test', got {split!r}")
            batches = _batches(loader, f"{split}_loader")
            xs = [x for x, _ in batches]
            ys = torch.cat([y for _, y in batches])
            with torch.no_grad():
                ref = F.log_softmax(torch.cat([self.float_model(x) for x in xs]), dim=1)
            self._splits[split] = (xs, ys, ref)
        return self._splits[split]

    def _score(self, model: nn.Module, split: str, fidelity: int, start: float) -> Metrics:
        xs, ys, ref = self._split(split)
        with torch.no_grad():
            logits = torch.cat([model(x) for x in xs])
        logp = F.log_softmax(logits, dim=1)
        return Metrics(
            accuracy=float(self.problem.task.metric(logits, ys)),
            loss=float(F.cross_entropy(logits, ys)),
            kl=float(F.kl_div(logp, ref, log_target=True, reduction="batchmean")),
            fidelity=fidelity,
            seconds=time.perf_counter() - start,
        )

    # public --------------------------------------------------------------------------
    def baseline(self, split: str = "val") -> Metrics:
        """Metrics of the float model itself."""
        return self._score(self.float_model, split, 0, time.perf_counter())

    def evaluate(self, policy: Policy, fidelity: int | None = None, split: str = "val") -> Metrics:
        """Score ``policy``; deterministic for a given seed."""
        start = time.perf_counter()
        fidelity = fidelity or self.config.fidelity
        if fidelity not in FIDELITIES:
            raise ConfigError(f"fidelity must be 1, 2 or 3, got {fidelity!r}")
        model = self._apply(policy)
        if fidelity >= 2:
            self.engine.reestimate_batchnorm(self._bn_batch)
        if fidelity == 3:
            model = self.finetune(model, self.config.qat_steps)
        self.n_evaluations += 1
        return self._score(model, split, fidelity, start)

    def _apply(self, policy: Policy, final: bool = False) -> nn.Module:
        model = self.engine.apply(policy)
        if self.config.ptq == "adaquant" or (final and self.config.ptq == "adaquant-final"):
            adaquant(self.engine, self._bn_batch, AdaQuantConfig(steps=self.config.adaquant_steps, seed=self.config.seed))
        return model

    def finetune(self, qmodel: nn.Module, steps: int, lr: float | None = None) -> nn.Module:
        """A trained copy of ``qmodel``: ``steps`` of QAT distilled from the float model.

        The float weights behind every quantized layer are trained through a
        straight-through estimator at the layer's fixed per-channel bit-widths; pruned
        channels stay exactly zero.
        """
        torch.manual_seed(self.config.seed)
        student = copy.deepcopy(qmodel)
        params: list[nn.Parameter] = []
        for m in student.modules():
            if isinstance(m, QuantLayer):
                m.enable_qat()
                params += [m.w_param, m.b_param]
        if self._train is None:
            gen = torch.Generator().manual_seed(self.config.seed)
            xs = torch.cat([x for x, _ in _batches(self.problem.task.train_loader, "train_loader")])
            self._train = list(xs[torch.randperm(len(xs), generator=gen)].split(64))
        opt = with_psg(torch.optim.Adam(params, lr=lr or self.config.qat_lr), student, self.config.psg)
        student.train()
        for step in range(steps):
            x = self._train[step % len(self._train)]
            with torch.no_grad():
                teacher = F.log_softmax(self.float_model(x), dim=1)
            loss = F.kl_div(F.log_softmax(student(x), dim=1), teacher, log_target=True, reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
        return student.eval()

    def evaluate_many(self, policies: Sequence[Policy], fidelity: int | None = None) -> list[Metrics]:
        return [self.evaluate(p, fidelity) for p in policies]

    def final(self, policy: Policy, finetune_steps: int, split: str = "test") -> tuple[Metrics, nn.Module]:
        """The deliverable of a search: ``policy`` with BatchNorm re-estimated and fine-tuned
        for ``finetune_steps`` (none when 0), scored on ``split``. Returns the metrics and
        the trained quantized model (a copy; the engine's model is left as is)."""
        start = time.perf_counter()
        model = self._apply(policy, final=True)
        self.engine.reestimate_batchnorm(self._bn_batch)
        model = self.finetune(model, finetune_steps)
        return self._score(model, split, 3 if finetune_steps else 2, start), model
