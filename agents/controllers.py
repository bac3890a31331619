"""AJPQ's two controllers for the on-policy agents: a layer controller and a channel controller.

In the joint env's ``two_level`` hierarchy every layer takes a layer step (its sparsity
level) and then a channel step (the bits of its importance-ranked channel groups and its
activation bits); the observation's phase flag says which. :class:`TwoControllerPolicy`
gives each step its own actor network, so the layer controller and the channel controller
are two policies: the flag routes a step through one of two MLPs, whose latents occupy
disjoint halves of the input of the action head (the other half is zero), so neither
controller's weights touch the other's actions (they share only the head's bias and, for
Box actions, the state-independent exploration scale). They cooperate through one critic
(the value of the episode's state, whoever acts next) and one reward, and over one
importance criterion: the space's channel ranking, whose tail the layer controller prunes
and whose groups the channel controller quantises.

Used by PPO (:class:`TwoControllerPolicy`) and MaskablePPO (:class:`TwoControllerMaskablePolicy`);
the off-policy agents keep one actor with the phase flag.
"""

from __future__ import annotations

from typing import Any

import torch as th
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn


def _mlp(n_in: int, arch: list[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n in arch:
        layers += [nn.Linear(n_in, n), activation()]
        n_in = n
    return nn.Sequential(*layers)


class TwoControllerExtractor(nn.Module):
    """Two actor MLPs selected by the phase flag at ``phase_index``, one critic MLP.

    The SB3 ``mlp_extractor`` interface: ``latent_dim_pi``, ``latent_dim_vf``, ``forward``,
    ``forward_actor``, ``forward_critic``.
    """

    def __init__(self, feature_dim: int, net_arch: Any, activation_fn: type[nn.Module], phase_index: int) -> None:
        super().__init__()
        arch = list(net_arch.get("pi", [64, 64]) if isinstance(net_arch, dict) else net_arch or [64, 64])
        vf_arch = list(net_arch.get("vf", arch) if isinstance(net_arch, dict) else arch)
        self.phase_index = int(phase_index)
        self.layer_net = _mlp(feature_dim, arch, activation_fn)
        self.channel_net = _mlp(feature_dim, arch, activation_fn)
        self.value_net = _mlp(feature_dim, vf_arch, activation_fn)
        self.latent_dim_pi = 2 * (arch[-1] if arch else feature_dim)
        self.latent_dim_vf = vf_arch[-1] if vf_arch else feature_dim

    def forward(self, features: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: th.Tensor) -> th.Tensor:
        channel = (features[:, self.phase_index : self.phase_index + 1] > 0.5).to(features.dtype)
        return th.cat([self.layer_net(features) * (1 - channel), self.channel_net(features) * channel], dim=1)

    def forward_critic(self, features: th.Tensor) -> th.Tensor:
        return self.value_net(features)


class _TwoControllers:
    """The two-controller extractor for any SB3 actor-critic policy (mixed in before it).

    Args:
        phase_index: position of the phase flag in the observation.
    """

    def __init__(self, *args: Any, phase_index: int, **kwargs: Any) -> None:
        self.phase_index = int(phase_index)
        super().__init__(*args, **kwargs)

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = TwoControllerExtractor(
            self.features_dim, self.net_arch, self.activation_fn, self.phase_index  # type: ignore[attr-defined]
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "phase_index": self.phase_index}  # type: ignore[misc]


class TwoControllerPolicy(_TwoControllers, ActorCriticPolicy):
    """PPO's actor-critic with a layer controller and a channel controller (see the module docstring)."""


class TwoControllerMaskablePolicy(_TwoControllers, MaskableActorCriticPolicy):
    """MaskablePPO's actor-critic with the two controllers."""
