"""The project's exception hierarchy.

Every error a user can cause derives from :class:`AutoMLError`. Messages say what was
expected, what arrived, and how to fix it, so the command line can print them as one
paragraph without a traceback.
"""

from __future__ import annotations


class AutoMLError(Exception):
    """Base class of every error raised on purpose by automl-mpq."""


class ConfigError(AutoMLError, ValueError):
    """A setting, option or configuration file holds a value that cannot be used."""


class PolicyError(AutoMLError, ValueError):
    """A policy does not match the model or the search space it is applied to."""


class SearchSpaceError(AutoMLError, ValueError):
    """A search space is malformed or does not fit the analysed model."""


class AnalysisError(AutoMLError, ValueError):
    """A model could not be analysed (no quantizable layer, untraceable structure, ...)."""


class TaskError(AutoMLError, ValueError):
    """A user task (model, data loaders, metric) breaks the task contract."""


class DataError(TaskError):
    """A data loader yields nothing or yields batches of the wrong form."""


class BudgetError(AutoMLError, ValueError):
    """A budget string or file is malformed."""


class InfeasibleBudget(BudgetError):
    """No policy in the search space meets the budget."""


class LooseBudget(BudgetError):
    """The float model already meets the budget, so it constrains nothing."""


class ProfileError(AutoMLError, ValueError):
    """A hardware profile is missing a key or holds a bad value."""


class TrackingError(AutoMLError, RuntimeError):
    """The MLflow tracking store cannot be reached or written."""


class ExportError(AutoMLError, ValueError):
    """A model cannot be exported, or a file is not a readable automl-mpq export."""


class RunDirError(AutoMLError, OSError):
    """The run directory cannot be written: no permission, or no space left on the disk."""
