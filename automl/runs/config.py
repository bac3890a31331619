"""The configuration of one search: one nested section per component, read once from a YAML file
and/or the command line.

A YAML file maps one to one onto :class:`SearchConfig`::

    task: reference:resnet20
    budget: [size<=0.125x]
    space: {n_groups: 4, max_sparsity: 0.75, importance: l1}
    evaluation: {fidelity: 2, bn_samples: 250}
    finetune: {steps: 500, patience: 3}
    searcher: {name: ilp_tpe, options: {}, sensitivity: hessian}
    tracking: {experiment: automl-mpq}
    run: {evaluations: 20, seed: 0, threads: 1, output: automl-runs}

Each section is the settings class of the component that reads it (:class:`SpaceConfig`,
:class:`~automl.evaluation.config.EvalConfig`, :class:`~automl.evaluation.config.FinetuneConfig`,
:class:`SearcherConfig`, :class:`TrackingConfig`, :class:`RunConfig`), so no setting exists twice.
Every class is a frozen pydantic model (:mod:`automl.settings`): unknown keys, wrong types and
out-of-range values are refused with the dotted key, what was expected and what arrived, before
torch is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, model_validator

from automl.errors import ConfigError
from automl.evaluation.config import EvalConfig, FinetuneConfig
from automl.quant.device_names import check_device_spec, split_devices
from automl.settings import Settings
from search_spaces.space import SpaceConfig

DEFAULT_TASK = "reference:resnet20"
DEFAULT_BUDGET = ("size<=0.125x",)
DEFAULT_SEARCHER = "ilp_tpe"
DEFAULT_EVALUATIONS = 20
SENSITIVITY_METHODS = ("measured", "fisher", "hessian", "heuristic")
SECTIONS = ("space", "evaluation", "finetune", "searcher", "tracking", "run")
# Keys of the flat layout of earlier releases -> where they live now (for the error message).
_FLAT_PREFIXES = {"space_": "space", "eval_": "evaluation", "finetune_": "finetune", "searcher_": "searcher",
                  "tracking_": "tracking", "sensitivity_": "searcher"}


class SearcherConfig(Settings):
    """Which searcher proposes policies, and what guides it.

    Attributes:
        name: the searcher (``automl search --help`` lists them; :data:`agents.SEARCHERS`).
        options: keyword options of its constructor, checked against its signature
            (e.g. ``{n_startup_trials: 20}`` for ``tpe``).
        stage_fidelity: Optuna searchers only: 0 scores every proposal once at the evaluation
            fidelity; 1 or 2 (below it) scores it at that cheap fidelity first and promotes the
            better half (successive halving); both stages are counted.
        widen_activations: evaluate every proposed policy with each layer's widest activation
            bits when no constraint of the budget depends on them (the same price, never a
            coarser quantization); each widening is recorded on the trial like a repair.
        sensitivity: how the per-layer sensitivities that guide the integer program, the repair,
            the warm start and the RL observation are made before the search: ``measured`` (one
            evaluation per layer choice), ``fisher`` (squared gradients x quantization noise),
            ``hessian`` (Hutchinson trace x noise energy, HAWQ-V2/V3) or ``heuristic`` (every
            layer alike). Cached per model, space, fidelity and method.
        storage: Optuna storage URL of the study; a SQLite file in the run directory when empty
            (PostgreSQL for workers on several hosts).
    """

    name: str = DEFAULT_SEARCHER
    options: dict[str, Any] = Field(default_factory=dict)
    stage_fidelity: int = Field(0, ge=0, le=2)
    widen_activations: bool = False
    sensitivity: Literal["measured", "fisher", "hessian", "heuristic"] = "hessian"
    storage: str = ""


class TrackingConfig(Settings):
    """Where the search is tracked.

    Attributes:
        uri: MLflow tracking URI; a SQLite store under the run's output directory when empty.
        experiment: MLflow experiment name.
    """

    uri: str = ""
    experiment: str = Field("automl-mpq", min_length=1)


class RunConfig(Settings):
    """The run itself: how much to search, with what resources, where its files go.

    Attributes:
        evaluations: how many distinct policies to evaluate (cache hits are free).
        seed: seeds the searcher, the evaluator and the fine-tune.
        threads: torch intra-op threads.
        workers: worker processes sharing one Optuna study.
        output: directory of the run's files (journal, stores, exports).
        resume: a previous search's run directory, run name or MLflow run id to continue.
        device: where every model-layer stage runs: ``auto`` (a GPU when CUDA is available, else
            the CPU), ``cpu``, ``cuda`` or ``cuda:N``; exports are written from a CPU copy.
        devices: the devices of local worker processes, comma-separated (``cuda:0,cuda:1``):
            worker ``i`` takes entry ``i`` mod its length; empty = every worker on ``device``,
            except ``auto``, which deals the workers round-robin over this machine's GPUs.
        allow_loose_budget: search even when the float model already meets the budget (it then
            constrains nothing; refused otherwise, see :func:`automl.runs.precheck.check_loose_budget`).
    """

    evaluations: int = Field(DEFAULT_EVALUATIONS, ge=1, le=10**7)
    seed: int = Field(0, ge=0)
    threads: int = Field(1, ge=1)
    workers: int = Field(1, ge=1)
    output: str = "automl-runs"
    resume: str = ""
    device: str = "auto"
    devices: str = ""
    allow_loose_budget: bool = False

    @model_validator(mode="after")
    def _check_devices(self) -> RunConfig:
        check_device_spec(self.device)
        if self.devices:
            split_devices(self.devices)
        return self


class SearchConfig(Settings):
    """Every option of ``automl search`` (and of ``automl.search()``).

    Attributes:
        task: ``reference:<arch>``, ``reference:<dataset>/<arch>`` (see :mod:`automl.runs.loading`) or
            ``package.module:function`` returning an :class:`automl.Task`.
        data_dir: where a reference task's dataset is (Fashion-MNIST's IDX files, CIFAR-10 in the
            ``cifar-10-batches-py`` or ``ImageFolder`` layout; :mod:`automl.data`); empty = the
            dataset's own search order (its environment variable, then its default places).
        budget: constraints that must all hold, e.g. ``("size<=0.125x", "bitops<=0.5G")``.
        profiles: hardware profile names or YAML paths priced besides size, MACs and BitOps.
        space: the search space (:class:`~search_spaces.space.SpaceConfig`).
        evaluation: how policies are scored (:class:`~automl.evaluation.config.EvalConfig`).
        finetune: how the winner is chosen and fine-tuned (:class:`~automl.evaluation.config.FinetuneConfig`).
        searcher: :class:`SearcherConfig`.
        tracking: :class:`TrackingConfig`.
        run: :class:`RunConfig`.
    """

    message: ClassVar[str] = (
        "invalid configuration: {problems}. Fix the value in the YAML file (--config) or on the command line."
    )

    task: str = DEFAULT_TASK
    data_dir: str = ""
    budget: tuple[str, ...] = Field(DEFAULT_BUDGET, min_length=1)
    profiles: tuple[str, ...] = ()
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    searcher: SearcherConfig = Field(default_factory=SearcherConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _check(self) -> SearchConfig:
        if self.searcher.stage_fidelity and not self.searcher.stage_fidelity < self.evaluation.fidelity:
            raise ValueError(
                f"searcher.stage_fidelity must be 0 (one stage) or a fidelity below evaluation.fidelity="
                f"{self.evaluation.fidelity}, got {self.searcher.stage_fidelity}"
            )
        out = Path(self.run.output).expanduser()
        if out.exists() and not out.is_dir():
            raise ValueError(
                f"run.output {self.run.output!r} is an existing file, not a directory; pass a directory for the run's files"
            )
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchConfig:
        """Build from nested sections (a YAML file, a saved ``config.json``); every key and type is checked.

        Raises:
            ConfigError: naming an unknown key (and, for a key of the flat layout of earlier
                releases, the section it moved to), or each key of a wrong type with the expected
                type and the value that arrived.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a search configuration must be a mapping of key: value, got {type(data).__name__}")
        for key in data:
            moved = _moved_key(str(key))
            if moved:
                raise ConfigError(moved)
        return super().from_dict(data)

    def merged(self, overrides: Mapping[str, Any]) -> SearchConfig:
        """This configuration with the non-``None`` ``overrides`` applied; keys are dotted paths
        (``run.evaluations``, ``finetune.steps``) or top-level names (``task``, ``budget``)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        if not changes:
            return self
        data = self.to_dict()
        for key, value in changes.items():
            set_path(data, key, value)
        return SearchConfig.from_dict(data)

    def get(self, key: str) -> Any:
        """The value at a dotted path (``finetune.steps``)."""
        value: Any = self
        for part in key.split("."):
            value = getattr(value, part)
        return value


def set_path(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data[a][b] = value`` for the dotted ``key`` ``a.b`` (creating the section when missing)."""
    *sections, last = key.split(".")
    node = data
    for part in sections:
        node = node.setdefault(part, {})
    node[last] = list(value) if isinstance(value, tuple) else value


