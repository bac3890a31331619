"""The typed configuration of one search, built once from a YAML file and/or the command line."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from automl.errors import ConfigError

DEFAULT_BUDGET = ("size<=0.125x",)
DEFAULT_SEARCHER = "tpe"
DEFAULT_EVALUATIONS = 60


@dataclass(frozen=True)
class SearchConfig:
    """Every option of ``automl search`` (the same keys in ``--config run.yaml``).

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
        n_groups / max_sparsity / weight_bits / act_bits / allow_pruning: search space.
        finetune_steps: QAT steps of the final fine-tune of the best policy (0 = off).
        eval_cache_mb: memory limit (MiB) of the activation cache of incremental
            evaluation (a policy that shares its first layers with an evaluated one runs
            only the rest; 0 = off). Bit-for-bit the same metrics.
        eval_early_stop: stop scoring a policy once its running validation accuracy is
            below the incumbent's with confidence ``1 - eval_early_stop_delta`` (see
            automl/early_stop.py); the record says ``stopped_early`` and reports the
            accuracy of the samples scored so far.
        eval_early_stop_delta: allowed chance, per evaluation, of stopping a policy that
            would have beaten the incumbent.
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
    eval_cache_mb: int = 1024
    eval_early_stop: bool = True
    eval_early_stop_delta: float = 0.01
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.evaluations < 1:
            raise ConfigError(f"evaluations must be >= 1, got {self.evaluations}")
        if self.fidelity not in (1, 2, 3):
            raise ConfigError(f"fidelity must be 1, 2 or 3, got {self.fidelity}")
        if self.threads < 1 or self.workers < 1:
            raise ConfigError(f"threads and workers must be >= 1, got {self.threads} and {self.workers}")
        if not 0 <= self.eval_cache_mb <= 65536:
            raise ConfigError(f"eval_cache_mb must be between 0 (off) and 65536 MiB, got {self.eval_cache_mb}")
        if not 0.0 < self.eval_early_stop_delta < 1.0:
            raise ConfigError(f"eval_early_stop_delta must be in (0, 1), got {self.eval_early_stop_delta}; 0.01 is sound")
        if not self.budget:
            raise ConfigError("a search needs at least one budget, e.g. --budget 'size<=0.125x'")

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


