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
