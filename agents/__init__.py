"""Searchers: one ask/tell interface over random search, the integer program, Optuna and RL.

Build an :class:`Objective` (evaluator + cost model + bound budget), pick a searcher by
name and run it::

    from agents import Objective, make_searcher
    objective = Objective(evaluator, cost_model, Budget.parse("size<=0.125x").bind(cost_model))
    result = make_searcher("tpe", objective, seed=0).run(150)
    print(result.best.accuracy, result.best.policy)

RL searchers import stable-baselines3 and the envs; they are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.base import Callback, Searcher
    from agents.objective import Objective
    from agents.records import SearchResult, TrialRecord, best_record, pareto_front

# Lazy, so that the registry below (the command line checks a searcher name with it) does
# not import torch: name -> module holding it.
_LAZY = {
    "Callback": "agents.base", "Searcher": "agents.base", "Objective": "agents.objective",
    "SearchResult": "agents.records", "TrialRecord": "agents.records", "best_record": "agents.records",
    "pareto_front": "agents.records",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agents' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

# name -> (module, class); modules are imported on demand (RL pulls in torch-heavy SB3).
SEARCHERS: dict[str, tuple[str, str]] = {
    "random": ("agents.random_search", "RandomSearcher"),
    "ilp": ("agents.ilp", "ILPSearcher"),
    "ilp_tpe": ("agents.optuna_search", "ILPTPESearcher"),
    "tpe": ("agents.optuna_search", "TPESearcher"),
    "nsga2": ("agents.optuna_search", "NSGA2Searcher"),
    "gp": ("agents.optuna_search", "GPSearcher"),
    "cmaes": ("agents.optuna_search", "CmaEsSearcher"),
    "ppo": ("agents.rl", "PPOSearcher"),
    "maskable_ppo": ("agents.rl", "MaskablePPOSearcher"),
    "ddpg": ("agents.rl", "DDPGSearcher"),
    "td3": ("agents.rl", "TD3Searcher"),
    "sac": ("agents.rl", "SACSearcher"),
}


def searcher_class(name: str) -> type[Searcher]:  # noqa: F821 - the lazy name above
    """The searcher class registered under ``name`` (see :data:`SEARCHERS`)."""
    from automl.errors import ConfigError

    key = name.lower().replace("-", "_")
    if key not in SEARCHERS:
        raise ConfigError(f"unknown searcher {name!r}; choose one of {sorted(SEARCHERS)}")
    module, cls = SEARCHERS[key]
    return getattr(importlib.import_module(module), cls)


def make_searcher(name: str, objective: Objective, *, seed: int = 0, **options: Any) -> Searcher:
    """Build the searcher ``name`` on ``objective``; ``options`` go to its constructor."""
    return searcher_class(name)(objective, seed=seed, **options)


__all__ = [
    "SEARCHERS",
    "Callback",
    "Objective",
    "SearchResult",
    "Searcher",
    "TrialRecord",
    "best_record",
    "make_searcher",
    "pareto_front",
    "searcher_class",
]
