"""AJPQ-style joint channel pruning and mixed-precision quantization."""

from __future__ import annotations

from typing import Any

from automl.errors import ConfigError
from envs.base import CompressionEnv
from envs.choices import ACT, GROUP, SPARSITY, UNIFORM, Component, Decision, LayerChoices
from search_spaces.space import LayerSpace

HIERARCHIES = ("two_level", "per_layer")
CHANNELS = ("groups", "uniform")


class JointPruneQuantEnv(CompressionEnv):
    """Prune and quantize each layer: a layer-level sparsity, then channel-level bit-widths.

    For each layer, the layer-level decision is a sparsity level: that share of the least
    important output channels gets 0 bits. The channel-level decision gives each
    importance-ranked channel group its weight bit-width (0 allowed: the group is pruned
    too, within the layer's ``max_sparsity``) and the layer its activation bit-width.
    :meth:`SearchSpace.decode` turns the two into per-channel bits.

    ## Hierarchy (AJPQ)

    AJPQ couples a *layer controller* (how much of a layer to prune) and a *channel
    controller* (the bit-width of each remaining channel), both reading one importance
    criterion. Here the criterion is the space's channel ranking (``LayerSpace.channel_rank``):
    the layer controller's sparsity prunes its tail, the channel controller's bits apply to
    its importance groups, and :meth:`SearchSpace.decode` combines the two.

    ``two_level`` is the hierarchy: one layer step, then one channel step that observes the
    sparsity just chosen, so the channel decision is conditioned on the layer decision.
    With the on-policy agents (PPO, MaskablePPO) the two steps are taken by **two
    policies**, :class:`agents.controllers.TwoControllerPolicy`: separate actor networks
    selected by the observation's phase flag, one shared critic and one reward. Two
    policies rather than one hierarchical action because the two decisions differ in kind
    (one coarse level against per-group widths) and an actor shared between them has to
    unlearn one to learn the other; one critic rather than two because the episode has one
    terminal reward, and a critic per controller would see half the transitions each at
    60-200 episodes. Off-policy agents keep one actor with the phase flag (their SB3
    actor classes are built differently; not done here). ``per_layer`` is the flat alternative: both
    decisions in one action, half the steps, no conditioning.

    Args:
        hierarchy: ``two_level`` (a layer step, then a channel step, with a phase flag in
            the observation) or ``per_layer`` (both in one step).
        channels: ``groups`` (the channel decision gives each importance-ranked group its
            bits: mixed precision inside a layer) or ``uniform`` (one non-zero weight
            bit-width for the whole layer, HAQ's granularity; pruning is the sparsity's).
            ``uniform`` has three components per layer instead of ``G + 2``: a change of a
            layer's precision is one move, not ``G`` coordinated ones.
        **kwargs: see :class:`~envs.base.CompressionEnv`.

    ## Action Space

    ``Box(-1, 1, (D,), float32)``; each dimension is cut into equal intervals, one per
    option, lowest first, or, with a ``reference`` policy, read as an offset from the
    reference's option (the zero action is the reference; see :class:`~envs.base.CompressionEnv`). ``two_level``: the layer step reads ``action[0]`` (sparsity level);
    the channel step reads ``action[0:G]`` (bits of groups from the most to the least
    important) and ``action[G]`` (activation bits), ``D = G + 1``. ``per_layer``:
    ``action[0]`` sparsity, ``action[1:G+1]`` group bits, ``action[G+1]`` activation bits,
    ``D = G + 2``. ``G`` is the largest number of groups of any layer; dimensions a step does
    not read are ignored. :class:`~envs.wrappers.DiscreteActions` gives the
    ``MultiDiscrete`` form with ``action_masks()`` for MaskablePPO.

    Layers whose output channels are pruned together (a residual block's last convolution
    and its shortcut: a *coupled group*) share one sparsity decision, taken at the group's
    first prunable member; the other members' sparsity component has a single option and
    they prune the same, importance-ranked channels (the final policy shows them pruned).

    N:M sparsity (``SpaceConfig.nm_patterns``) is not part of the action: the env always
    executes every layer dense (``nm=""``, always allowed), so its policies are valid in an
    N:M space but never use a pattern; the Optuna and random searchers do search it.

    ## Observation Space

    ``Box(-1, 1, (n,), float32)``: the layer's normalised features (index, kind one-hot,
    depthwise flag, log in/out channels, kernel size, stride, log feature-map size, log
    parameters, log MACs, sensitivity), the episode's progress, the phase flag (0 layer
    step, 1 channel step; ``two_level`` only is it ever 1), the share of action dimensions
    this step reads, the previous step's choices (each in [0, 1]; in a channel step, the
    sparsity just chosen) and, per budget constraint, the committed cost as a fraction of
    the limit and the share of the budget's slack still unused.

    ## Reward

    0 on every step but the last; then ``scale * accuracy / float accuracy - cost_weight *
    cost / float cost - Lagrangian penalty`` (see :class:`~envs.config.RewardConfig`).

    ## Episode End

    The episode terminates after the last free layer's last decision; it is never
    truncated. The last ``info`` carries ``policy``, ``costs``, ``feasible``,
    ``violations``, ``metrics``, ``repair``, ``repaired``, ``reward_terms``,
    ``projections`` and ``multipliers``; a projected step carries ``info["projection"]``.
    """

    def __init__(self, *args: Any, hierarchy: str = "two_level", channels: str = "groups", **kwargs: Any) -> None:
        if hierarchy not in HIERARCHIES:
            raise ConfigError(
                f"hierarchy must be one of {list(HIERARCHIES)}, got {hierarchy!r}: 'two_level' takes a layer step "
                "then a channel step, 'per_layer' takes both in one action"
            )
        if channels not in CHANNELS:
            raise ConfigError(
                f"channels must be one of {list(CHANNELS)}, got {channels!r}: 'groups' gives every importance-ranked "
                "channel group its own bits, 'uniform' one weight bit-width per layer"
            )
        self.hierarchy, self.channels = hierarchy, channels
        self.has_phase = hierarchy == "two_level"
        self._leaders: dict[str, str] | None = None
        super().__init__(*args, **kwargs)

    def _layer_choices(self, s: LayerSpace) -> LayerChoices:
        leaders = self._coupled_leaders()
        leader = leaders.get(s.name)
        if leader is None:
            return LayerChoices(s, s.group_bits, s.sparsity_levels)
        if leader != s.name:  # a follower: prunes what its group's leader prunes (the cost model and decode couple them)
            return LayerChoices(s, s.group_bits, (min(s.sparsity_levels),))
        members = [self.space.layer(m) for m, lead in leaders.items() if lead == s.name]
        limit = min(m.max_pruned for m in members)
        return LayerChoices(s, s.group_bits, [lv for lv in s.sparsity_levels if int(round(lv * s.out_channels)) <= limit])

    def _coupled_leaders(self) -> dict[str, str]:
        """Member -> leader of every coupled group with two or more prunable members.

        The leader is the group's first prunable member in execution order; it takes the
        group's one sparsity decision. A channel pruned in one member is pruned in all
        (:meth:`SearchSpace.resolve`), so separate levels per member would only matter
        through their maximum: an agent would have to move every member's level at once to
        unprune a channel, and moving one alone costs nothing and changes nothing.
        """
        if self._leaders is None:
            self._leaders = {}
            for members in self.space.coupled().values():
                prunable = [m for m in members if len(self.space.layer(m).sparsity_levels) > 1]
                if len(prunable) > 1:
                    self._leaders.update({m: prunable[0] for m in prunable})
        return self._leaders

    def _decisions(self) -> list[Decision]:
        out = []
        for i, c in enumerate(self.choices):
            level = Component(SPARSITY, len(c.levels))
            if self.channels == "uniform":
                channel: tuple[Component, ...] = (Component(UNIFORM, len(c.weight_bits) - c.nonzero),)
            else:
                channel = tuple(Component(GROUP, len(c.weight_bits), g) for g in range(c.n_groups))
            channel += (Component(ACT, len(c.act_bits)),)
            if self.hierarchy == "per_layer":
                steps = [(0, (level, *channel))]
            else:
                steps = [(0, (level,)), (1, channel)]
            for phase, comps in steps:
                if any(comp.n > 1 for comp in comps):
                    out.append(Decision(i, phase, comps))
        return out
