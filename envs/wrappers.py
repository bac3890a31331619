"""Discrete action forms of the compression envs, with masks for sb3-contrib's MaskablePPO."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from automl.errors import ConfigError
from envs.base import CompressionEnv
from envs.masking import PRODUCT_LIMIT, component_masks, product_mask

FORMS = ("discrete", "multidiscrete")


class DiscreteActions(gym.ActionWrapper):
    """Discrete or MultiDiscrete actions over a compression env's option indices.

    ``multidiscrete``: ``MultiDiscrete(nvec)``, one dimension per action component, each as
    wide as its widest decision (an index past a decision's options means its last option).
    ``discrete``: one ``Discrete(prod(nvec))`` index over every combination, for decisions
    small enough to enumerate (LayerQuantEnv's weight x activation bits).

    :meth:`action_masks` follows sb3-contrib's convention: the concatenated per-dimension
    masks for ``multidiscrete``, one flat mask for ``discrete``. The ``discrete`` mask is
    exact over combinations. The ``multidiscrete`` mask is exact per dimension (an option is
    allowed when some completion of the rest of the step and of the episode is feasible);
    a combination of allowed options that is jointly infeasible is projected by the env
    and recorded in ``info["projection"]``.

    Args:
        env: a :class:`~envs.base.CompressionEnv`, possibly wrapped.
        form: ``discrete`` or ``multidiscrete``.
    """

    def __init__(self, env: gym.Env, form: str = "multidiscrete") -> None:
        super().__init__(env)
        base = env.unwrapped
        if not isinstance(base, CompressionEnv):
            raise ConfigError(f"DiscreteActions wraps a compression env, got {type(base).__name__}")
        if form not in FORMS:
            raise ConfigError(f"form must be one of {list(FORMS)}, got {form!r}")
        self.form = form
        nvec = np.ones(base.action_dim, dtype=np.int64)
        for d in base.decisions:
            for k, comp in enumerate(d.components):
                nvec[k] = max(nvec[k], comp.n)
        self.nvec = nvec
        if form == "discrete":
            total = math.prod(int(n) for n in nvec)
            if total > PRODUCT_LIMIT:
                raise ConfigError(
                    f"a Discrete action would need {total} combinations ({' x '.join(map(str, nvec))}); at most "
                    f"{PRODUCT_LIMIT} are enumerated. Use form='multidiscrete' for this env."
                )
            self.action_space = spaces.Discrete(total)
        else:
            self.action_space = spaces.MultiDiscrete(nvec)

    def _indices(self, action: Any) -> np.ndarray:
        if self.form == "discrete":
            return np.array(np.unravel_index(int(action), tuple(self.nvec)), dtype=np.int64)
        return np.asarray(action, dtype=np.int64).reshape(-1)

    def action(self, action: Any) -> np.ndarray:
        base: CompressionEnv = self.env.unwrapped  # type: ignore[assignment]
        d = base.current_decision
        if d is None:  # the env raises ResetNeeded itself
            return np.zeros(base.action_dim, dtype=np.float32)
        idx = self._indices(action)
        return base.box_from_options(idx[: len(d.components)], d, base.action_dim)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Step the env; ``info["executed_action"]`` is given in this wrapper's action form."""
        obs, reward, terminated, truncated, info = self.env.step(self.action(action))
        applied = info.get("executed_options")
        if applied is not None:
            idx = self._indices(action).copy()
            idx[: len(applied)] = applied
            info["executed_action"] = int(np.ravel_multi_index(tuple(idx), tuple(self.nvec))) if self.form == "discrete" else idx
        return obs, reward, terminated, truncated, info

    def sample_allowed(self, rng: np.random.Generator, mask: np.ndarray | None = None) -> np.ndarray | int:
        """A uniformly random action among those :meth:`action_masks` allows (per dimension)."""
        mask = self.action_masks() if mask is None else mask
        if self.form == "discrete":
            return int(rng.choice(np.flatnonzero(mask)))
        out, start = [], 0
        for width in self.nvec:
            out.append(int(rng.choice(np.flatnonzero(mask[start : start + width]))))
            start += int(width)
        return np.array(out)

    def action_masks(self) -> np.ndarray:
        """Which actions keep the episode feasible (and valid) at the current step."""
        base: CompressionEnv = self.env.unwrapped  # type: ignore[assignment]
        d = base.current_decision
        if d is None:
            return np.ones(int(self.nvec.sum()) if self.form == "multidiscrete" else math.prod(int(n) for n in self.nvec), bool)
        table, ok = base.mask_rows()
        if self.form == "discrete":
            grid = np.zeros(tuple(self.nvec), dtype=bool)
            joint = product_mask(table, ok)
            assert joint is not None, "every decision of a discrete-form env is enumerated"
            grid[tuple(slice(0, n) for n in joint.shape) + (0,) * (len(self.nvec) - joint.ndim)] = joint
            return grid.reshape(-1)
        parts = []
        masks = component_masks(table, ok)
        for k, width in enumerate(self.nvec):
            m = np.zeros(width, dtype=bool)
            if k < len(masks):
                m[: len(masks[k])] = masks[k]
            else:
                m[0] = True
            parts.append(m)
        return np.concatenate(parts)
