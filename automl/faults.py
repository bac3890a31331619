"""A fault-injection hook for crash tests: fail at the Nth pass of a named point.

The code that owns a step a crash can interrupt calls :func:`point` there. Normally that
is one dictionary lookup. With the environment variable ``AUTOML_FAULT=NAME:N[:ACTION]``
the process fails at the ``N``-th pass (counted from 1) of point ``NAME``:

- ``kill`` (default): ``SIGKILL`` to itself, like ``kill -9`` (no clean-up code runs);
- ``enospc``: raises ``OSError(errno.ENOSPC)``, as a full disk would.

Points: ``evaluation`` (a policy evaluated, its result not yet cached), ``cache-write``
(cached, not yet journaled), ``journal-write`` (half of a journal line written),
``optuna-commit`` (a trial told to the study, not yet journaled), ``mlflow-write`` (a
child run created, its metrics not yet logged; on the logging thread). Used by
``tests/test_chaos.py`` and ``tests/test_robustness.py``.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "AUTOML_FAULT"
POINTS = ("evaluation", "cache-write", "journal-write", "optuna-commit", "mlflow-write")


def _parse(text: str) -> tuple[str, int, str] | None:
    if not text:
        return None
    name, _, rest = text.partition(":")
    count, _, action = rest.partition(":")
    return name, int(count or 1), action or "kill"


_ARMED = _parse(os.environ.get(ENV, ""))
_passes: dict[str, int] = {}


def point(name: str) -> None:
    """Pass the point ``name``; fails here if :data:`ENV` says so (see the module doc)."""
    if _ARMED is None or _ARMED[0] != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] != _ARMED[1]:
        return
    if _ARMED[2] == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.kill(os.getpid(), signal.SIGKILL)
