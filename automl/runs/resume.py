"""Where a run lives and what a resumed run continues with.

A new run gets a directory under ``<output>/runs`` and its configuration is saved there with
absolute paths, so it can be resumed from any working directory. A resumed run continues
with its own saved configuration; a key the user sets explicitly overrides it only if it
does not change what the journal's records mean (evaluations, threads, workers, the final
fine-tune and export), and every override is reported. Changing the task, the budget, the
space, the searcher or the evaluation of a run with records is an error, not a silent mix.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.records import TrialRecord
from automl.errors import ConfigError, RunDirError
from automl.runs.config import SearchConfig, dotted_keys

JOURNAL, STATE, CONFIG = "trials.jsonl", "state.json", "config.json"
# What a resume may change: how much more to search, with what resources, and the final stage.
RESUMABLE = ("run.evaluations", "run.threads", "run.workers", "run.resume", "run.output", "run.allow_loose_budget")
RESUMABLE_PREFIXES = ("finetune.",)


@dataclass(frozen=True)
class RunPlan:
    """The run a search will write: its config, directory and (on resume) its records.

    Attributes:
        config: the configuration to run with (the saved one on resume, plus overrides).
        run_dir: absolute directory of the run.
        resuming: whether ``run_dir`` holds an earlier session of this run.
        journal: the records already evaluated (resume only).
        state: ``state.json`` of the run (parent run id, working directory).
        notes: what the resume took from the user (one line each), for the console.
    """

    config: SearchConfig
    run_dir: Path
    resuming: bool = False
    journal: tuple[TrialRecord, ...] = ()
    state: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def read_journal(path: Path) -> list[TrialRecord]:
    """Records of a journal, in trial-number order.

    Only a torn last line (a crash mid-write) is skipped; any other line that is not a
    trial record is an error naming the file and the line.

    Raises:
        ConfigError: a line that is not JSON, not a record, or not text.
    """
    if not path.exists():
        return []
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"journal {str(path)!r} is not text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}); it is "
            "not a journal written by automl search. Restore it, or start a new run without --resume."
        ) from None
    out: dict[int, TrialRecord] = {}
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines):
                continue  # torn by a crash mid-write; that trial is evaluated again
            raise ConfigError(_bad_line(path, i, f"not JSON ({exc.msg})")) from None
        if not isinstance(data, dict):
            raise ConfigError(_bad_line(path, i, f"a JSON {type(data).__name__}, not a trial record object"))
        try:
            record = TrialRecord.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(_bad_line(path, i, str(exc))) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(_bad_line(path, i, f"not a trial record ({type(exc).__name__}: {exc})")) from None
        out.setdefault(record.number, record)
    return [out[n] for n in sorted(out)]


def repair_torn_tail(path: Path) -> int:
    """Cut a torn last line (a crash mid-write) off a journal before it is appended to, so
    the next record starts on a line of its own; returns the bytes removed."""
    if not path.is_file():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with path.open("rb+") as fh:
        fh.truncate(keep)
    return len(data) - keep


def disk_error(exc: OSError, path: Path, run_dir: Path, what: str) -> RunDirError:
    """The project's error for an ``OSError`` writing ``path`` (``what``) of the run in ``run_dir``."""
    from automl.runs.console import command_prefix

    if exc.errno == errno.ENOSPC:
        why, fix = "the disk is full", f"Free space on the disk that holds {str(run_dir)!r}"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why, fix = "it is not writable", f"Make {str(run_dir)!r} writable"
    else:
        why, fix = "the write failed", "Fix the cause"
    return RunDirError(
        f"cannot write {what} to {str(path)!r}: {why} ({exc.strerror or exc}). Every record already in "
        f"{str(run_dir / JOURNAL)!r} is kept. {fix}, then continue with: {command_prefix()} search --resume {run_dir}"
    )


def check_writable(run_dir: Path) -> None:
    """Fail before any work when the run directory cannot be created or written: probe the
    nearest existing folder on its path with a temporary file (nothing is left behind)."""
    folder = run_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise RunDirError(
            f"the output directory {str(run_dir.parent.parent if run_dir.parent.name == 'runs' else run_dir)!r} cannot "
            f"be written: creating a file in {str(folder)!r} failed ({exc.strerror or exc}). Pass a writable --output, "
            "or fix its permissions."
        ) from None


