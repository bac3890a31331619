"""The typed configuration of one search, built once from a YAML file and/or the command line.

:class:`SearchConfig` is a frozen dataclass; :mod:`automl.config_schema` validates it with
pydantic (every field's type, strictly) and maps nested YAML sections onto its flat,
prefixed fields (``space:``, ``evaluation:``, ``finetune:``, ``searcher:`` ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from automl.config_schema import check_types, flatten_sections, normalise
from automl.errors import AutoMLError, ConfigError

if TYPE_CHECKING:
    from automl.eval_config import EvalConfig
    from search_spaces.space import SpaceConfig

DEFAULT_BUDGET = ("size<=0.125x",)
DEFAULT_SEARCHER = "ilp_tpe"
# The default searcher at 20 distinct evaluations did as well as at 60 (ResNet-20) and 150 (ResNet-8) after the
# fine-tune, in a third to a half of the time (docs/search_quality_default_evaluations_rows.jsonl, README).
DEFAULT_EVALUATIONS = 20
# Every evaluated policy stays in the journal and in the searcher's memory (a policy holds one bit-width per
# channel): a count beyond this cannot be held, and at a millisecond per evaluation would run for weeks.
MAX_EVALUATIONS = 1_000_000
SENSITIVITY_METHODS = ("measured", "fisher", "hessian", "heuristic")
FINETUNE_OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class SearchConfig:
    """Every option of ``automl search`` (the same keys in ``--config run.yaml``).

    In YAML the prefixed keys may also be grouped in sections: ``space: {min_sparsity: 0.25}``,
    ``evaluation: {weight_method: max}``, ``finetune: {steps: 50}``,
    ``searcher: {name: tpe, options: {n_startup_trials: 20}}``.

    Attributes:
        task: ``reference:resnet20``, ``reference:resnet8`` or ``package.module:function``
            returning an :class:`automl.Task`.
        budget: constraints that must all hold, e.g. ``("size<=0.125x", "bitops<=0.5G")``.
        searcher: searcher name (see ``automl search --help``).
        evaluations: how many distinct policies to evaluate (cache hits are free).
        fidelity: 1 (PTQ), 2 (+ BatchNorm re-estimation), 3 (+ short QAT). The default is 2:
            at 2-3 bits plain PTQ collapses (ResNet-20 W2A2: 36 % at fidelity 1, 96.9 % at
            fidelity 2, see benchmarks/uniform_ptq.py), so fidelity 1 ranks low-bit
            policies by noise; re-estimation costs one extra forward pass of the calibration set.
        seed: seeds the searcher and the evaluator.
        threads: torch intra-op threads.
        workers: parallel worker processes (Optuna searchers share one study).
        tracking_uri: MLflow tracking URI; a SQLite store under ``output`` when empty.
        storage: Optuna storage URL; a SQLite file under ``output`` when empty.
        experiment: MLflow experiment name.
        output: directory of the run's files (journal, best policies as JSON, stores).
        resume: a previous search's run id or directory to continue.
        profiles: hardware profile names or YAML paths priced besides size/MACs/BitOps.
        n_groups / max_sparsity / weight_bits / act_bits / allow_pruning: search space
            (section ``space``).
        space_min_sparsity: smallest layer-level pruning fraction.
        space_sparsity_step: step between the layer-level pruning fractions.
        space_pin_first_last: hold the first and the last layer at ``space_pinned_bits``.
        space_pinned_bits: bit-width of the pinned layers (weights and activations).
        space_pinned: further layer names held at ``space_pinned_bits``.
        space_nm: N:M weight sparsity patterns a free layer may take besides dense
            (``"2:4"``, ``"1:4"``, ``"4:8"``, ``"-T"`` suffix = transposable; quote them in
            YAML, where an unquoted ``2:4`` is the base-60 integer 124); empty = off.
        space_importance: channel importance criterion that ranks channels into groups
            (``l1``, ``l2``, ``taylor``).
        eval_weight_method: per-channel weight clipping, ``mse`` or ``max``.
        eval_act_method: activation range calibration, ``mse``, ``percentile`` or ``minmax``.
        eval_power_of_two: restrict quantization scales to powers of two.
        eval_calib_batches: calibration batches for activation ranges and BatchNorm re-estimation.
        eval_bn_samples: how many calibration inputs re-estimate BatchNorm at fidelity 2
            (0 = all); the re-estimation pass is most of a fidelity-2 evaluation.
        eval_qat_steps: QAT steps per evaluation at fidelity 3.
        eval_qat_lr: learning rate of those QAT steps.
        sensitivity_method: how the per-layer sensitivities that guide the ILP, the repair,
            the TPE warm start and the RL observation are made before the search starts:
            ``measured`` (one evaluation per layer choice at the search fidelity, ~290 on
            ResNet-20), ``fisher`` (squared gradients x quantization noise), ``hessian``
            (Hutchinson trace x noise energy, HAWQ-V2/V3) or ``heuristic`` (every layer
            alike, free). Cached per model, space, fidelity and method; see automl/sensitivity_stage.py.
        finetune_steps: optimiser steps of the final fine-tune of the best policy (0 = off).
        finetune_lr: its peak learning rate (cosine schedule to 0).
        finetune_optimizer: ``adam`` (default) or ``sgd`` (Nesterov momentum 0.9); see the
            README for the measurement that chose Adam at 5e-4.
        finetune_batch_size: training images per fine-tune step.
        finetune_distill_weight: share of distillation from the float model in the
            fine-tune loss (the rest is the task's loss on labels, cross-entropy by default).
        finetune_eval_every: validate every this many steps and keep the best checkpoint
            (the model before the fine-tune included), so the fine-tune never lowers
            validation accuracy.
        finetune_lsq: also learn the quantizers' step sizes (LSQ).
        finetune_patience: end the fine-tune after this many validation checks in a row
            without a better checkpoint (0 = run every step).
        finetune_stop_at_float: end it as soon as validation accuracy reaches the float
            model's (off by default: an under-trained model gains beyond it).
        finetune_finalists: how many of the best distinct policies get a short fine-tune
            before the winner is chosen (1 = the best search score wins; see
            :mod:`automl.finalists`).
        finetune_finalist_steps: the steps of each finalist's short fine-tune.
        finetune_overlap: fine-tune each new incumbent on a spare core while the search
            runs, so the winner's fine-tune is done, or partly done, when the search ends;
            the same result as fine-tuning it afterwards (:mod:`automl.overlap`, which
            also says when there is no spare core and it stays off). Off by default: with the
            default searcher, whose sweep changes incumbent at almost every trial, the default
            search took 1.11-1.12 times as long with it (benchmarks/search_speed.py, README;
            it was 0.82-0.94 with TPE): it gains only when the winner comes early.
        searcher_stage_fidelity: Optuna searchers only: 0 scores every proposal once at
            ``fidelity``; 1 or 2 (below ``fidelity``) scores it at that cheap fidelity first
            and promotes the better half (successive halving) to ``fidelity``; both stages
            are counted.
        widen_activations: evaluate every proposed policy with each layer's widest activation
            bits when no constraint of the budget depends on them (a size-only budget: the
            same price, never a coarser quantization); each widening is recorded on the trial
            like a repair (:class:`agents.Objective`). Off by default until the searcher
            benchmark is re-run with it.
        searcher_options: keyword options of the searcher's constructor, checked against
            its signature (e.g. ``{"n_startup_trials": 20}`` for ``tpe``).
        eval_cache_mb: memory limit (MiB) of the activation cache of incremental
            evaluation (a policy that shares its first layers with an evaluated one runs
            only the rest; 0 = off). Bit-for-bit the same metrics.
        eval_early_stop: stop scoring a policy once its running validation accuracy is
            below the incumbent's with confidence ``1 - eval_early_stop_delta`` (see
            automl/early_stop.py); the record says ``stopped_early`` and reports the
            accuracy of the samples scored so far.
        eval_early_stop_delta: allowed chance, per evaluation, of stopping a policy that
            would have beaten the incumbent.
        eval_ptq: ``none`` (round-to-nearest), ``adaquant`` (layer-wise optimised weights and
            biases at every evaluation, sensitivities included: about 8x the time, see
            benchmarks/methods.py) or ``adaquant-final`` (only for the final policy, before its
            fine-tune and export).
        eval_adaquant_steps: AdaQuant optimisation steps per layer.
        eval_calibration: ``data`` (the task's calibration loader) or ``data-free`` (inputs
            synthesised from the model's BatchNorm statistics).
        finetune_psg: position-based scaled gradient strength in [0, 1] in every fine-tune (0 = off).
    """

    task: str = "reference:resnet20"
    budget: tuple[str, ...] = DEFAULT_BUDGET
    searcher: str = DEFAULT_SEARCHER
    evaluations: int = DEFAULT_EVALUATIONS
    fidelity: int = 2
    seed: int = 0
    threads: int = 1
    workers: int = 1
    tracking_uri: str = ""
    storage: str = ""
    experiment: str = "automl-mpq"
    output: str = "automl-runs"
    resume: str = ""
    profiles: tuple[str, ...] = ()
    n_groups: int | None = 4
    max_sparsity: float = 0.75
    weight_bits: tuple[int, ...] = (0, 2, 3, 4, 5, 6, 8, 32)
    act_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    allow_pruning: bool = True
    space_min_sparsity: float = 0.0
    space_sparsity_step: float = 0.125
    space_pin_first_last: bool = True
    space_pinned_bits: int = 8
    space_pinned: tuple[str, ...] = ()
    space_nm: tuple[str, ...] = ()
    space_importance: Literal["l1", "l2", "taylor"] = "l1"
    eval_weight_method: Literal["mse", "max"] = "mse"
    eval_act_method: Literal["mse", "percentile", "minmax"] = "mse"
    eval_power_of_two: bool = False
    eval_calib_batches: int = 2
    eval_bn_samples: int = 250
    eval_qat_steps: int = 40
    eval_qat_lr: float = 5e-4
    sensitivity_method: str = "hessian"
    finetune_steps: int = 500
    finetune_lr: float = 5e-4
    finetune_optimizer: str = "adam"
    finetune_batch_size: int = 64
    finetune_distill_weight: float = 0.5
    finetune_eval_every: int = 25
    finetune_lsq: bool = False
    finetune_patience: int = 3
    finetune_stop_at_float: bool = False
    finetune_finalists: int = 1
    finetune_finalist_steps: int = 50
    finetune_overlap: bool = False
    searcher_options: Mapping[str, Any] = field(default_factory=dict)
    searcher_stage_fidelity: int = 0
    widen_activations: bool = False
    eval_cache_mb: int = 1024
    eval_early_stop: bool = True
    eval_early_stop_delta: float = 0.01
    eval_ptq: str = "none"
    eval_adaquant_steps: int = 60
    eval_calibration: str = "data"
    finetune_psg: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in check_types(type(self), normalise(type(self), asdict(self))).items():
            object.__setattr__(self, name, value)
        if self.evaluations < 1:
            raise ConfigError(f"evaluations must be >= 1, got {self.evaluations}")
        if self.evaluations > MAX_EVALUATIONS:
            raise ConfigError(
                f"evaluations must be at most {MAX_EVALUATIONS:,}: every evaluated policy is kept in the run's journal "
                f"and in memory, got {self.evaluations:,}. Search in steps instead: a finished run continues with "
                "--resume RUN --evaluations N."
            )
        if self.fidelity not in (1, 2, 3):
            raise ConfigError(f"fidelity must be 1, 2 or 3, got {self.fidelity}")
        if self.threads < 1 or self.workers < 1:
            raise ConfigError(f"threads and workers must be >= 1, got {self.threads} and {self.workers}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.finetune_steps < 0:
            raise ConfigError(f"finetune_steps must be >= 0 (0 turns the final fine-tune off), got {self.finetune_steps}")
        if self.eval_qat_lr <= 0:
            raise ConfigError(f"eval_qat_lr must be > 0, got {self.eval_qat_lr}")
        if not 0 <= self.searcher_stage_fidelity < self.fidelity:
            raise ConfigError(
                f"searcher_stage_fidelity must be 0 (one stage) or a fidelity below fidelity={self.fidelity}, "
                f"got {self.searcher_stage_fidelity}"
            )
        if not 0 <= self.eval_cache_mb <= 65536:
            raise ConfigError(f"eval_cache_mb must be between 0 (off) and 65536 MiB, got {self.eval_cache_mb}")
        if not 0.0 < self.eval_early_stop_delta < 1.0:
            raise ConfigError(f"eval_early_stop_delta must be in (0, 1), got {self.eval_early_stop_delta}; 0.01 is sound")
        if not self.budget:
            raise ConfigError("a search needs at least one budget, e.g. --budget 'size<=0.125x'")
        out = Path(self.output).expanduser()
        if out.exists() and not out.is_dir():
            raise ConfigError(f"output {self.output!r} is an existing file, not a directory; pass a directory for the run's files")
        self.space_config()  # the space's and the evaluator's own range checks, before any work
        self.eval_config()
        self._check_stages()

    def _check_stages(self) -> None:
        if self.sensitivity_method not in SENSITIVITY_METHODS:
            raise ConfigError(
                f"sensitivity_method must be one of {list(SENSITIVITY_METHODS)}, got {self.sensitivity_method!r}; "
                "e.g. --sensitivity hessian (cheap) or --sensitivity measured (one evaluation per layer choice)"
            )
        if self.finetune_optimizer not in FINETUNE_OPTIMIZERS:
            raise ConfigError(f"finetune_optimizer must be one of {list(FINETUNE_OPTIMIZERS)}, got {self.finetune_optimizer!r}")
        if self.finetune_patience < 0:
            raise ConfigError(f"finetune_patience must be >= 0 (0 = no early stop), got {self.finetune_patience}")
        if self.finetune_steps < 0 or self.finetune_eval_every < 0 or self.finetune_batch_size < 1:
            raise ConfigError(
                f"finetune_steps and finetune_eval_every must be >= 0 and finetune_batch_size >= 1, got "
                f"{self.finetune_steps}, {self.finetune_eval_every} and {self.finetune_batch_size}"
            )
        if self.finetune_finalists < 1 or self.finetune_finalist_steps < 1:
            raise ConfigError(
                f"finetune_finalists and finetune_finalist_steps must be >= 1 (1 finalist = the best search score "
                f"wins), got {self.finetune_finalists} and {self.finetune_finalist_steps}"
            )
        if not self.finetune_lr > 0:
            raise ConfigError(f"finetune_lr must be > 0, got {self.finetune_lr}")
        if not 0.0 <= self.finetune_distill_weight <= 1.0:
            raise ConfigError(f"finetune_distill_weight must lie in [0, 1], got {self.finetune_distill_weight}")
        from automl.quant.methods import check_method_options  # torch-free

        check_method_options(self.eval_ptq, self.eval_adaquant_steps, self.eval_calibration, self.finetune_psg)

    def space_config(self) -> SpaceConfig:
        """The search-space settings of this configuration."""
        from search_spaces.space import SpaceConfig

        try:
            return SpaceConfig(
                weight_bits=self.weight_bits, act_bits=self.act_bits, n_groups=self.n_groups,
                min_sparsity=self.space_min_sparsity, max_sparsity=self.max_sparsity,
                sparsity_step=self.space_sparsity_step, pin_first_last=self.space_pin_first_last,
                pinned_bits=self.space_pinned_bits, pinned=self.space_pinned, allow_pruning=self.allow_pruning,
                nm_patterns=self.space_nm,
            )
        except AutoMLError as exc:
            raise ConfigError(f"search space settings (section 'space'): {exc}") from exc

    def eval_config(self) -> EvalConfig:
        """The evaluation settings of this configuration."""
        from automl.eval_config import EvalConfig

        try:
            return EvalConfig(
                fidelity=self.fidelity, weight_method=self.eval_weight_method, act_method=self.eval_act_method,
                power_of_two=self.eval_power_of_two, importance=self.space_importance,
                calib_batches=self.eval_calib_batches, bn_samples=self.eval_bn_samples, qat_steps=self.eval_qat_steps, qat_lr=self.eval_qat_lr,
                seed=self.seed, cache_mb=self.eval_cache_mb, early_stop=self.eval_early_stop,
                early_stop_delta=self.eval_early_stop_delta, ptq=self.eval_ptq, adaquant_steps=self.eval_adaquant_steps,
                calibration=self.eval_calibration, psg=self.finetune_psg,
            )
        except AutoMLError as exc:
            raise ConfigError(f"evaluation settings (section 'evaluation'): {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra"] = dict(self.extra)
        d["searcher_options"] = dict(self.searcher_options)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchConfig:
        """Build from flat keys and/or nested sections; every key and type is checked.

        Raises:
            ConfigError: naming an unknown key, or each key of a wrong type with the
                expected type and the value that arrived.
        """
        flat, names = flatten_sections(cls, data)
        values = normalise(cls, {**_defaults(cls), **flat})
        check_types(cls, values, names)  # quotes the keys as the file spells them
        return cls(**values)

    def merged(self, overrides: Mapping[str, Any]) -> SearchConfig:
        """This config with the non-``None`` ``overrides`` applied (command line over file)."""
        changes = {k.replace("-", "_"): v for k, v in overrides.items() if v is not None}
        base = self.to_dict()
        base.update(changes)
        return SearchConfig.from_dict(base) if changes else self


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML run configuration, unchecked."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; pass a YAML file with keys of `automl search`")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of option: value, got {type(data).__name__}")
    return dict(data)


def load_config(path: str | Path | None) -> SearchConfig:
    """Read a YAML run configuration (keys of :class:`SearchConfig`, flat or in sections)."""
    if path is None:
        return SearchConfig()
    try:
        return SearchConfig.from_dict(read_config_file(path))
    except ConfigError as exc:
        raise ConfigError(f"config file {str(path)!r}: {exc}") from exc
