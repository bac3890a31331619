"""automl-mpq: search joint channel pruning and mixed-precision quantization under hardware budgets.

The Python API mirrors ``automl search``::

    import automl
    result = automl.search(task, budget=["size<=0.125x"], searcher="tpe", evaluations=100)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Task", "search"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import automl` stays cheap and torch-free parts import fast.
    if name == "Task":
        from automl.evaluation.task import Task

        return Task
    if name == "search":
        from automl.runs.runner import search

        return search
    raise AttributeError(f"module 'automl' has no attribute {name!r}")
