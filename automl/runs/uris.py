"""Cheap checks of the Optuna storage URL and the MLflow tracking URI, before any work.

A typo in ``--storage`` or ``--tracking-uri`` used to surface only when the searcher or the
tracker opened it, after the task was loaded and the evaluator built. These checks parse
the URL with SQLAlchemy (the library both Optuna and MLflow open databases with) and, for
a database server, open and close one connection with a short timeout.
"""

from __future__ import annotations

from pathlib import Path

from automl.errors import ConfigError, TrackingError
from automl.paths import check_sqlite_creatable

CONNECT_TIMEOUT = 5
SERVER_DIALECTS = ("postgresql", "mysql", "mssql", "oracle")


def _database_url(url: str, what: str, error: type[Exception]):  # noqa: ANN202 - sqlalchemy.URL
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise error(
            f"{what} {url!r} is not a database URL ({exc}); use e.g. 'sqlite:///path/to.db' or "
            "'postgresql://user@host:5432/db'"
        ) from None
    return parsed


def connect_test(url: str, what: str, error: type[Exception]) -> None:
    """Open and close one connection to a database server (a no-op for SQLite files).

    Raises:
        ``error``: the URL does not parse, its driver is not installed, or the server
            does not answer within :data:`CONNECT_TIMEOUT` seconds.
    """
    parsed = _database_url(url, what, error)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        db = parsed.database
        if db and db != ":memory:":
            _check_creatable(Path(db).expanduser(), url, what, error)
        return
    if backend not in SERVER_DIALECTS:
        raise error(f"{what} {url!r} names the database {backend!r}, which is not supported; use sqlite or postgresql")
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername=_postgres_driver())
    try:
        engine = create_engine(parsed, poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT})
        with engine.connect():
            pass
        engine.dispose()
    except ModuleNotFoundError as exc:
        raise error(
            f"{what} {url!r} needs the database driver {exc.name!r}, which is not installed: "
            "pip install 'automl-mpq[postgres]' (psycopg 3)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - driver-specific connection errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise error(f"cannot connect to the {what} {url!r}: {first}. Check that the server runs and accepts connections.") from None


def _check_creatable(path: Path, url: str, what: str, error: type[Exception]) -> None:
    """A SQLite file can be opened or created at ``path`` (see :func:`automl.paths.check_sqlite_creatable`;
    its folders are made when it is opened: :func:`make_sqlite_parent`)."""
    check_sqlite_creatable(path, f"{what} {url!r}", error, "pass the path of a database file", "; pass a path you can write")


def make_sqlite_parent(url: str) -> None:
    """Create the folder of a ``sqlite:///`` file URL (checked earlier by :func:`connect_test`)."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url[len("sqlite:///") :]).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _postgres_driver() -> str:
    """SQLAlchemy 2.1's default PostgreSQL driver is psycopg 3; fall back to psycopg2."""
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2"
    return "postgresql+psycopg"


def check_storage(url: str) -> None:
    """Check an Optuna storage URL (see :func:`agents.storage.open_storage` for the grammar)."""
    if not url or url in (":memory:", "memory"):
        return
    from agents.storage import JOURNAL_SUFFIXES  # imports Optuna's models: only for a storage given

    if url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES):
        path = Path(url.removeprefix("journal:")).expanduser()
        if path.exists() and not path.is_file():
            raise ConfigError(f"storage journal {str(path)!r} exists and is not a file")
        return
    if "://" not in url:
        raise ConfigError(
            f"storage {url!r} is neither a database URL nor a journal file; use e.g. 'sqlite:///study.db', "
            "'postgresql://user@host/db', 'journal:study.log', or leave it empty for a SQLite file in the run directory"
        )
    connect_test(url, "Optuna storage", ConfigError)
    parsed = _database_url(url, "Optuna storage", ConfigError)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        check_optuna_sqlite(Path(parsed.database).expanduser())


OPTUNA_TABLES = {"studies", "trials", "version_info"}


def check_optuna_sqlite(path: Path) -> None:
    """An existing SQLite file given as the study storage must be an intact Optuna database
    (or an empty one): Optuna would otherwise fail deep in the search on a corrupted file,
    or silently add its tables to another application's database.

    Raises:
        ConfigError: the file is not SQLite, fails SQLite's integrity check, or holds
            tables but not Optuna's.
    """
    import sqlite3

    if not path.is_file() or path.stat().st_size == 0:
        return
    fix = "Pass a new file (it is created) or the Optuna database of the search you mean, e.g. --storage sqlite:///study.db."
    with path.open("rb") as fh:
        head = fh.read(16)
    if head != b"SQLite format 3\x00":
        raise ConfigError(f"Optuna storage {str(path)!r} is not a SQLite database (it starts with {head[:8]!r}). {fix}")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ConfigError(f"Optuna storage {str(path)!r} cannot be read as SQLite ({exc}); it is corrupted. {fix}") from None
    if check != "ok":
        raise ConfigError(f"Optuna storage {str(path)!r} is corrupted (SQLite integrity check: {check}). {fix}")
    if tables and not OPTUNA_TABLES <= tables:
        names = ", ".join(sorted(tables)[:6])
        raise ConfigError(
            f"Optuna storage {str(path)!r} is a database of something else (tables: {names}), not an Optuna study "
            f"database; automl-mpq will not add its tables to it. {fix}"
        )


def check_tracking_uri(uri: str) -> None:
    """Check an MLflow tracking URI: HTTP servers answer ``/health``; databases connect."""
    from automl.tracking.tracker import check_tracking

    check_tracking(uri)  # a sqlite:/// file: checked there without SQLAlchemy, which takes a while to import
    if "://" in uri and not uri.startswith(("http://", "https://", "file:", "databricks", "sqlite:///")):
        connect_test(uri, "MLflow tracking store", TrackingError)
