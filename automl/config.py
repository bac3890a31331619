"""The typed configuration of one search, built once from a YAML file and/or the command line."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from automl.errors import ConfigError
from automl.quant.methods import check_method_options

DEFAULT_BUDGET = ("size<=0.125x",)
DEFAULT_SEARCHER = "tpe"
DEFAULT_EVALUATIONS = 120


@dataclass(frozen=True)
class SearchConfig:
    """Every option of ``automl search`` (the same keys in ``--config run.yaml``).

    Attributes:
        task: ``reference:resnet20``, ``reference:resnet8`` or ``package.module:function``
            returning an :class:`automl.Task`.
        budget: constraints that must all hold, e.g. ``("size<=0.125x", "bitops<=0.5G")``.
        searcher: searcher name (see ``automl search --help``).
        evaluations: how many policies to evaluate.
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
        n_groups / max_sparsity / weight_bits / act_bits / allow_pruning: search space.
        finetune_steps: QAT steps of the final fine-tune of the best policy (0 = off).
        eval_ptq: ``none`` (round-to-nearest), ``adaquant`` (layer-wise optimised weights and
            biases at every evaluation, sensitivities included: about 8x the time, see
            benchmarks/methods.py) or ``adaquant-final`` (only for the final policy, before its
            fine-tune and export).
        eval_adaquant_steps: AdaQuant optimisation steps per layer.
        eval_calibration: ``data`` (the task's calibration loader) or ``data-free`` (inputs
            synthesised from the model's BatchNorm statistics).
        eval_power_of_two: power-of-two (shift) weight, activation and BatchNorm scales.
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
    n_groups: int = 4
    max_sparsity: float = 0.75
    weight_bits: tuple[int, ...] = (0, 2, 3, 4, 5, 6, 8, 32)
    act_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    allow_pruning: bool = True
    finetune_steps: int = 200
    eval_ptq: str = "none"
    eval_adaquant_steps: int = 60
    eval_calibration: str = "data"
    eval_power_of_two: bool = False
    finetune_psg: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.evaluations < 1:
            raise ConfigError(f"evaluations must be >= 1, got {self.evaluations}")
        if self.fidelity not in (1, 2, 3):
            raise ConfigError(f"fidelity must be 1, 2 or 3, got {self.fidelity}")
        if self.threads < 1 or self.workers < 1:
            raise ConfigError(f"threads and workers must be >= 1, got {self.threads} and {self.workers}")
        if not self.budget:
            raise ConfigError("a search needs at least one budget, e.g. --budget 'size<=0.125x'")
        check_method_options(self.eval_ptq, self.eval_adaquant_steps, self.eval_calibration, self.finetune_psg)
        if not isinstance(self.eval_power_of_two, bool):
            raise ConfigError(f"eval_power_of_two must be true or false, got {self.eval_power_of_two!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}; known keys are {sorted(known)}")
        values = dict(data)
        for key in ("budget", "profiles", "weight_bits", "act_bits"):
            if key in values and values[key] is not None:
                v = values[key]
                values[key] = tuple(v) if isinstance(v, (list, tuple)) else (v,)
        return cls(**values)

    def merged(self, overrides: Mapping[str, Any]) -> SearchConfig:
        """This config with the non-``None`` ``overrides`` applied (command line over file)."""
        changes = {k.replace("-", "_"): v for k, v in overrides.items() if v is not None}
        base = self.to_dict()
        base.update(changes)
        return SearchConfig.from_dict(base) if changes else self


def load_config(path: str | Path | None) -> SearchConfig:
    """Read a YAML run configuration (keys of :class:`SearchConfig`)."""
    if path is None:
        return SearchConfig()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; pass a YAML file with keys of `automl search`")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of option: value, got {type(data).__name__}")
    return SearchConfig.from_dict({k.replace("-", "_"): v for k, v in data.items()})


