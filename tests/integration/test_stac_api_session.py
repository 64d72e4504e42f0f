"""The STAC API's transaction settings (services/stac_api/service.py ``_session``) on real Postgres:
set for the search's transaction only, gone when the pooled connection is handed to anyone else."""

from __future__ import annotations

from typing import Any

from psycopg.rows import tuple_row

from devstack.postgres import PostgresDatabase
from repositories.database import Database
from services.stac_api import StacApi

SETTINGS = ("search_path", "pgstac.readonly", "max_parallel_workers_per_gather", "jit")


def current(cur: Any) -> dict[str, str | None]:
    row = cur.execute(f"SELECT {', '.join('current_setting(%s, true)' for _ in SETTINGS)}", SETTINGS).fetchone()
    # a custom setting set once reads '' afterwards (Postgres keeps its placeholder): unset either way
    return {name: value or None for name, value in zip(SETTINGS, row, strict=True)}


def test_a_search_transaction_runs_without_parallel_workers_or_jit_and_leaves_the_connection_as_it_was(
    postgres_database: PostgresDatabase,
) -> None:
    db = Database(postgres_database.conninfo, schema="public", min_size=1, max_size=1)
    try:
        with db.connection() as conn:
            before = current(conn.cursor(row_factory=tuple_row))
        api = StacApi(db, max_limit=10)
        with api._session() as cur:
            inside = current(cur)
        with db.connection() as conn:  # the pool's only connection: the one the session used
            after = current(conn.cursor(row_factory=tuple_row))
    finally:
        db.close()
    assert inside == {
        "search_path": "pgstac, public",
        "pgstac.readonly": "true",
        "max_parallel_workers_per_gather": "0",
        "jit": "off",
    }
    assert after == before
    assert before["max_parallel_workers_per_gather"] != "0"
