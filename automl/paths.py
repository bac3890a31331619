"""Where the project keeps what it computes once per machine (decoded data, checkpoints, profiles)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$AUTOML_CACHE_DIR``, else ``$XDG_CACHE_HOME/automl-mpq``, else ``~/.cache/automl-mpq``."""
    if os.environ.get("AUTOML_CACHE_DIR"):
        return Path(os.environ["AUTOML_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "automl-mpq"


def umask() -> int:
    """The process's umask, read without changing it (Linux ``/proc``); elsewhere set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file (0666 less the umask): for files written aside with
    :func:`tempfile.mkstemp` (always 0600) and renamed into place."""
    return 0o666 & ~umask()


def check_sqlite_creatable(path: Path, what: str, error: type[Exception], not_a_file: str, not_writable: str) -> None:
    """A SQLite database can be opened or created at ``path``, checked without creating anything (its
    folders are made when it is opened). ``what`` names the store in the message (``"tracking store
    'sqlite:///x.db'"``); ``not_a_file`` / ``not_writable`` say how to fix each case."""
    if path.is_file():
        return
    if path.exists():
        raise error(f"{what}: {str(path)!r} exists and is not a file; {not_a_file}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise error(f"{what} cannot be created: {str(folder)!r} is not a writable directory{not_writable}")
