"""Numbered SQL migrations (repositories/migrations/NNNN_name.sql), applied in order, once.

Run ``python -m repositories.migrator`` (reads settings) or call ``apply_migrations``. Safe to
run from several processes at once: a transaction-scoped advisory lock serialises them, and the
whole run is one transaction.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from repositories.sql_catalog import MIGRATIONS_DIR

logger = logging.getLogger(__name__)
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


def discover_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file name must be NNNN_name.sql: {path.name}")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


def apply_migrations(conninfo: str, schema: str) -> list[str]:
    """Apply pending migrations into ``schema`` (created if missing). Returns the names applied."""
    applied_now: list[str] = []
    with psycopg.connect(conninfo) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"geoetl-migrations:{schema}",))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET LOCAL search_path TO {}, public").format(sql.Identifier(schema)))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations").fetchall()}
        for migration in discover_migrations():
            if migration.version in done:
                continue
            conn.execute(migration.path.read_text(encoding="utf-8").encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (migration.version, migration.name)
            )
            applied_now.append(f"{migration.version:04d}_{migration.name}")
            logger.info("applied migration %04d_%s", migration.version, migration.name)
    return applied_now


def main() -> None:
    """``python -m repositories.migrator``: apply pending migrations with the app's settings, logging
    in the way the app does (POSTGRES_PASSWORD, the Key Vault secret or an Entra token)."""
    from repositories.azure_credentials import default_credential
    from repositories.key_vault import secret_store_from_settings
    from repositories.postgres_credentials import needs_credential, postgres_connect_options, resolved_conninfo
    from schemas.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings()
    credential = default_credential(settings.azure_client_id) if needs_credential(settings) else None
    store = secret_store_from_settings(settings, credential) if credential is not None else None
    options = postgres_connect_options(settings, credential=credential, secret_store=store)
    conninfo = resolved_conninfo(settings.postgres_conninfo(), options)
    applied = apply_migrations(conninfo, settings.postgres_schema)
    print(f"migrations applied: {len(applied)} {applied if applied else '(schema up to date)'}")
    if settings.pgstac_enabled:  # PGSTAC_ENABLED: pgstac's own migrations (pypgstac), schema pgstac
        from repositories.pgstac_migrator import apply_pgstac_migrations

        print(f"pgstac at version {apply_pgstac_migrations(conninfo)}")


if __name__ == "__main__":
    main()
