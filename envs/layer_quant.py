"""HAQ-style mixed-precision quantization: one step per layer."""

from __future__ import annotations

from envs.base import CompressionEnv
from envs.choices import ACT, UNIFORM, Component, Decision, LayerChoices
from search_spaces.space import LayerSpace


class LayerQuantEnv(CompressionEnv):
    """Choose the weight bit-width and activation bit-width of each layer in turn (HAQ).

    No channel is pruned: every layer keeps all its channels at one weight bit-width (the
    search space's non-zero widths) and reads its input at one activation bit-width. Layers
    with a single choice (pinned ones) are set without a step.

    Build it from an analysed model, its search space, a cost model, a budget and an
    evaluator (see :class:`~envs.base.CompressionEnv`); it loads no data and trains nothing::

        env = gymnasium.make("automl/LayerQuant-v0", analysis=analysis, space=space,
                             cost_model=cost_model, budget=Budget.parse("size<=0.125x"),
                             evaluator=evaluator)

    ## Action Space

    ``Box(-1, 1, (2,), float32)``: ``action[0]`` picks the weight bit-width and ``action[1]``
    the activation bit-width; ``[-1, 1]`` is cut into equal intervals, one per allowed width,
    lowest first. :class:`~envs.wrappers.DiscreteActions` gives the ``Discrete(W * A)`` form
    (exactly masked, for MaskablePPO) or ``MultiDiscrete([W, A])``.

    N:M sparsity (``SpaceConfig.nm_patterns``) is not part of the action: the env always
    executes every layer dense (``nm=""``, always allowed), so its policies are valid in an
    N:M space but never use a pattern; the Optuna and random searchers do search it.

    ## Observation Space

    ``Box(-1, 1, (n,), float32)``: the layer's normalised features (index, kind one-hot,
    depthwise flag, log in/out channels, kernel size, stride, log feature-map size, log
    parameters, log MACs, sensitivity), the episode's progress, the share of action
    dimensions this step reads, the previous step's choices (each in [0, 1]) and, for every
    budget constraint, the cost committed so far (the decided layers with the rest at their
    cheapest, as a fraction of the limit) and the share of the budget's slack still unused
    (negative once over the limit).

    ## Reward

    0 on every step but the last; then ``scale * accuracy / float accuracy - cost_weight *
    cost / float cost - Lagrangian penalty`` (see :class:`~envs.config.RewardConfig`).

    ## Episode End

    The episode terminates after the last free layer; it is never truncated. The last
    step's ``info`` carries ``policy``, ``costs``, ``feasible``, ``violations``, ``metrics``,
    ``repair`` (the repair record in ``repair`` mode, else ``None``), ``repaired``,
    ``reward_terms``, ``projections`` and ``multipliers``. A step whose action was moved to
    a feasible or valid choice carries ``info["projection"]`` (requested and applied values).
    """

    def _layer_choices(self, s: LayerSpace) -> LayerChoices:
        return LayerChoices(s, s.nonzero_bits, (min(s.sparsity_levels),))

    def _decisions(self) -> list[Decision]:
        out = []
        for i, c in enumerate(self.choices):
            w, a = len(c.weight_bits), len(c.act_bits)
            if w > 1 or a > 1:
                out.append(Decision(i, 0, (Component(UNIFORM, w), Component(ACT, a))))
        return out

    def _cheapest_description(self) -> str:
        return "every free layer at its lowest non-zero weight bits and lowest activation bits, nothing pruned"
