"""Base of the repository classes: runs named statements from sql/queries.sql on one connection."""

from __future__ import annotations

from typing import Any

import psycopg

from repositories.sql_catalog import query


class NamedQueries:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def _one(self, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
        row: dict[str, Any] | None = self._conn.execute(query(name), params).fetchone()
        return row

    def _all(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._conn.execute(query(name), params).fetchall()
        return rows

    def _run(self, name: str, params: dict[str, Any]) -> int:
        return self._conn.execute(query(name), params).rowcount
