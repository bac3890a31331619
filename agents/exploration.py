"""Local exploration around a centre policy for the on-policy RL agents.

Relative to a good policy, most changes make it worse, and many changes at once almost
always do: an episode that moves half of its ~50 action components from the integer
program's policy is close to a random policy (random search on ResNet-8 at
``size<=0.0625x`` scores 0.36 where the integer program scores 0.53). So the agents explore
with a *radius*: ``explore_moves``, the expected number of action components an episode
changes from its centre, like a local search's neighbourhood (HAQ and AMC explore with
Gaussian noise around the actor's action; here the scale is set by what it changes).

- **Categorical actions** (MaskablePPO): each component's target distribution puts
  ``1 - epsilon`` on the centre's option and ``epsilon`` on the others, halving with every
  further option (:func:`local_distribution`), with ``epsilon = explore_moves / components``;
  :func:`clone_distribution` fits the policy to it (cross-entropy to soft targets).
- **Gaussian actions** (PPO): the mean is regressed onto the centre
  (:func:`agents.rl_parts.behaviour_clone`) and the standard deviation of each action
  dimension is the one that moves a component by at least one option with probability
  ``epsilon`` (:func:`box_sigma`); it is the floor PPO's learned scale is held at.

The centre starts at the reference policy and moves to the best policy the search has
found (self-imitation, Oh et al. 2018), see :class:`agents.rl.RLSearcher`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm

NEIGHBOUR_DECAY = 0.5  # each further option from the centre gets half the probability of the previous


def local_distribution(n: int, centre: int, epsilon: float, decay: float = NEIGHBOUR_DECAY) -> np.ndarray:
    """Probabilities of ``n`` options: ``1 - epsilon`` on ``centre``, ``epsilon`` shared by the
    others in proportion to ``decay ** (distance - 1)``."""
    if n == 1:
        return np.ones(1)
    distance = np.abs(np.arange(n) - int(centre))
    weight = np.where(distance > 0, decay ** (distance - 1.0), 0.0)
    out = epsilon * weight / weight.sum()
    out[int(centre)] = 1.0 - epsilon
    return out


def kernel_targets(
    sizes: Sequence[Sequence[int]], options: Sequence[Sequence[int]], nvec: Sequence[int], epsilon: float
) -> tuple[np.ndarray, np.ndarray]:
    """Soft targets of a categorical policy for one episode of a MultiDiscrete env.

    Args:
        sizes: per step, the option count of each component the step reads.
        options: per step, the centre's option of each of those components.
        nvec: the MultiDiscrete widths (a dimension may be wider than a step's options;
            the extra indices get no probability).
        epsilon: the probability of leaving the centre's option, per component.

    Returns:
        ``[T, sum(nvec)]`` target probabilities (dimension blocks concatenated) and
        ``[T, len(nvec)]`` weights: 1 for a component with a choice, 0 for dimensions the
        step does not read or that have a single option.
    """
    offsets = np.concatenate([[0], np.cumsum(nvec)]).astype(int)
    targets = np.zeros((len(sizes), int(offsets[-1])), dtype=np.float32)
    weights = np.zeros((len(sizes), len(nvec)), dtype=np.float32)
    for t, (size, opts) in enumerate(zip(sizes, options, strict=True)):
        for k, (n, centre) in enumerate(zip(size, opts, strict=True)):
            if n > 1:
                targets[t, offsets[k] : offsets[k] + n] = local_distribution(n, centre, epsilon)
                weights[t, k] = 1.0
    return targets, weights


def _log_probs(model: BaseAlgorithm, obs: th.Tensor) -> list[th.Tensor]:
    """Per MultiDiscrete dimension, ``[T, n_k]`` log-probabilities of the unmasked policy."""
    dist: Any = model.policy.get_distribution(obs)  # type: ignore[operator]
    # sb3-contrib's masked distribution keeps its parts in ``distributions``, SB3's in ``distribution``.
    parts: list[Any] = getattr(dist, "distributions", None) or dist.distribution
    return [th.log_softmax(p.logits, dim=-1) for p in parts]


class CategoricalAnchor:
    """The soft targets of one centre episode, and the fit of a categorical policy to them.

    Args:
        obs: ``[T, obs_dim]`` the observations of the centre's (replayed) episode.
        targets / weights: from :func:`kernel_targets`.
        nvec: the MultiDiscrete widths.
    """

    def __init__(self, obs: np.ndarray, targets: np.ndarray, weights: np.ndarray, nvec: Sequence[int]) -> None:
        self.obs = th.as_tensor(np.asarray(obs), dtype=th.float32)
        self.nvec = [int(n) for n in nvec]
        self.targets = list(th.split(th.as_tensor(targets), self.nvec, dim=1))
        self.weights = th.as_tensor(weights)
        self.centre = [t.argmax(dim=1) for t in self.targets]
        tlog = [th.where(t > 0, th.log(t.clamp_min(1e-12)), th.zeros_like(t)) for t in self.targets]
        self._entropy = th.stack([-(t * lg).sum(dim=1) for t, lg in zip(self.targets, tlog, strict=True)], dim=1)

    def _kl(self, logp: list[th.Tensor]) -> th.Tensor:
        ce = th.stack([-(t * lp).sum(dim=1) for t, lp in zip(self.targets, logp, strict=True)], dim=1)
        return ((ce - self._entropy) * self.weights).sum() / self.weights.sum().clamp_min(1.0)

    def centre_probability(self, model: BaseAlgorithm) -> float:
        """Mean probability the policy gives the centre's option, over the weighted components."""
        with th.no_grad():
            logp = _log_probs(model, self.obs.to(model.device))
            p = th.stack([lp.gather(1, c[:, None])[:, 0].exp() for lp, c in zip(logp, self.centre, strict=True)], dim=1)
        return float((p * self.weights).sum() / self.weights.sum().clamp_min(1.0))

    def fit(self, model: BaseAlgorithm, n_steps: int, lr: float = 3e-3, tol: float = 0.01) -> tuple[int, float]:
        """Adam steps on the mean KL(target || policy) per component until it is below ``tol``
        (nats) or ``n_steps`` were taken. Returns the steps taken and the final KL."""
        obs = self.obs.to(model.device)
        optimiser = th.optim.Adam(model.policy.parameters(), lr=lr)
        taken, kl = 0, float("inf")
        for taken in range(n_steps + 1):  # noqa: B007 - the count is returned
            loss = self._kl(_log_probs(model, obs))
            kl = float(loss.detach())
            if kl < tol or taken == n_steps:
                break
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        return taken, kl


def box_sigma(sizes: Sequence[Sequence[int]], dim: int, epsilon: float) -> np.ndarray:
    """Per Box dimension, the Gaussian scale that moves a relative action by at least one
    option with probability ``epsilon``.

    A relative action ``v`` moves a component of ``n`` options by ``round(v * (n - 1))``, so
    it stays when ``|v| < 0.5 / (n - 1)``; ``P(|v| >= 0.5 / (n - 1)) = epsilon`` gives
    ``sigma = 0.5 / ((n - 1) * z)`` with ``z`` the normal quantile of ``1 - epsilon / 2``.
    A dimension's ``n`` is the median over the steps that read it.
    """
    z = statistics.NormalDist().inv_cdf(1.0 - epsilon / 2.0)
    out = np.full(dim, 0.5 / z, dtype=np.float32)
    for k in range(dim):
        ns = [s[k] for s in sizes if k < len(s) and s[k] > 1]
        if ns:
            out[k] = 0.5 / ((statistics.median(ns) - 1) * z)
    return out
