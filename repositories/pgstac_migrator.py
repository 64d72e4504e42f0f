"""pgstac (the STAC database schema, schema ``pgstac``) installed and migrated with pypgstac.

Run beside the app's own migrations (``repositories.migrator``, devstack, the tests) when
PGSTAC_ENABLED. pgstac needs the ``postgis`` and ``btree_gist`` extensions (its migration creates
them; the server must have them available) and creates the cluster roles ``pgstac_admin``,
``pgstac_read`` and ``pgstac_ingest``, so the migrating login needs CREATEROLE (a superuser locally,
the Flexible Server's admin in Azure). Several processes may migrate at once: a session advisory
lock serialises them and the later ones find the schema at the target version.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import tuple_row
from pypgstac.version import __version__ as PYPGSTAC_VERSION

if TYPE_CHECKING:
    from pypgstac.db import PgstacDB

logger = logging.getLogger(__name__)
PGSTAC_SCHEMA = "pgstac"
_LOCK_KEY = "geoetl-pgstac-migrations"

__all__ = ["PGSTAC_SCHEMA", "PYPGSTAC_VERSION", "apply_pgstac_migrations", "one_connection", "pgstac_version"]


def one_connection(conn: psycopg.Connection[Any]) -> PgstacDB:
    """pypgstac's database handle on one connection we own: no pool of its own is ever opened, and
    the connection is never handed to a pool or closed by pypgstac. (pypgstac is imported here, on
    first use, not when the Function App is indexed: its imports take about 0.3 s.)"""
    from pypgstac.db import PgstacDB

    class OneConnection(PgstacDB):
        def connect(self) -> psycopg.Connection[Any]:
            assert self.connection is not None
            return self.connection

        def disconnect(self) -> None:  # the caller owns the connection
            return None

    return OneConnection(dsn=None, connection=conn, commit_on_exit=False)


def apply_pgstac_migrations(conninfo: str) -> str:
    """Install or migrate pgstac to the version pypgstac ships; returns that version."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (_LOCK_KEY,))
        try:
            conn.execute("SET search_path TO pgstac, public")
            from pypgstac.migrate import Migrate

            before = one_connection(conn).version
            version = Migrate(one_connection(conn)).run_migration()
        finally:
            conn.autocommit = True
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (_LOCK_KEY,))
    if before != version:
        logger.info("pgstac migrated from %s to %s", before or "(none)", version)
    return str(version)


def pgstac_version(conn: psycopg.Connection[Any]) -> str | None:
    """The pgstac version installed in the connection's database; None without pgstac."""
    cur = conn.cursor(row_factory=tuple_row)
    row = cur.execute("SELECT to_regclass('pgstac.migrations') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return None
    found = cur.execute("SELECT version FROM pgstac.migrations ORDER BY datetime DESC, version DESC LIMIT 1").fetchone()
    return None if found is None else str(found[0])