def dotted_keys(data: Mapping[str, Any], prefix: str = "") -> set[str]:
    """The dotted paths of every leaf a nested mapping sets (``searcher.options`` counts as one leaf)."""
    out: set[str] = set()
    for key, value in data.items():
        path = f"{prefix}{str(key).replace('-', '_')}"
        if isinstance(value, Mapping) and path in SECTIONS:
            out |= dotted_keys(value, path + ".")
        else:
            out.add(path)
    return out


def _moved_key(key: str) -> str:
    """The message for a flat key of earlier releases (``finetune_steps``), or ''."""
    key = key.replace("-", "_")
    old = {"evaluations": "run", "seed": "run", "threads": "run", "workers": "run", "output": "run", "resume": "run",
           "fidelity": "evaluation", "experiment": "tracking", "tracking_uri": "tracking.uri", "storage": "searcher",
           "n_groups": "space", "max_sparsity": "space", "weight_bits": "space", "act_bits": "space",
           "allow_pruning": "space", "widen_activations": "searcher", "sensitivity_method": "searcher.sensitivity"}
    if key in old:
        target = old[key]
        section, _, name = target.partition(".")
        name = name or key
        return (f"configuration key {key!r} belongs to the section {section!r}: write `{section}: {{{name}: ...}}` "
                f"(on the command line the option is unchanged).")
    for prefix, section in _FLAT_PREFIXES.items():
        if key.startswith(prefix) and key not in SECTIONS:
            name = key.removeprefix(prefix)
            return (f"configuration key {key!r} belongs to the section {section!r}: write `{section}: {{{name}: ...}}` "
                    f"(on the command line the option is unchanged).")
    return ""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML run configuration, unchecked.

    Raises:
        ConfigError: the path is missing, a directory, unreadable, not YAML, or not a mapping.
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config {str(p)!r} is a directory; pass a YAML file with the keys of `automl search`")
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; pass a YAML file with the keys of `automl search`")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {exc.strerror or exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of option: value, got {type(data).__name__}")
    return dict(data)


def load_config(path: str | Path | None) -> SearchConfig:
    """Read a YAML run configuration (see the module docstring)."""
    if path is None:
        return SearchConfig()
    try:
        return SearchConfig.from_dict(read_config_file(path))
    except ConfigError as exc:
        raise ConfigError(f"config file {str(path)!r}: {exc}") from exc
