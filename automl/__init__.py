"""automl-mpq: search joint channel pruning and mixed-precision quantization under hardware budgets."""

from __future__ import annotations

__version__ = "0.1.0"
