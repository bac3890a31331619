"""A search with a PostgreSQL MLflow tracking store and a PostgreSQL Optuna storage.

The server is started by the test (tests/postgres_support.py) unless
``AUTOML_TEST_POSTGRES_URL`` names one (scripts/with_postgres.sh). The URLs are plain
``postgresql://``: SQLAlchemy 2.1 opens them with psycopg 3, which the ``postgres`` extra installs.
"""

from __future__ import annotations

import os

import pytest

from automl.runs.config import SearchConfig
from automl.runs.runner import run_search
from tests.postgres_support import ENV_URL, postgres_bin, start_postgres


@pytest.fixture(scope="module")
def postgres_urls():
    pytest.importorskip("psycopg", reason="pip install 'automl-mpq[postgres]' (psycopg 3)")
    server = None
    if os.environ.get(ENV_URL):
        base = os.environ[ENV_URL]
    else:
        if postgres_bin() is None:
            why = "no PostgreSQL binaries: apt-get install -y postgresql (or set AUTOML_TEST_POSTGRES_URL)"
            if os.environ.get("CI"):
                pytest.fail(why)
            pytest.skip(why)
        server = start_postgres()
        base = server.url
    import uuid

    import psycopg

    names = [f"automl_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("mlflow", "optuna")]
    with psycopg.connect(base, autocommit=True) as conn:  # MLflow and Optuna each need their own schema
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    root = base.rsplit("/", 1)[0]
    try:
        yield tuple(f"{root}/{name}" for name in names)
    finally:
        if server is not None:
            server.remove()


@pytest.mark.postgres
def test_a_search_tracks_to_postgres_and_stores_its_study_there(tmp_path, postgres_urls):
    import optuna
    from mlflow import MlflowClient

    from tests.tasks import tiny

    tracking, storage = postgres_urls
    assert tracking.startswith("postgresql://") and storage.startswith("postgresql://")
    cfg = SearchConfig(task="tests.tasks:tiny", searcher={"name": "tpe", "storage": storage, "options": {"warm_start": False}}, run={"evaluations": 4, "output": str(tmp_path)}, finetune={"steps": 0}, tracking={"uri": tracking})
    result = run_search(cfg, task=tiny(), quiet=True)
    assert result.n_evaluations == 4
    client = MlflowClient(tracking_uri=tracking)
    exp = client.get_experiment_by_name("automl-mpq")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("automl.kind") == "search"]
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len([r for r in runs if "automl.trial" in r.data.tags]) == 4
    summaries = optuna.get_all_study_summaries(storage)
    assert len(summaries) == 1 and summaries[0].n_trials == 4
