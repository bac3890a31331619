"""Gymnasium environments that search compression policies layer by layer.

Importing this package registers them::

    import gymnasium, envs
    env = gymnasium.make("automl/JointPruneQuant-v0", analysis=..., space=..., cost_model=...,
                         budget=Budget.parse("size<=0.125x"), evaluator=...)

``automl/LayerQuant-v0`` is :class:`LayerQuantEnv` (HAQ-style bits per layer);
``automl/JointPruneQuant-v0`` is :class:`JointPruneQuantEnv` (sparsity, then bits per
channel group; ``hierarchy="per_layer"`` for one action per layer). Wrap either in
:class:`DiscreteActions` for Discrete / MultiDiscrete actions with ``action_masks()``.

The default budget handling is ``mask`` (:class:`EnvConfig`), chosen with
``benchmarks/budget_modes.py`` (ResNet-20, a synthetic evaluator with layer-dependent
sensitivity, tight size and BitOps budgets; its figures are on its results page in
``docs/results/`` once its rows are saved):

- ``lagrangian`` spends many evaluations on infeasible policies, which a searcher cannot
  return; ``mask`` and ``repair`` evaluate feasible policies only;
- ``repair`` runs a greedy repair at every infeasible episode end, which with random actions
  costs about as much CPU as a fidelity-1 evaluation, so the env would become the
  bottleneck; masks keep every step cheap;
- the repair's sensitivity-guided greedy works as a local search on top of the agent, so
  ``repair`` is the better choice when evaluations are far more expensive than the repair
  (fidelity 3) or sensitivities are measured; ``mask`` keeps every step cheap, every evaluated
  policy the agent's own choice (projections recorded per step) and every evaluation feasible.
"""

from gymnasium.envs.registration import register, registry

from envs.base import CompressionEnv
from envs.config import BUDGET_MODES, EnvConfig, LagrangianConfig, RewardConfig
from envs.joint import JointPruneQuantEnv
from envs.layer_quant import LayerQuantEnv
from envs.wrappers import DiscreteActions

for _id, _entry in (
    ("automl/LayerQuant-v0", "envs.layer_quant:LayerQuantEnv"),
    ("automl/JointPruneQuant-v0", "envs.joint:JointPruneQuantEnv"),
):
    if _id not in registry:
        register(id=_id, entry_point=_entry)

__all__ = [
    "BUDGET_MODES",
    "CompressionEnv",
    "DiscreteActions",
    "EnvConfig",
    "JointPruneQuantEnv",
    "LagrangianConfig",
    "LayerQuantEnv",
    "RewardConfig",
]
