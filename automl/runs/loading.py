"""Turning a task string from the command line or a config file into a :class:`Task`.

:func:`check_task_spec` checks the name alone, without importing torch or the user's module
(a module that cannot be found, a function its source does not define), so that a typo fails
in about the time of ``automl --help``; :func:`load_task` then builds the task.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from automl.errors import AutoMLError, TaskError

if TYPE_CHECKING:
    from automl.evaluation.task import Task

GRAMMAR = ("'reference:<arch>' (MNIST: resnet8, resnet20), 'reference:<dataset>/<arch>' (fashion_mnist/resnet8, "
           "cifar10/resnet20, ...) or 'package.module:function' (a function returning automl.Task)")
# The reference tasks (what reference_names() lists: automl.reference.models.REFERENCE_MODELS without
# plaincnn, then automl.reference.recipes.RECIPES), named here so that checking a task name needs no
# torch; tests/test_precheck.py keeps the two in step.
REFERENCE_TASKS = ("resnet8", "resnet20", "fashion_mnist/resnet8", "fashion_mnist/resnet20", "cifar10/resnet20",
                   "cifar10/mobilenetv2")
_TASK_MODULE = "automl.evaluation.task"


def _importable_cwd() -> None:
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))


def _split(spec: str) -> tuple[str, str]:
    if ":" not in spec:
        raise TaskError(f"task {spec!r} is not of the form {GRAMMAR}")
    module_name, attr = spec.split(":", 1)
    if module_name == "reference":
        if attr not in REFERENCE_TASKS:
            known = [f"reference:{k}" for k in REFERENCE_TASKS]
            raise TaskError(f"unknown reference task {spec!r}; known ones are {known}")
    elif not module_name or not attr or not all(p.isidentifier() for p in [*module_name.split("."), attr]):
        raise TaskError(f"task {spec!r} is not of the form {GRAMMAR}")
    return module_name, attr


def _defined_names(source: str) -> tuple[set[str] | None, list[str]]:
    """The names a module's top level may bind (``None`` when its source cannot tell: ``from x
    import *``, a module ``__getattr__``, names made at run time through ``globals()``) and the
    functions it defines at the top level, in order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None, []  # the import reports it, with the line
    functions = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    names: set[str] = set()
    for node in ast.walk(tree):  # also under if/try (and, harmlessly, inside functions)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None, functions
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Name) and node.id == "globals":
            return None, functions
    return (None if "__getattr__" in names else names), functions


def check_task_spec(spec: str) -> None:
    """Check a task name without importing torch or the task's module.

    A ``reference:`` name must be known; a ``module:function`` module must be found (the
    current directory is importable) and, when its source can tell, define ``function``.

    Raises:
        TaskError: what was expected, what arrived and how to fix it.
    """
    module_name, attr = _split(spec)
    if module_name == "reference":
        return
    _importable_cwd()
    try:
        found = importlib.util.find_spec(module_name)
    except Exception as exc:  # noqa: BLE001 - a parent package that fails to import, a bad name
        raise TaskError(
            f"could not import {module_name!r} for task {spec!r} ({type(exc).__name__}: {exc}). Check the module path; "
            "it must be importable from the current directory or the environment."
        ) from None
    if found is None:
        raise TaskError(
            f"no module {module_name!r} for task {spec!r}: it is neither in the current directory ({Path.cwd()}) nor "
            f"installed in this environment ({sys.prefix}). Expected {GRAMMAR}; run from the directory that holds "
            "the module, or install its package."
        )
    origin = found.origin if found.has_location else None
    if not origin or not origin.endswith(".py"):
        return
    try:
        names, functions = _defined_names(Path(origin).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return
    if names is not None and attr not in names:
        public = [n for n in functions if not n.startswith("_")]
        raise TaskError(
            f"module {module_name!r} ({origin}) defines no {attr!r}, so task {spec!r} cannot be built. Expected the "
            f"name of a function returning automl.Task; its functions are: {', '.join(public[:12]) or 'none'}"
            f"{', ...' if len(public) > 12 else ''}."
        )


def reference_names() -> list[str]:
    """Every ``reference:...`` task name (imports torch; :data:`REFERENCE_TASKS` is the same list without it)."""
    from automl.reference.models import REFERENCE_MODELS
    from automl.reference.recipes import RECIPES

    return [f"reference:{k}" for k in REFERENCE_MODELS if k != "plaincnn"] + [f"reference:{d}/{a}" for d, a in RECIPES]


def check_task_data(spec: str, data_dir: str | None = None) -> None:
    """A reference task's dataset is where it is looked for (cheap: no decoding, no torch work).

    Raises:
        DataError: the named directory does not exist, or the dataset is found nowhere.
    """
    module_name, _, attr = spec.partition(":")
    dataset = attr.rpartition("/")[0] if module_name == "reference" else ""
    if dataset == "cifar10":
        from automl.data.cifar10 import find_source
    elif dataset == "fashion_mnist":
        from automl.data.fashion_mnist import find_source
    else:
        return
    find_source(data_dir or None)


def load_task(spec: str, threads: int | None = None, data_dir: str | None = None) -> Task:
    """Build the task named by ``spec``.

    ``reference:<arch>`` is the built-in MNIST task, ``reference:<dataset>/<arch>`` a reference
    network on Fashion-MNIST or CIFAR-10 (shipped, or trained and cached on first use; the data is
    read from disk, see :mod:`automl.data`); ``package.module:function`` imports ``function`` (the
    current directory is importable) and calls it with no arguments; it must return an
    :class:`automl.Task`. ``data_dir`` is where a reference task's dataset is (``--data-dir``). A factory that
    returns something else is reported without importing torch when the factory did not.
    """
    module_name, attr = _split(spec)
    if module_name == "reference":
        if spec not in reference_names():
            raise TaskError(f"unknown reference task {spec!r}; known ones are {reference_names()}")
        from automl.reference.checkpoints import reference_task

        dataset, _, arch = attr.rpartition("/")
        return reference_task(arch, threads=threads, dataset=dataset or "mnist", data_dir=data_dir or None)
    _importable_cwd()
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to fix
        raise TaskError(
            f"could not import {module_name!r} for task {spec!r} ({type(exc).__name__}: {exc}). "
            f"Check the module path; it must be importable from the current directory or the environment."
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TaskError(f"{module_name!r} has no callable {attr!r}; task {spec!r} must name a function returning automl.Task")
    if threads is not None and "torch" in sys.modules:  # a task module imports torch; pin before it computes
        from automl.timing import pin_threads

        pin_threads(threads)
    try:
        task = factory()
    except AutoMLError:
        raise  # already says what is wrong (an empty loader, a bad model, ...)
    except Exception as exc:  # noqa: BLE001
        raise TaskError(f"task factory {spec!r} failed: {type(exc).__name__}: {exc}") from exc
    task_module = sys.modules.get(_TASK_MODULE)  # a factory that built a Task has imported its class
    if task_module is None or not isinstance(task, task_module.Task):
        raise TaskError(
            f"task factory {spec!r} returned {type(task).__name__}; it must return automl.Task(model, sample_input, "
            "train_loader, calib_loader, val_loader, test_loader, metric)"
        )
    return task
