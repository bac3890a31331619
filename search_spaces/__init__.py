"""Search spaces and policies: torch-free values shared by envs, searchers and cost models."""

from search_spaces.policy import FLOAT_BITS, LayerPolicy, Policy
from search_spaces.space import LayerSpace, SearchSpace, SpaceConfig

__all__ = ["FLOAT_BITS", "LayerPolicy", "LayerSpace", "Policy", "SearchSpace", "SpaceConfig"]
