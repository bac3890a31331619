"""Gymnasium environments that search compression policies layer by layer.

Importing this package registers them::

    import gymnasium, envs
    env = gymnasium.make("automl/JointPruneQuant-v0", analysis=..., space=..., cost_model=...,
                         budget=Budget.parse("size<=0.125x"), evaluator=...)

``automl/LayerQuant-v0`` is :class:`LayerQuantEnv` (HAQ-style bits per layer);
``automl/JointPruneQuant-v0`` is :class:`JointPruneQuantEnv` (sparsity, then bits per
channel group; ``hierarchy="per_layer"`` for one action per layer). Wrap either in
:class:`DiscreteActions` for Discrete / MultiDiscrete actions with ``action_masks()``.

The default budget handling is ``mask`` (:class:`EnvConfig`). Measured with
``benchmarks/budget_modes.py`` (ResNet-20, a synthetic evaluator with layer-dependent
sensitivity, 150 episodes x 2 seeds x 3 tight budgets: ``size<=0.03x``,
``bitops<=0.004x``, ``size<=0.05x,bitops<=0.006x``):

- feasible share of evaluated policies: ``mask`` 100%, ``repair`` 100%, ``lagrangian`` 22%
  (61% under the size budget, 1-4% under the BitOps ones): the Lagrangian spends most
  evaluations on policies a searcher cannot return;
- env cost per episode: ``repair`` runs a greedy repair at every infeasible episode end;
  with random actions on ResNet-20 that is 0.3-1 s of CPU per episode (21-65 env steps/s
  with a constant evaluator under ``size<=0.125x`` / ``bitops<=0.004x``, against 2,500-6,000
  with masks), as long as a fidelity-1 evaluation (about 1 s), so the env would become the
  bottleneck;
- best feasible reward: ``repair`` + PPO 0.172, ``mask`` + MaskablePPO 0.151, ``mask`` +
  PPO (Box, projected) 0.135, ``lagrangian`` + PPO 0.111. The repair's sensitivity-guided
  greedy works as a local search on top of the agent, so ``repair`` is the better choice
  when evaluations are far more expensive than the repair (fidelity 3) or sensitivities are
  measured; ``mask`` keeps every step cheap, every evaluated policy the agent's own choice
  (projections recorded per step) and every evaluation feasible.
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
