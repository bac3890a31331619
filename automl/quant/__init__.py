"""Fake quantization and the policy-applying engine.

The names below load their modules on first use, so that importing the package costs nothing
until one of them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "QuantEngine": "automl.quant.engine", "QuantLayer": "automl.quant.engine", "fold_batchnorm": "automl.quant.engine",
    "act_qparams": "automl.quant.fake", "quantize_weight": "automl.quant.fake",
    "quantize_weight_ste": "automl.quant.fake", "weight_scales": "automl.quant.fake",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
