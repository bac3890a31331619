"""``python -m automl`` and the ``automl`` command (``[project.scripts]``).

A Ctrl-C while the command line is still being imported or parsed ends like one during a command:
exit 130 and one line, not a traceback (nothing has been written yet; every command handles its
own Ctrl-C, see :func:`automl.cli.main`).

A Ctrl-C during an import waits until that import has finished (at most the seconds torch or MLflow
take to import; a second Ctrl-C stops at once). Raised inside an import it can

- land in a weak-reference callback of ``importlib._bootstrap`` between taking the global import
  lock and the ``try`` that releases it: Python prints "Exception ignored", the interrupt is lost
  and the lock stays held, so the next import on another thread (the warm imports of ``automl
  search``) waits forever while the main thread waits for that import: a search that ignores
  Ctrl-C, then hangs;
- reach torch's C++ start-up code (``torch.distributed``), which aborts the process (SIGABRT);
- leave Python's flag for an unhandled KeyboardInterrupt set although the command handled it,
  so the process ends killed by SIGINT instead of with exit status 130.

:func:`install_interrupt_handler` defers the interrupt out of imports, re-raises one that a
destructor or callback swallowed, and :func:`run` clears that flag.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

# What ``__name__`` reads in the frames of the import machinery (frozen or from source).
_IMPORT_MACHINERY = frozenset({"importlib._bootstrap", "importlib._bootstrap_external",
                               "_frozen_importlib", "_frozen_importlib_external"})
RETRY_S = 0.02  # how soon a deferred Ctrl-C is tried again
_pending = False


def _in_import_machinery(frame: FrameType | None) -> bool:
    return frame is not None and frame.f_globals.get("__name__") in _IMPORT_MACHINERY


def _importing(frame: FrameType | None) -> bool:
    """Whether an import is on the stack of ``frame``."""
    while frame is not None:
        if _in_import_machinery(frame):
            return True
        frame = frame.f_back
    return False


def _defer() -> None:
    global _pending
    _pending = True
    signal.setitimer(signal.ITIMER_REAL, RETRY_S)


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    """Raise KeyboardInterrupt once no import is running (tried again every :data:`RETRY_S`); a
    second Ctrl-C while one waits raises at once, except in the import machinery itself."""
    global _pending
    again = signum == signal.SIGINT and _pending
    if _in_import_machinery(frame) or (not again and _importing(frame)):
        _defer()
        return
    _pending = False
    signal.setitimer(signal.ITIMER_REAL, 0)
    raise KeyboardInterrupt


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    if _pending:
        _on_sigint(signum, frame)


def _reraise_swallowed(unraisable, previous=sys.unraisablehook) -> None:  # noqa: ANN001
    """A KeyboardInterrupt that a ``__del__`` or a weakref callback swallowed is delivered again,
    once that code has returned."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        _defer()
        return
    previous(unraisable)


def install_interrupt_handler() -> None:
    """Ctrl-C as Python's own, but deferred out of imports (main thread only)."""
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGINT, _on_sigint)
    sys.unraisablehook = _reraise_swallowed


def uninstall_interrupt_handler() -> None:
    """Python's own Ctrl-C again, no deferred one left to fire (SIGALRM would kill the process once
    Python's finalisation has reset its handler)."""
    global _pending
    signal.setitimer(signal.ITIMER_REAL, 0)
    _pending = False
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    sys.unraisablehook = sys.__unraisablehook__


def _clear_unhandled_interrupt_flag() -> None:
    """Python kills itself with SIGINT at exit when a KeyboardInterrupt once left code run through
    ``PyRun_*`` (torch's start-up runs some), even though the command caught it; running any
    code that way clears the flag."""
    import ctypes

    ctypes.pythonapi.PyRun_SimpleString(b"pass")


def run() -> int:
    try:
        install_interrupt_handler()
        from automl.cli import main

        code = main()
    except KeyboardInterrupt:
        print("interrupted while starting; nothing was saved.", file=sys.stderr)
        code = 128 + signal.SIGINT
    finally:
        uninstall_interrupt_handler()
    if code == 128 + signal.SIGINT:
        _clear_unhandled_interrupt_flag()
    return code


if __name__ == "__main__":
    raise SystemExit(run())
