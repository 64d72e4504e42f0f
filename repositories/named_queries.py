"""Base of the repository classes: runs named statements of one sql/*.sql file (``SQL_FILE``,
default queries.sql) on one connection."""

from __future__ import annotations

from typing import Any, ClassVar, Self

import psycopg

from repositories.sql_catalog import query


class NamedQueries:
    SQL_FILE: ClassVar[str] = "queries.sql"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    @classmethod
    def within(cls, repo: NamedQueries) -> Self:
        """These statements on the connection (and so in the transaction) of ``repo``."""
        return cls(repo._conn)

    def _one(self, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
        row: dict[str, Any] | None = self._conn.execute(query(name, self.SQL_FILE), params).fetchone()
        return row

    def _all(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._conn.execute(query(name, self.SQL_FILE), params).fetchall()
        return rows

    def _run(self, name: str, params: dict[str, Any]) -> int:
        return self._conn.execute(query(name, self.SQL_FILE), params).rowcount
