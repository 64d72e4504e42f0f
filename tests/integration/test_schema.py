"""The numbered migrations produce exactly the declared schema (repositories/sql/schema.sql)."""

from __future__ import annotations

import secrets
from typing import Any

import psycopg
import pytest
from psycopg import sql

from devstack.postgres import PostgresDatabase
from repositories.migrator import apply_migrations, discover_migrations
from repositories.sql_catalog import declared_schema

pytestmark = pytest.mark.integration

# Everything that defines a schema, read from the catalogs; table "schema_migrations" is the
# migrator's own bookkeeping and is not part of the declared schema.
CATALOG_QUERIES = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable,
               replace(column_default, %(schema)s || '.', ''), ordinal_position
          FROM information_schema.columns
         WHERE table_schema = %(schema)s AND table_name <> 'schema_migrations'
         ORDER BY table_name, ordinal_position""",
    "constraints": """
        SELECT cl.relname, replace(pg_get_constraintdef(c.oid), %(schema)s || '.', '')
          FROM pg_constraint c JOIN pg_class cl ON cl.oid = c.conrelid
          JOIN pg_namespace n ON n.oid = c.connamespace
         WHERE n.nspname = %(schema)s AND cl.relname <> 'schema_migrations'
         ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, replace(indexdef, %(schema)s || '.', '')
          FROM pg_indexes WHERE schemaname = %(schema)s AND tablename <> 'schema_migrations'
         ORDER BY 1, 2""",
    "functions": """
        SELECT p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid), p.prosrc
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = %(schema)s ORDER BY 1, 2""",
}


def describe(conn: psycopg.Connection[Any], schema: str) -> dict[str, list[tuple[Any, ...]]]:
    return {name: conn.execute(q, {"schema": schema}).fetchall() for name, q in CATALOG_QUERIES.items()}


def test_migrated_schema_equals_declared_schema(postgres_database: PostgresDatabase) -> None:
    conninfo = postgres_database.conninfo
    migrated, declared = f"m_{secrets.token_hex(4)}", f"d_{secrets.token_hex(4)}"
    assert apply_migrations(conninfo, migrated) == [f"{m.version:04d}_{m.name}" for m in discover_migrations()]
    assert apply_migrations(conninfo, migrated) == [], "a second run applies nothing"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(declared)))
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(declared)))
        conn.execute(declared_schema().encode())
        got, want = describe(conn, migrated), describe(conn, declared)
    assert got["columns"], "the migrated schema has tables"
    for part in CATALOG_QUERIES:
        assert got[part] == want[part], f"{part} differ between migrations and schema.sql"
