"""How policies are scored and how the winner is fine-tuned: :class:`EvalConfig` and
:class:`FinetuneConfig`, the ``evaluation`` and ``finetune`` sections of a search configuration.

Both are plain values that import without torch, so a configuration is checked (and a bad option
refused) before torch is imported. The run's seed is not part of either: the
:class:`~automl.evaluation.evaluator.Evaluator` is given it, and the fine-tune takes it from there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from automl.evaluation.early_stop import EarlyStopRule
from automl.settings import Settings

FIDELITIES = (1, 2, 3)
FINETUNE_OPTIMIZERS = ("sgd", "adam")
PTQ_METHODS = ("none", "adaquant", "adaquant-final")
CALIBRATIONS = ("data", "data-free")
SCHEDULES = ("cosine", "constant")


class EvalConfig(Settings):
    """How policies are scored.

    Attributes:
        fidelity: 1 = PTQ; 2 = PTQ + BatchNorm re-estimation; 3 = 2 + ``qat_steps`` of
            quantization-aware fine-tuning distilled from the float model. At 2-3 bits plain
            PTQ collapses, so fidelity 1 ranks low-bit policies by noise; fidelity 2 costs one
            forward pass of ``bn_samples`` calibration inputs more. A network without BatchNorm
            has nothing to re-estimate: there fidelity 2 scores exactly like fidelity 1.
        weight_method: per-channel weight clipping, ``mse`` or ``max``.
        act_method: activation range calibration, ``mse``, ``percentile`` or ``minmax``.
        power_of_two: restrict quantization scales to powers of two (shift-only hardware).
        calib_batches: calibration batches for activation ranges and BatchNorm re-estimation.
        bn_samples: how many of those calibration inputs re-estimate BatchNorm statistics at
            fidelity 2 and in the final model (0 = all of them); the re-estimation pass is the
            larger part of a fidelity-2 evaluation (``benchmarks/bn_samples.py`` measures the trade-off;
            its page is in ``docs/results/``).
        qat_steps / qat_lr: fine-tuning length and learning rate at fidelity 3.
        qat_psg: position-based scaled gradient strength in [0, 1] of that fine-tuning
            (:mod:`automl.quant.psg`); 0 is plain Adam.
        incremental: reuse the activations of an unchanged policy prefix at fidelities 1
            and 2 (:mod:`automl.evaluation.incremental`); bit-for-bit the same metrics.
        cache_mb: memory limit of that activation cache in MiB (0 = off).
        early_stop: stop scoring a policy on the validation split once its running accuracy is
            clearly below the incumbent's (:mod:`automl.evaluation.early_stop`). A stopped
            policy is reported like any other, with the metrics of the samples scored so far
            (an estimate below the incumbent's accuracy, so it can never become the best) and
            ``Metrics.stopped_early`` set.
        early_stop_delta: allowed probability per evaluation of stopping a policy that would
            have beaten the incumbent.
        ptq: ``none`` (round-to-nearest), ``adaquant`` (layer-wise optimised weights and biases,
            :mod:`automl.quant.adaquant`, at every evaluation) or ``adaquant-final`` (only for the
            final policy, before its fine-tune and export).
        adaquant_steps: AdaQuant's optimisation steps per layer.
        calibration: ``data`` (the task's calibration loader) or ``data-free`` (inputs
            synthesised from BatchNorm statistics, :mod:`automl.evaluation.datafree`).
        datafree_samples / datafree_steps: how many inputs are synthesised, and Adam steps per batch.
        eval_batch_size: scores run the validation (and test) split in batches of this many
            samples, whatever the loader's batch size (0 = the loader's batches). Large batches
            keep a GPU busy; per-sample outputs do not depend on the batch beyond float rounding.
        channels_last: run 4-D inputs and convolution weights in channels-last memory order
            (faster convolutions on recent GPUs; off by default).
        tf32: let CUDA matmuls and convolutions use TF32 (faster on Ampere and later GPUs, about
            three fewer decimal digits of precision); no effect on the CPU; off by default.
    """

    fidelity: int = 2
    weight_method: Literal["mse", "max"] = "mse"
    act_method: Literal["mse", "percentile", "minmax"] = "mse"
    power_of_two: bool = False
    calib_batches: int = Field(2, ge=1)
    bn_samples: int = Field(250, ge=0)
    qat_steps: int = Field(40, ge=0)
    qat_lr: float = Field(5e-4, gt=0)
    qat_psg: float = Field(0.0, ge=0.0, le=1.0)
    incremental: bool = True
    cache_mb: int = Field(1024, ge=0, le=65536)
    early_stop: bool = True
    early_stop_delta: float = Field(0.01, gt=0.0, lt=1.0)
    ptq: Literal["none", "adaquant", "adaquant-final"] = "none"
    adaquant_steps: int = Field(60, ge=1)
    calibration: Literal["data", "data-free"] = "data"
    datafree_samples: int = Field(128, ge=1)
    datafree_steps: int = Field(100, ge=1)
    eval_batch_size: int = Field(0, ge=0)
    channels_last: bool = False
    tf32: bool = False

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if self.fidelity not in FIDELITIES:
            raise ValueError(f"fidelity must be 1, 2 or 3, got {self.fidelity!r}")
        EarlyStopRule(self.early_stop_delta)
        return self


class FinetuneConfig(Settings):
    """How the winner of a search is chosen among finalists and fine-tuned.

    Attributes:
        steps: optimiser steps (0 = no fine-tune); ignored when ``epochs`` is set.
        epochs: passes over the training split instead of ``steps`` (0 = use ``steps``).
        lr: peak learning rate.
        optimizer: ``sgd`` (momentum ``momentum``, Nesterov) or ``adam``.
        momentum: SGD momentum.
        weight_decay: L2 penalty on the trained weights (not on LSQ scales).
        batch_size: training images per step.
        distill_weight: share of the distillation loss, 0 (labels only) to 1 (float model only).
        temperature: softmax temperature of the default distillation loss.
        schedule: ``cosine`` (to 0 over the run) or ``constant``.
        eval_every: validate every this many steps (0 = only before and after) and keep
            the best checkpoint.
        keep_best: return the best validated checkpoint (the untrained model included);
            when false, the last one.
        lsq: learn the quantizers' step sizes (weights per channel, activations per layer).
        psg: position-based scaled gradient strength in [0, 1] (0 = off).
        patience: stop after this many validation checks in a row without a better
            checkpoint (0 = run every step).
        stop_at_float: stop as soon as validation accuracy reaches the float model's
            (checked before the first step too).
        finalists: how many of the best distinct policies get a short fine-tune before the
            winner is chosen (1 = the best search score wins; :mod:`automl.evaluation.finalists`).
        finalist_steps: the steps of each finalist's short fine-tune.
        overlap: fine-tune each new incumbent on a spare core while the search runs, so the
            winner's fine-tune is done, or partly done, when the search ends
            (:mod:`automl.runs.overlap`, which also says when there is no spare core).
    """

    steps: int = Field(500, ge=0)
    epochs: float = Field(0.0, ge=0.0)
    lr: float = Field(5e-4, gt=0.0, allow_inf_nan=False)
    optimizer: Literal["sgd", "adam"] = "adam"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(64, ge=1)
    distill_weight: float = Field(0.5, ge=0.0, le=1.0)
    temperature: float = Field(1.0, gt=0.0)
    schedule: Literal["cosine", "constant"] = "cosine"
    eval_every: int = Field(25, ge=0)
    keep_best: bool = True
    lsq: bool = False
    psg: float = Field(0.0, ge=0.0, le=1.0)
    patience: int = Field(3, ge=0)
    stop_at_float: bool = False
    finalists: int = Field(1, ge=1)
    finalist_steps: int = Field(50, ge=1)
    overlap: bool = False

    @classmethod
    def legacy(cls, steps: int, lr: float, psg: float = 0.0) -> FinetuneConfig:
        """The fine-tune of fidelity 3: Adam on distillation alone, constant rate, no validation."""
        return cls(steps=steps, lr=lr, optimizer="adam", distill_weight=1.0, schedule="constant", eval_every=0,
                   keep_best=False, psg=psg, patience=0, stop_at_float=False)
