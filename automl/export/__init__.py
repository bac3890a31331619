"""The export layer: a policy as a packed ``.ampq`` file and as an ONNX model that ONNX Runtime runs
(pruned channels removed, QDQ int8), timing in a runtime, and latency profiles measured there.

``load_exported``, ``export_policy`` and ``read_export`` (:mod:`automl.export.ampq`) load on first
use, so that :mod:`automl.export.ort` runs an exported file in a process that never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"load_exported": "automl.export.ampq", "export_policy": "automl.export.ampq",
         "read_export": "automl.export.ampq", "export_onnx": "automl.export.onnx"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