def _bad_line(path: Path, line: int, what: str) -> str:
    return (
        f"journal {str(path)!r} line {line} is {what}. Every line must be a trial record written by automl search; "
        "remove or restore that line, or start a new run without --resume."
    )


def _load_json(path: Path, what: str) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {str(path)!r} is not readable JSON ({exc}); restore it or start a new run") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def find_run_dir(resume: str, output: str) -> Path:
    """The directory of the run ``resume`` names: a run directory, a run name under
    ``<output>/runs``, or the MLflow parent run id recorded in a run's ``state.json``."""
    base = Path(output).expanduser()
    for candidate in (Path(resume).expanduser(), base / "runs" / resume):
        if (candidate / CONFIG).is_file():
            return candidate.resolve()
    for state in sorted(base.glob(f"runs/*/{STATE}")):
        try:
            if json.loads(state.read_text()).get("parent_run_id") == resume:
                return state.parent.resolve()
        except (OSError, ValueError, AttributeError):
            continue
    raise ConfigError(
        f"cannot resume {resume!r}: it is neither a run directory (with {CONFIG}) nor a run name or MLflow run id "
        f"under {str(base / 'runs')!r}. Pass the run directory printed by the interrupted search."
    )


def _is_resumable(key: str) -> bool:
    return key in RESUMABLE or key.startswith(RESUMABLE_PREFIXES)


def _explicit(config: SearchConfig, explicit: Collection[str] | None) -> set[str]:
    if explicit is not None:
        return {k.replace("-", "_") for k in explicit}
    default = SearchConfig().to_dict()
    given = config.to_dict()
    return {key for key in dotted_keys(given) if _at(given, key) != _at(default, key)}


def _at(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def plan_run(config: SearchConfig, explicit: Collection[str] | None = None) -> RunPlan:
    """The run ``config`` asks for: a new directory, or the run ``config.run.resume`` names.

    Args:
        config: the user's configuration.
        explicit: the keys the user set (command line and config file); ``None`` takes
            the keys that differ from the defaults (the Python API).

    Raises:
        ConfigError: the run to resume is not found, its files are unreadable, or an
            explicit key would change what its records mean.
    """
    if not config.run.resume:
        output = Path(config.run.output).expanduser().resolve()
        run_dir = output / "runs" / time.strftime("%Y%m%d-%H%M%S")
        while run_dir.exists():
            run_dir = run_dir.with_name(run_dir.name + "x")
        return RunPlan(config.merged({"run.output": str(output)}), run_dir, state={"cwd": str(Path.cwd())})
    run_dir = find_run_dir(config.run.resume, config.run.output)
    saved_dict = _load_json(run_dir / CONFIG, "run configuration")
    try:
        saved = SearchConfig.from_dict(saved_dict)
    except ConfigError as exc:
        raise ConfigError(f"the saved configuration {str(run_dir / CONFIG)!r} is not usable: {exc}") from None
    journal = read_journal(run_dir / JOURNAL)
    state = _load_json(run_dir / STATE, "run state")
    changes: dict[str, Any] = {}
    notes = []
    for key in sorted(_explicit(config, explicit)):
        new, old = config.get(key), saved.get(key)
        if key in ("run.resume", "run.output") or new == old:
            continue
        if not _is_resumable(key):
            raise ConfigError(
                f"cannot change {key!r} when resuming {str(run_dir)!r}: the run has {old!r}, this command asks for {new!r}. "
                f"Its {len(journal)} records were evaluated with {old!r}; drop the option to continue the run, "
                "or start a new search without --resume."
            )
        changes[key] = new
        notes.append(f"{key}: {old!r} -> {new!r} (given on the command line or in the config file)")
    # Where the run lives is where it was found: absolute, whatever the working directory.
    output = run_dir.parent.parent if run_dir.parent.name == "runs" else Path(saved.run.output).expanduser().resolve()
    resumed = saved.merged({**changes, "run.output": str(output), "run.resume": str(run_dir)})
    return RunPlan(resumed, run_dir, True, tuple(journal), state, tuple(notes))
