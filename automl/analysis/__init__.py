"""Model analysis: layers, shapes, MACs and channel coupling.

The records (:mod:`search_spaces.network`) are plain values and import without torch, so the
search space, the cost model and a command line that refuses a bad option do not pay for
torch's import; the tracer and the pruning helpers load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from search_spaces.network import ChannelGroup, LayerInfo, ModelAnalysis, Segment

_LAZY = {"analyse": "automl.analysis.graph", "keep_masks": "automl.analysis.prune",
         "mask_model": "automl.analysis.prune", "prune_model": "automl.analysis.prune"}

__all__ = ["ChannelGroup", "LayerInfo", "ModelAnalysis", "Segment", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
