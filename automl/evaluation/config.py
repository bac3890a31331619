"""How policies are scored: :class:`EvalConfig`, a plain value that imports without torch.

:class:`automl.runs.config.SearchConfig` validates its evaluation settings with it when a
configuration is read, so that a bad option is refused before torch is imported
(``automl search --searcher nope`` answers in ~0.4 s instead of ~1.3-2 s).
"""

from __future__ import annotations

from dataclasses import dataclass

from automl.errors import ConfigError
from automl.evaluation.early_stop import EarlyStopRule
from automl.evaluation.methods import check_method_options

FIDELITIES = (1, 2, 3)
FINETUNE_OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class EvalConfig:
    """How policies are scored.

    Attributes:
        fidelity: 1 = PTQ; 2 = PTQ + BatchNorm re-estimation; 3 = 2 + ``qat_steps`` of
            quantization-aware fine-tuning distilled from the float model. A network
            without BatchNorm has nothing to re-estimate: there fidelity 2 scores exactly
            like fidelity 1 (and costs the same; the re-estimation pass is skipped).
        weight_method / act_method / power_of_two: see :class:`QuantEngine`.
        importance: channel importance criterion (``l1``, ``l2``, ``taylor``).
        calib_batches: how many calibration batches calibrate activation ranges.
        bn_samples: how many of those calibration inputs re-estimate BatchNorm statistics at
            fidelity 2 and in the final model (0 = all of them). The re-estimation pass is
            the larger part of a fidelity-2 evaluation; benchmarks/bn_samples.py measured
            the search's default (250).
        qat_steps / qat_lr: fine-tuning length and learning rate at fidelity 3.
        seed: makes fidelity 3 deterministic.
        incremental: reuse the activations of an unchanged policy prefix at fidelities 1
            and 2 (:mod:`automl.evaluation.incremental`); bit-for-bit the same metrics.
        cache_mb: memory limit of the activation cache in MiB.
        early_stop: stop scoring a policy on the validation split once its running
            accuracy is clearly below the incumbent's (:mod:`automl.evaluation.early_stop`; the
            incumbent is set by :meth:`Evaluator.set_incumbent`). A stopped policy is
            reported to searchers like any other, with the accuracy, loss and KL of the
            samples scored so far (an estimate below the incumbent's accuracy, so it can
            never become the best) and ``Metrics.stopped_early`` set.
        early_stop_delta: allowed probability per evaluation of stopping a policy that
            would have beaten the incumbent.
        ptq: ``"none"`` (round-to-nearest), ``"adaquant"`` (layer-wise optimised weights,
            :mod:`automl.quant.adaquant`, after every ``apply``: at every fidelity and in
            ``final``) or ``"adaquant-final"`` (only in ``final``, before the fine-tune and export).
        adaquant_steps: AdaQuant's optimisation steps per layer.
        calibration: ``"data"`` (the task's calibration loader) or ``"data-free"``
            (inputs synthesised from BatchNorm statistics, :mod:`automl.evaluation.datafree`).
        datafree_samples / datafree_steps: how many inputs are synthesised, and Adam steps per batch.
        psg: position-based scaled gradient strength in [0, 1] for every fine-tune
            (:mod:`automl.quant.psg`); 0 is plain Adam.
        eval_batch_size: scores run the validation (and test) split in batches of this many
            samples, whatever the loader's batch size (0 = the loader's batches). Large batches
            keep a GPU busy; per-sample outputs do not depend on the batch beyond float rounding.
        channels_last: run 4-D inputs and convolution weights in channels-last memory order
            (faster convolutions on recent GPUs; off by default).
        tf32: let CUDA matmuls and convolutions use TF32 (faster on Ampere and later GPUs, about
            three fewer decimal digits of precision); no effect on the CPU; off by default.
    """

    fidelity: int = 1
    weight_method: str = "mse"
    act_method: str = "mse"
    power_of_two: bool = False
    importance: str = "l1"
    calib_batches: int = 2
    bn_samples: int = 0
    qat_steps: int = 40
    qat_lr: float = 5e-4
    seed: int = 0
    incremental: bool = True
    cache_mb: int = 1024
    early_stop: bool = False
    early_stop_delta: float = 0.01
    ptq: str = "none"
    adaquant_steps: int = 60
    calibration: str = "data"
    datafree_samples: int = 128
    datafree_steps: int = 100
    psg: float = 0.0
    eval_batch_size: int = 0
    channels_last: bool = False
    tf32: bool = False

    def __post_init__(self) -> None:
        if self.fidelity not in FIDELITIES:
            raise ConfigError(f"fidelity must be 1, 2 or 3, got {self.fidelity!r}")
        if self.calib_batches < 1 or self.qat_steps < 0:
            raise ConfigError("calib_batches must be >= 1 and qat_steps >= 0")
        if self.bn_samples < 0:
            raise ConfigError(f"bn_samples must be >= 0 (0 = every calibration input), got {self.bn_samples}")
        if isinstance(self.eval_batch_size, bool) or not isinstance(self.eval_batch_size, int) or self.eval_batch_size < 0:
            raise ConfigError(f"eval_batch_size must be an integer >= 0 (0 = the loader's batches), got {self.eval_batch_size!r}")
        if self.cache_mb < 0:
            raise ConfigError(f"cache_mb must be >= 0 (0 turns the activation cache off), got {self.cache_mb}")
        EarlyStopRule(self.early_stop_delta)
        check_method_options(self.ptq, self.adaquant_steps, self.calibration, self.psg)
